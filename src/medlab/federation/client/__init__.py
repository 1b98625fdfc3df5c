"""The researcher's client: submit a study, follow it, fetch its results."""
