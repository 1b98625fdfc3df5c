"""Reading what users hand to medlab: one path for every input file.

Every file a user names (cohort definitions, study specs, policies, queries, CSV exports,
evidence bundles) is opened through :func:`regular_file` first, which refuses what is not a
plain file before anything reads from it: a directory, a FIFO (reading would block), a device
such as ``/dev/zero`` (reading would never end), a socket, a symlink loop. Documents are then
read whole, bounded in size, decoded strictly as UTF-8 (a bad byte is named by its offset,
line and column), parsed as YAML (``.yaml``/``.yml``) or JSON, and refused when nested deeper
than :data:`MAX_DEPTH` or holding a string that is not Unicode text (a lone surrogate from a
``\\ud800`` escape). Each problem is one :class:`MedlabError` of the caller's kind, naming the
file.
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from medlab.errors import MedlabError

MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 2_000_000  # values in one document, aliases counted each time they are used
_CHUNK = 1 << 20


def regular_file(path: Path, what: str, error: type[MedlabError]) -> os.stat_result:
    """The ``stat`` of ``path`` when it is a regular file (symlinks followed); otherwise
    ``error`` saying what it is instead."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{path}: cannot read the {what}: a loop of symbolic links") from None
        if exc.errno == errno.ENOENT:
            raise error(f"{path}: cannot read the {what}: no such file") from None
        raise error(f"{path}: cannot read the {what} ({exc.strerror})") from None
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return info
    kind = (
        "a directory"
        if stat.S_ISDIR(mode)
        else "a named pipe (FIFO)"
        if stat.S_ISFIFO(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    raise error(f"{path}: cannot read the {what}: it is {kind}, not a regular file")


def _where(data: bytes, offset: int) -> str:
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return f"byte offset {offset} (line {line}, column {column})"


def _decode(data: bytes, path: Path, what: str, error: type[MedlabError]) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: the {what} is not valid UTF-8: {exc.reason} at {_where(data, exc.start)}",
            hint="save the file as UTF-8",
        ) from None
    return text.removeprefix("\ufeff")


def read_text(
    path: Path, what: str, error: type[MedlabError], max_bytes: int = MAX_DOCUMENT_BYTES
) -> str:
    """The whole of a small text file, strictly UTF-8 (a leading BOM dropped)."""
    info = regular_file(path, what, error)
    if info.st_size > max_bytes:
        raise error(
            f"{path}: the {what} is {info.st_size:,} bytes; medlab reads at most "
            f"{max_bytes:,} bytes for a {what}"
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: the {what} is larger than {max_bytes:,} bytes")
    return _decode(data, path, what, error)


def check_utf8(path: Path, what: str, error: type[MedlabError]) -> None:
    """Refuse a large file (a CSV export) that is not valid UTF-8, reading it in chunks; the
    first bad byte is named by its offset and line."""
    regular_file(path, what, error)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    lines = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            final = not chunk
            try:
                decoder.decode(chunk, final)
            except UnicodeDecodeError as exc:
                # The decoder's offsets are within what it was given: its buffered tail of
                # the previous chunk (at most 3 bytes) and this chunk.
                pending = len(exc.object) - len(chunk)
                bad = offset - pending + exc.start
                line = lines + exc.object.count(b"\n", 0, exc.start) + 1
                raise error(
                    f"{path}: the {what} is not valid UTF-8: {exc.reason} at byte offset "
                    f"{bad} (line {line})",
                    hint="save the file as UTF-8",
                ) from None
            if final:
                return
            offset += len(chunk)
            lines += chunk.count(b"\n")


def _depth_and_text(data: Any, source: str, error: type[MedlabError]) -> None:
    """Refuse nesting deeper than MAX_DEPTH, more than MAX_VALUES values, and strings that
    are not Unicode text."""
    stack: list[tuple[Any, str, int]] = [(data, "$", 1)]
    seen = 0
    while stack:
        value, where, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:  # e.g. YAML aliases nested to expand a billion times
            raise error(f"{source}: more than {MAX_VALUES:,} values in one document")
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise error(f"{source}: {where}: nested deeper than {MAX_DEPTH} levels")
            items: Iterator[tuple[Any, Any]] = (
                iter(value.items()) if isinstance(value, dict) else enumerate(value)
            )
            for key, child in items:
                if isinstance(key, str):
                    _unicode(key, f"{where} (a key)", source, error)
                path = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}"
                stack.append((child, path, depth + 1))
        elif isinstance(value, str):
            _unicode(value, where, source, error)


def _unicode(text: str, where: str, source: str, error: type[MedlabError]) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise error(
            f"{source}: {where}: the text holds a lone surrogate (U+{code:04X}) at character "
            f"{exc.start}; it is not Unicode text"
        ) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_document(text: str, source: str, yaml_syntax: bool, error: type[MedlabError]) -> Any:
    """``text`` parsed as YAML or JSON, with the nesting and text checks."""
    try:
        if yaml_syntax:
            data = yaml.safe_load(text)
        else:
            data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise error(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {exc}".splitlines()[0]) from None
    except ValueError as exc:  # NaN/Infinity, integers beyond Python's digit limit
        raise error(f"{source}: not valid JSON: {exc}") from None
    _depth_and_text(data, source, error)
    return data


def is_yaml(path: Path) -> bool:
    """Whether ``path`` is read as YAML (by its suffix) rather than JSON."""
    return path.suffix.lower() in (".yaml", ".yml")


def read_document(
    path: Path, what: str, error: type[MedlabError], max_bytes: int = MAX_DOCUMENT_BYTES
) -> Any:
    """The parsed YAML (``.yaml``/``.yml``) or JSON document in ``path``."""
    text = read_text(path, what, error, max_bytes)
    return parse_document(text, str(path), is_yaml(path), error)


def line_of(text: str, loc: tuple[int | str, ...] | list[int | str]) -> int | None:
    """The line (1-based) of the value at ``loc`` in a YAML or JSON document, or of the
    deepest part of ``loc`` that exists there (a key that should not be there is found at
    its own line; a missing one at its parent's)."""
    try:
        node: Any = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if getattr(k, "value", None) == str(part)]
            if not found:
                return line
            key, node = found[0]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
