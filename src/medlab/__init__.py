"""medlab: an open-source medical big data lab on the OMOP Common Data Model."""

__version__ = "0.1.0"
