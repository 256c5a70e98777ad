"""YAML that remembers where each value came from.

Config errors must name the key path *and* the line, so the file is composed into PyYAML nodes (which
carry their position) and then built into plain data while recording `path -> line` for every key and
value. `${VAR}` and `${VAR:-default}` in string values are replaced from the environment at the same
time, so an unset variable is reported at its own line; `$${` writes a literal `${`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from gateway.locations import KeyPath as Path

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_ENV_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


@dataclass
class SourceIssue:
    path: Path
    message: str
    line: int | None


@dataclass
class YamlDocument:
    """Plain data from a YAML file, with the line of every key path in it."""

    data: Any
    filename: str
    lines: dict[Path, int] = field(default_factory=dict)
    issues: list[SourceIssue] = field(default_factory=list)

    def line_of(self, path: Path) -> int | None:
        """The line of `path`, or of its nearest ancestor that exists in the file."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, filename: str, line: int | None) -> None:
        where = f"{filename}:{line}" if line else filename
        super().__init__(f"{message} at {where}")
        self.line = line


def load_yaml(text: str, filename: str, environ: Mapping[str, str] | None = None) -> YamlDocument:
    environ = os.environ if environ is None else environ
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise YamlSyntaxError(f"invalid YAML: {exc.problem or exc}", filename, line) from None
    document = YamlDocument(data=None, filename=filename)
    if root is not None:
        document.data = _Builder(document, environ).build(root, ())
    return document


class _Builder:
    def __init__(self, document: YamlDocument, environ: Mapping[str, str]) -> None:
        self.document = document
        self.environ = environ
        self.constructor = SafeConstructor()

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.document.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self._issue(path, "YAML merge keys (<<) are not supported", key_node)
                    continue
                key = self._scalar(key_node, path)
                if not isinstance(key, str | int) or isinstance(key, bool):
                    hint = " (YAML reads yes/no/on/off as booleans: quote the name)" if isinstance(key, bool) else ""
                    self._issue(path, f"keys must be strings, got {key!r}{hint}", key_node)
                    continue
                key = str(key)
                child = (*path, key)
                if key in result:
                    self._issue(child, f"duplicate key '{key}'", key_node)
                    continue
                self.document.lines[child] = key_node.start_mark.line + 1
                result[key] = self.build(value_node, child)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        value = self._scalar(node, path)
        if isinstance(value, str) and "$" in value:
            value = self._interpolate(value, path, node)
        return value

    def _scalar(self, node: yaml.Node, path: Path) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            self._issue(path, f"cannot read value: {exc.problem}", node)
            return None

    def _interpolate(self, value: str, path: Path, node: yaml.Node) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            resolved = self.environ.get(name)
            if resolved:
                return resolved
            if default is not None:
                return default
            state = "is empty" if resolved == "" else "is not set"
            hint = f"write ${{{name}:-default}} to give a default"
            self._issue(path, f"environment variable {name} {state} ({hint})", node)
            return ""

        if "${" in _ENV_REFERENCE.sub("", value):
            # e.g. ${VAR:default} or ${ VAR }: a typo that would otherwise become a literal value (a key!)
            self._issue(path, "malformed ${...} reference: write ${NAME} or ${NAME:-default}", node)
        return _ENV_REFERENCE.sub(replace, value)

    def _issue(self, path: Path, message: str, node: yaml.Node) -> None:
        self.document.issues.append(SourceIssue(path, message, node.start_mark.line + 1))
