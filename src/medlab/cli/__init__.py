"""The ``medlab`` command: a thin wiring layer over the library."""
