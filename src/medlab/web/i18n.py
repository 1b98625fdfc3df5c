"""English and Simplified Chinese. English text is the key; the Chinese lives in
``zh.json`` beside this module, and a test checks that every text the templates and pages
ask for has its Chinese."""

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

LANGUAGES = ("en", "zh")
CATALOG = Path(__file__).with_name("zh.json")


@cache
def chinese() -> dict[str, str]:
    """The Simplified Chinese catalog: English text to its translation."""
    table: dict[str, str] = json.loads(CATALOG.read_text(encoding="utf-8"))
    return table


def translator(lang: str) -> Callable[..., str]:
    """``_(text, **fields)``: ``text`` in ``lang``, with ``{fields}`` filled in (escaped
    around a field that is markup, such as a time element)."""
    table = chinese() if lang == "zh" else {}

    def _(text: str, **fields: Any) -> str:
        found = table.get(text, text)
        if any(isinstance(v, Markup) for v in fields.values()):  # markup stays markup
            return Markup(escape(found)).format(**fields)
        return found.format(**fields) if fields else found

    return _
