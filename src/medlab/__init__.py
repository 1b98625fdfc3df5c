"""medlab: an open-source medical big data lab on the OMOP Common Data Model."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``medlab.Client``: the researcher's SDK, imported when first used."""
    if name == "Client":
        from medlab.federation.client.sdk import Client

        return Client
    raise AttributeError(name)
