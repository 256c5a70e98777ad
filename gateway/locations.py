"""Key paths into parsed JSON/YAML, as people write them: `models.chat.deployments[1].provider`.

Both config errors and request-validation errors (OpenAI's `param`) name the offending value this way.
"""

from __future__ import annotations

from typing import Any

PathPart = str | int
KeyPath = tuple[PathPart, ...]


def format_path(path: KeyPath) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def data_path(loc: tuple[Any, ...], data: Any, *, missing: bool = False) -> KeyPath:
    """A pydantic error location as a path into `data`.

    pydantic inserts the names of union members and discriminator tags into `loc`; those are not in
    the data, so they are dropped. For a missing key (`missing=True`) the final part is kept: it names
    what should have been there.
    """
    path: list[PathPart] = []
    current = data
    for position, part in enumerate(loc):
        if isinstance(current, dict) and part in current:
            current = current[part]
            path.append(part)
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
            path.append(part)
        elif missing and position == len(loc) - 1:
            path.append(part)
    return tuple(path)
