"""YAML reading with positions, so every error can name file, line and column.

PyYAML implements YAML 1.1, where `on`, `yes` and `no` are booleans and `09:30` is a base-60 number.
Funnel files are written by people who expect YAML 1.2 (`on:` is a key, as in GitHub Actions), so the
resolver here only knows `true`/`false` as booleans and drops the base-60 forms.

A funnel file is input from people and tools, so reading it is bounded: nesting deeper than `MAX_DEPTH`,
aliases that stand for more than `MAX_ALIASED` values (a "billion laughs" file is a few lines that
expand to billions of values) and an alias inside its own anchor (a value containing itself) are
refused where they happen, before anything walks the data. A value PyYAML cannot build (`2026-13-45`
read as a date, `!!int abc`, a number of more digits than Python converts) is an error at its place.
A file larger than `MAX_FILE_BYTES` is refused by its size, unread: PyYAML is pure Python and reads
about 100 KB a second, so a 5 MB file held a command for half a minute and most of a gigabyte.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent, CollectionStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

# Far beyond any funnel (the example nests 7 levels and uses no alias), far below what exhausts the stack or
# the memory of whatever walks the data afterwards.
MAX_DEPTH = 64
MAX_ALIASED = 10_000
# Thirty times the example funnel (8 KB); a file this size still reads in a second or two.
MAX_FILE_BYTES = 256 * 1024

# What PyYAML's scalar constructors raise on text that does not fit an explicit or implicit tag.
_UNBUILDABLE = (ValueError, TypeError, OverflowError, AttributeError, KeyError, IndexError)


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open: list[str | None] = []  # anchors of the collections being composed
        self._aliased = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        anchor: str | None = event.anchor
        mark: Any = event.start_mark
        if isinstance(event, AliasEvent):
            if anchor in self._open:
                raise ComposerError(
                    None, None, f"alias *{anchor} inside its own anchor: a value cannot contain itself", mark
                )
            target = self.anchors.get(anchor)
            if target is not None:
                self._aliased += _size(target, self._sizes)
                if self._aliased > MAX_ALIASED:
                    too_many = f"the aliases stand for more than {MAX_ALIASED:,} values (write them out)"
                    raise ComposerError(None, None, too_many, mark)
            return cast(Node, super().compose_node(parent, index))
        if not isinstance(event, CollectionStartEvent):
            return cast(Node, super().compose_node(parent, index))
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
        self._depth += 1
        self._open.append(anchor)
        try:
            return cast(Node, super().compose_node(parent, index))
        finally:
            self._depth -= 1
            self._open.pop()

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        if not isinstance(node, ScalarNode):
            return super().construct_object(node, deep)
        try:
            return super().construct_object(node, deep)
        except _UNBUILDABLE as exc:
            raise ConstructorError(None, None, _unbuildable(node, exc), node.start_mark) from None


_KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "timestamp": "a date"}


def _unbuildable(node: ScalarNode, exc: Exception) -> str:
    kind = node.tag.rsplit(":", 1)[-1]
    wanted = _KINDS.get(kind, f"a value of type {kind}")
    text = str(node.value)
    found = repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text):,} characters)"
    if kind == "int" and len(text) > sys.get_int_max_str_digits() > 0:
        return f"expected a number of at most {sys.get_int_max_str_digits():,} digits, found {found}"
    # Python's words say what is wrong with a date ("month must be in 1..12"), not with a number.
    why = f" ({exc})" if kind == "timestamp" and isinstance(exc, ValueError) else ""
    return f"expected {wanted}{why}, found {found}"


def _size(node: Node, sizes: dict[int, int]) -> int:
    """How many values `node` stands for, counting each alias as a copy (memoised per node: a node is
    shared by every alias to it, so this costs one visit per node, not per copy)."""
    known = sizes.get(id(node))
    if known is None:
        if isinstance(node, SequenceNode):
            known = 1 + sum(_size(child, sizes) for child in node.value)
        elif isinstance(node, MappingNode):
            known = 1 + sum(_size(k, sizes) + _size(v, sizes) for k, v in node.value)
        else:
            known = 1
        sizes[id(node)] = known
    return known


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
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
    # Each mapping's keys, indexed when first asked: a file with thousands of errors (thousands of unknown
    # keys) asks for thousands of positions in one mapping, which a scan per question makes quadratic.
    _keys: dict[int, dict[str, tuple[ScalarNode, Node]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def position(self, loc: tuple[str | int, ...]) -> Position:
        """The position of the value at `loc` (a pydantic error location), or of its nearest parent.

        Location parts that are not keys of the document (union tags such as `send` or
        `function-after[...]`) are skipped, so a pydantic `loc` can be used as it is.
        """
        node = self.root
        if node is None:
            return Position(1, 1)
        for part in loc:
            child = self._child(node, part)
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
            child = self._child(node, part) if node is not None else None
            if child is not None:
                node = child
        if isinstance(node, MappingNode) and isinstance(last, str):
            found = self._pairs(node).get(last)
            if found is not None:
                key = found[0]
                return Position(key.start_mark.line + 1, key.start_mark.column + 1)
        return self.position(loc)

    def _child(self, node: Node, part: str | int) -> Node | None:
        if isinstance(node, MappingNode):
            found = self._pairs(node).get(str(part))
            return found[1] if found is not None else None
        if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            return cast(Node, node.value[part])
        return None

    def _pairs(self, node: MappingNode) -> dict[str, tuple[ScalarNode, Node]]:
        pairs = self._keys.get(id(node))
        if pairs is None:
            pairs = {}
            for key, value in node.value:
                if isinstance(key, ScalarNode):
                    pairs.setdefault(key.value, (key, value))  # the first of two equal keys, as before
            self._keys[id(node)] = pairs
        return pairs


def located_errors(doc: YamlDocument, errors: list[Any]) -> list[str]:
    """A pydantic validation error's entries as `file:line:column: where: what` lines, one each."""
    lines = []
    for error in errors:
        loc = tuple(error["loc"])
        pos = doc.position(loc)
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "the file"
        lines.append(f"{doc.path}:{pos.line}:{pos.column}: {where}: {error['msg'].removeprefix('Value error, ')}")
    return lines


