"""YAML reading with positions, so every error can name file, line and column.

PyYAML implements YAML 1.1, where `on`, `yes` and `no` are booleans and `09:30` is a base-60 number.
Funnel files are written by people who expect YAML 1.2 (`on:` is a key, as in GitHub Actions), so the
resolver here only knows `true`/`false` as booleans and drops the base-60 forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                                                              "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?0|[-+]?[1-9][0-9]*)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)$"),
    list("-+0123456789."),
)


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass(frozen=True)
class YamlDocument:
    """The plain data of a YAML file plus the node tree that knows where each value came from."""

    path: Path
    data: Any
    root: Node | None

    def position(self, loc: tuple[str | int, ...]) -> Position:
        """The position of the value at `loc` (a pydantic error location), or of its nearest parent.

        Location parts that are not keys of the document (union tags such as `send` or
        `function-after[...]`) are skipped, so a pydantic `loc` can be used as it is.
        """
        node = self.root
        if node is None:
            return Position(1, 1)
        for part in loc:
            child = _child(node, part)
            if child is not None:
                node = child
        return Position(node.start_mark.line + 1, node.start_mark.column + 1)

    def key_position(self, loc: tuple[str | int, ...]) -> Position:
        """Where the key of the value at `loc` is written (for "unknown key" errors)."""
        if not loc:
            return self.position(loc)
        parent_loc, last = loc[:-1], loc[-1]
        node = self.root
        for part in parent_loc:
            child = _child(node, part) if node is not None else None
            if child is not None:
                node = child
        if isinstance(node, MappingNode):
            for key, _value in node.value:
                if isinstance(key, ScalarNode) and key.value == last:
                    return Position(key.start_mark.line + 1, key.start_mark.column + 1)
        return self.position(loc)


def _child(node: Node, part: str | int) -> Node | None:
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == str(part):
                return cast(Node, value)
        return None
    if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return cast(Node, node.value[part])
    return None


class YamlSyntaxError(Exception):
    def __init__(self, path: Path, position: Position, message: str) -> None:
        super().__init__(f"{path}:{position.line}:{position.column}: {message}")
        self.path = path
        self.position = position
        self.message = message


def read_yaml(path: Path, text: str | None = None) -> YamlDocument:
    """Parse one YAML document; a syntax error becomes a YamlSyntaxError with its position."""
    if text is None:
        text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = _Loader(text).get_single_data() if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = Position(mark.line + 1, mark.column + 1) if mark else Position(1, 1)
        problem = exc.problem or str(exc)
        context = f" ({exc.context})" if exc.context else ""
        raise YamlSyntaxError(path, position, f"invalid YAML: {problem}{context}") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(path, Position(1, 1), f"invalid YAML: {exc}") from None
    return YamlDocument(path=path, data=data, root=root)


def load_yaml_text(text: str) -> Any:
    """Plain data from YAML text with the same YAML 1.2 reading as funnel files."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