class YamlSyntaxError(Exception):
    def __init__(self, path: Path, position: Position, message: str) -> None:
        super().__init__(f"{path}:{position.line}:{position.column}: {message}")
        self.path = path
        self.position = position
        self.message = message


def read_yaml(path: Path, text: str | None = None) -> YamlDocument:
    """Parse one YAML document; a syntax error becomes a YamlSyntaxError with its position."""
    if text is None:
        text = _utf8_text(path, _bounded_bytes(path))
    try:
        loader = _Loader(text)
    except ReaderError as exc:  # a character YAML does not allow (NUL, other control characters)
        problem = f"invalid YAML: unacceptable character #x{exc.character:04x} (control characters are not allowed)"
        raise YamlSyntaxError(path, _end_of(text[: exc.position]), problem) from None
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = Position(mark.line + 1, mark.column + 1) if mark else Position(1, 1)
        problem = exc.problem or str(exc)
        context = f" ({exc.context})" if exc.context else ""
        raise YamlSyntaxError(path, position, f"invalid YAML: {problem}{context}") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(path, Position(1, 1), f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return YamlDocument(path=path, data=data, root=root)


def _bounded_bytes(path: Path) -> bytes:
    """The file's bytes, or an error naming its size when it is larger than MAX_FILE_BYTES: judged by the
    size the file system gives before reading, and again by what is read (a file can grow meanwhile)."""
    with path.open("rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        raw = stream.read(MAX_FILE_BYTES + 1) if size <= MAX_FILE_BYTES else b""
    if size > MAX_FILE_BYTES or len(raw) > MAX_FILE_BYTES:
        found = max(size, len(raw))
        bound = f"{MAX_FILE_BYTES:,} bytes ({MAX_FILE_BYTES // 1024} KiB)"
        raise YamlSyntaxError(path, Position(1, 1), f"expected a file of at most {bound}, found {found:,} bytes")
    return raw


def _utf8_text(path: Path, raw: bytes) -> str:
    """The file's text with newlines as `open()` reads them, or an error at the first byte that is not UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        found = raw[exc.start : exc.end].hex(" ")
        raise YamlSyntaxError(
            path,
            _end_of(raw[: exc.start].decode("utf-8")),
            f"not UTF-8 text: expected a UTF-8 character, found byte(s) {found}",
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


# The line breaks PyYAML counts in its positions, so that every error of a file counts lines alike.
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def _end_of(text: str) -> Position:
    """The position just after `text`."""
    lines = _LINE_BREAK.split(text)
    return Position(len(lines), len(lines[-1]) + 1)


def load_yaml_text(text: str) -> Any:
    """Plain data from YAML text with the same YAML 1.2 reading as funnel files."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
