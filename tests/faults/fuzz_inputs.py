"""Malformed input for the fuzzing scenarios, as hypothesis strategies.

Funnel files: random bytes, YAML that does not parse or parses into the wrong shapes, alias bombs, deep
nesting, and mutations of the example funnel (in its data, written back out, and in its text: tabs,
CRLF, a BOM, bytes that are not UTF-8...). Event API bodies: valid events and batches, each labelled with
what the API must do with it, and malformed ones (wrong types, missing fields, bad addresses and
timestamps, batches over the limit, bytes that are not JSON or not UTF-8, wrong content types).
"""

from __future__ import annotations

import copy
import json
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import yaml
from hypothesis import strategies as st

from engine.core import own_events
from engine.core.yamlfile import load_yaml_text
from engine.http.api_v1 import EVENT_NAME, MAX_BATCH

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TEXT = (ROOT / "funnels" / "lead-magnet.yaml").read_text(encoding="utf-8")
EXAMPLE: dict[str, Any] = load_yaml_text(EXAMPLE_TEXT)

Loc = tuple[str | int, ...]
Draw = Callable[[st.SearchStrategy[Any]], Any]

# --------------------------------------------------------------------------------------------------
# Funnel files that are not YAML, or not funnels
# --------------------------------------------------------------------------------------------------

_FRAGMENTS = (
    "id: ", "name: ", "stages:", "- id: ", "steps:", "entry:", "triggers:", "  ", "    ", "\t", "\n", "\r\n", "\r",
    ": ", "- ", "[", "]", "{", "}", ",", '"', "'", "&a ", "*a", "&b ", "*b", "<<: ", "? ", "!!int ", "!!str ",
    "!!binary ", "!!timestamp ", "!!float ", "!!set ", "!!omap ", "!!python/object:os.system ", "!local ",
    "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "---\n", "...\n", "# note", "|\n", ">-\n", "wait: ", "2d", "-1d", "1x",
    "send: ", "lead-magnet/report", "9" * 30, "1.0e999", "2026-13-45", "~", "true", "yes", "on", "09:30", "\x00",
    "\x07", "\ufeff", "\u2028", "\x85", "é", "🎉", "\\", "@", "`", "%", "|-", "  - ", "\\x", '"\\u12', "\\N",
)  # fmt: skip

FUNNEL_KEYS = (
    "id", "name", "description", "timezone", "send_window", "allowed_lateness", "entry", "triggers", "event",
    "where", "manual", "reentry", "stage", "stages", "steps", "send", "wait", "wait_until", "wait_for", "branch",
    "if", "then", "else", "goto", "update", "move_to", "exit", "timeout", "on_event", "on_timeout", "on_end",
    "transitions", "from", "to", "on", "goal", "within", "exits", "reason", "attr", "gte", "has_tag", "all",
    "any", "not", "days", "start", "end", "time", "score", "add_tags", "webhook", "url",
)  # fmt: skip

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(("2d", "-1d", "09:00", "25:61", "inquiry", "no-such-stage", "lead-magnet/report", "form_x")),
)
# Data of every shape, with the keys funnel files use, written out as (well-formed) YAML: shape errors.
_wrong_shapes = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FUNNEL_KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)


@st.composite
def alias_bombs(draw: Draw) -> str:
    """A "billion laughs": each level is a list of aliases to the level below, width ** depth values in
    a few lines; sometimes used where the funnel expects stages, with merge keys, or as a cycle."""
    width, depth = draw(st.integers(2, 12)), draw(st.integers(2, 10))
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, depth)]
    top = f"*l{depth - 1}"
    tail = draw(
        st.sampled_from(
            (
                f"stages: {top}\n",
                f"entry: {{triggers: {top}}}\n",
                f"merged: &m {{a: 1}}\nmore: {{<<: [{', '.join(['*m'] * width)}]}}\n",
                "cycle: &c [1, *c]\n",
                "cyclic: &d {a: {b: *d}}\n",
                "",
            )
        )
    )
    return "id: bomb\nname: Bomb\n" + "\n".join(lines) + "\n" + tail


@st.composite
def deep_nesting(draw: Draw) -> str:
    depth = draw(st.integers(10, 5000))
    kind = draw(st.sampled_from(("flow-list", "flow-map", "block-list", "block-map", "condition")))
    closed = draw(st.booleans())
    if kind == "flow-list":
        return "stages: " + "[" * depth + ("]" * depth if closed else "") + "\n"
    if kind == "flow-map":
        return "stages: " + "{a: " * depth + "1" + ("}" * depth if closed else "") + "\n"
    depth = min(depth, 400)  # indentation grows with depth: the file is quadratic in it
    if kind == "block-list":
        return "stages:\n" + "".join(" " * i + "-\n" for i in range(depth))
    if kind == "block-map":
        return "stages:\n" + "".join(" " * i + "a:\n" for i in range(1, depth))
    condition = "{not: " * depth + "{attr: x, gte: 1}" + "}" * depth
    return (
        "id: deep\nname: Deep\nentry: {triggers: [{event: go}]}\nstages:\n  - id: one\n    steps:\n"
        f"      - id: b\n        branch: {{if: {condition}, then: {{goto: b}}}}\n"
    )


def broken_files() -> st.SearchStrategy[bytes]:
    """Files that are not a funnel: random bytes, YAML soup, wrong shapes, bombs, deep nesting, huge numbers."""
    soup = st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=4), max_size=60).map("".join)
    shapes = _wrong_shapes.map(lambda data: yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    huge = st.integers(4000, 50_000).map(lambda n: f"id: x\nname: y\nallowed_lateness: {'9' * n}\n")
    wide = st.integers(100, 2000).map(lambda n: "".join(f"k{i}: {i}\n" for i in range(n)))
    duplicates = st.lists(st.sampled_from(FUNNEL_KEYS[:8]), min_size=2, max_size=10).map(
        lambda keys: "".join(f"{k}: x\n" for k in keys)
    )
    text = st.one_of(soup, shapes, alias_bombs(), deep_nesting(), huge, wide, duplicates, st.text(max_size=300))
    return st.one_of(st.binary(max_size=600), text.map(lambda t: t.encode("utf-8", "surrogatepass")))


# --------------------------------------------------------------------------------------------------
# Mutations of the example funnel
# --------------------------------------------------------------------------------------------------

_ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**15, max_value=10**40),
    st.floats(),
    st.text(max_size=30),
    st.just(""),
    st.just("x" * 70_000),
    st.lists(st.integers() | st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from(({}, [], "Inquiry_Stage", "a--b", "-x", "9" * 300, "🎉", "\u202e", "line\nbreak")),
)
_BAD_DURATIONS = (
    "", "d", "0", "1", "-1d", "1.5d", "2x", "1d-", "d1", "1 d", "1w2d3h4m5s", "0s", "36500d", "36501d", "999999999d",
    "99999999999999999999w", "9" * 70 + "s", "P1D", "1 day", "∞", "２d",
)  # fmt: skip
_BAD_TIMES = ("25:00", "9:00", "09:60", "09:00:00", "noon", "", "24:00", "-1:00")
_BAD_CONDITIONS: tuple[Any, ...] = (
    {},
    {"attr": "employees"},
    {"attr": "employees", "gte": "many"},
    {"attr": "employees", "gte": 1, "lt": 2},
    {"attr": "9bad", "exists": True},
    {"has_tag": 5},
    {"has_tag": "Bad Tag"},
    {"all": []},
    {"any": "x"},
    {"not": [{"has_tag": "x"}]},
    {"not": {"not": {"not": {"attr": "x"}}}},
    {"attr": "x", "in": "not-a-list"},
    {"attr": "x", "equals": {"a": 1}},
    {"link": {"nested": True}},
    {"sned": 1},
    "employees > 50",
    [1, 2],
    None,
)
_TARGET_KEYS = ("to", "move_to", "goto", "stage", "from", "on_end")
_DURATION_KEYS = ("wait", "timeout", "within", "after", "allowed_lateness", "cooldown")
_CONDITION_KEYS = ("if", "where", "not", "all", "any")
_OPTIONAL_KEYS = ("description", "send_window", "transitions", "goal", "exits", "on_end", "reentry", "persona")


def _locations(data: Any, loc: Loc = ()) -> Iterator[Loc]:
    yield loc
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _locations(value, (*loc, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _locations(value, (*loc, index))


def _parent(data: Any, loc: Loc) -> Any:
    for part in loc[:-1]:
        data = data[part]
    return data


def _mutate(draw: Draw, data: dict[str, Any]) -> str:
    """One change to the example's data, in place; returns what was done."""
    places = [loc for loc in _locations(data) if loc]
    kind = draw(
        st.sampled_from(
            ("delete", "retype", "rename-id", "missing-target", "duration", "time", "condition", "unknown-key",
             "duplicate-item", "swap-items", "other-duration", "drop-optional")
        )
    )  # fmt: skip
    wanted: dict[str, Callable[[Loc], bool]] = {
        "rename-id": lambda loc: loc[-1] == "id",
        "missing-target": lambda loc: loc[-1] in _TARGET_KEYS,
        "duration": lambda loc: loc[-1] in _DURATION_KEYS,
        "other-duration": lambda loc: loc[-1] in _DURATION_KEYS,
        "drop-optional": lambda loc: loc[-1] in _OPTIONAL_KEYS,
        "time": lambda loc: loc[-1] in ("start", "end", "time"),
        "condition": lambda loc: loc[-1] in _CONDITION_KEYS,
        "unknown-key": lambda loc: isinstance(_parent(data, loc), dict),
        "duplicate-item": lambda loc: isinstance(loc[-1], int),
        "swap-items": lambda loc: isinstance(loc[-1], int),
    }
    candidates = [loc for loc in places if wanted.get(kind, lambda _: True)(loc)] or places
    loc = draw(st.sampled_from(candidates))
    parent, last = _parent(data, loc), loc[-1]
    if kind == "delete":
        del parent[last]
    elif kind == "retype":
        parent[last] = draw(_ODD_VALUES)
    elif kind == "rename-id":
        parent[last] = draw(
            st.sampled_from(("renamed", "inquiry", "comparison", "Bad_Id", "", "x" * 64)) | st.text(max_size=12)
        )
    elif kind == "missing-target":
        parent[last] = draw(st.sampled_from(("no-such-stage", "comparision", ["inquiry", "nowhere"], "*", "")))
    elif kind == "duration":
        parent[last] = draw(st.sampled_from(_BAD_DURATIONS) | st.text(max_size=8) | st.integers())
    elif kind == "other-duration":  # still valid: the journey must cope with the extremes
        parent[last] = draw(st.sampled_from(("0s", "1s", "59m", "36500d", "1w2d3h4m5s", "100w")))
    elif kind == "drop-optional":
        del parent[last]
    elif kind == "time":
        parent[last] = draw(st.sampled_from(_BAD_TIMES) | st.integers(-100, 2000))
    elif kind == "condition":
        parent[last] = copy.deepcopy(draw(st.sampled_from(_BAD_CONDITIONS)))
    elif kind == "unknown-key":
        target = parent if isinstance(parent, dict) else data
        key = draw(st.sampled_from(FUNNEL_KEYS) | st.text(min_size=1, max_size=10))
        target[key] = draw(_ODD_VALUES)
    elif kind == "duplicate-item":
        parent.insert(int(last), copy.deepcopy(parent[last]))
    else:
        other = draw(st.integers(0, len(parent) - 1))
        parent[last], parent[other] = parent[other], parent[last]
    return f"{kind} at {'.'.join(map(str, loc))}"


def _text_mutation(draw: Draw, raw: bytes) -> tuple[bytes, str]:
    kind = draw(
        st.sampled_from(
            ("crlf", "cr", "bom", "tab", "duplicate-line", "delete-line", "truncate", "insert", "not-utf8",
             "latin-1", "utf-16", "huge-number", "indent", "nul")
        )
    )  # fmt: skip
    lines = raw.split(b"\n")
    line = draw(st.integers(0, max(len(lines) - 1, 0)))
    at = draw(st.integers(0, len(raw)))
    if kind == "crlf":
        raw = raw.replace(b"\n", b"\r\n")
    elif kind == "cr":
        raw = raw.replace(b"\n", b"\r")
    elif kind == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif kind == "tab":
        lines[line] = b"\t" + lines[line].lstrip(b" ")
        raw = b"\n".join(lines)
    elif kind == "duplicate-line":
        raw = b"\n".join([*lines[: line + 1], lines[line], *lines[line + 1 :]])
    elif kind == "delete-line":
        raw = b"\n".join(lines[:line] + lines[line + 1 :])
    elif kind == "truncate":
        raw = raw[:at]
    elif kind == "insert":
        raw = raw[:at] + draw(st.sampled_from(_FRAGMENTS)).encode() + raw[at:]
    elif kind == "not-utf8":
        raw = raw[:at] + draw(st.sampled_from((b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\x80\x80"))) + raw[at:]
    elif kind == "latin-1":
        raw = raw.decode("utf-8", "replace").replace("Greenleaf", "Grénleaf").encode("latin-1", "replace")
    elif kind == "utf-16":
        raw = raw.decode("utf-8", "replace").encode("utf-16")
    elif kind == "huge-number":
        raw = raw.replace(b"score: 10", b"score: " + b"9" * draw(st.integers(19, 6000)), 1)
    elif kind == "indent":
        lines[line] = b" " * draw(st.integers(1, 3)) + lines[line]
        raw = b"\n".join(lines)
    else:
        raw = raw[:at] + b"\x00" + raw[at:]
    return raw, kind


def _short(content: bytes) -> str:
    return repr(content) if len(content) <= 300 else f"{content[:200]!r}... ({len(content):,} bytes)"


@dataclass(frozen=True)
class FunnelFile:
    content: bytes
    how: str  # the changes made, for failure messages

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis prints examples: some are megabytes
        printer.text(f"FunnelFile({_short(self.content)}, {self.how!r})")


@st.composite
def mutated_example(draw: Draw) -> FunnelFile:
    """The example funnel with one to three changes to its data (written back out as YAML, which drops
    the comments), its text (positions as in the original file), or both."""
    changes: list[str] = []
    text = EXAMPLE_TEXT
    shape = draw(st.booleans())
    if shape:
        data = copy.deepcopy(EXAMPLE)
        for _ in range(draw(st.integers(1, 3))):
            changes.append(_mutate(draw, data))
        text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=200)
    raw = text.encode("utf-8")
    for _ in range(draw(st.integers(0 if shape else 1, 2))):
        raw, change = _text_mutation(draw, raw)
        changes.append(change)
    return FunnelFile(raw, "; ".join(changes))


def funnel_files() -> st.SearchStrategy[FunnelFile]:
    return st.one_of(mutated_example(), broken_files().map(lambda raw: FunnelFile(raw, "broken file")))


# --------------------------------------------------------------------------------------------------
# Event API bodies
# --------------------------------------------------------------------------------------------------

Kind = Literal["valid", "invalid", "unknown"]  # must be accepted / must be refused / anything but a 5xx


@dataclass(frozen=True)
class Body:
    kind: Kind
    content: bytes
    content_type: str | None
    how: str

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"Body({self.kind!r}, {_short(self.content)}, {self.content_type!r}, {self.how!r})")

    @property
    def items(self) -> list[Any]:
        """The events as the API reads them, for a body that is JSON."""
        parsed = json.loads(self.content)
        return parsed if isinstance(parsed, list) else [parsed]


# Any Unicode text but NUL, which no database text holds (the API refuses it; "unstorable-text" sends it).
_CHARACTERS = st.characters(codec="utf-8", exclude_characters="\x00")


def _text(min_size: int = 0, max_size: int | None = None) -> st.SearchStrategy[str]:
    return st.text(_CHARACTERS, min_size=min_size, max_size=max_size)


ADDRESSES = (
    "ann@example.com", " Ann@Example.COM ", "bob@example.org", "chen.wei+funnel@example.net",
    "dora@xn--bcher-kva.example", "emile@bücher.example", "o'neil@example.ie",
    "x@sub.domain.example.com",
)  # fmt: skip
# Not one bare address the relay can take: malformed, a display name or a list, a local part that needs
# SMTPUTF8, a special-use domain.
_NOT_ADDRESSES = ("", "not-an-address", "a@", "@example.com", "a b@example.com", "a@@example.com", "a\r\n@example.com",
                  "x" * 300 + "@example.com", "a@example", "a@-example.com", "a@.com", "Ann <ann@example.com>",
                  "ann@example.com, bob@example.org", "émile@exemple.fr", "ann@example.test")  # fmt: skip

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
    _text(max_size=30),
)  # fmt: skip
_json_values = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text(max_size=10), inner, max_size=4),
    max_leaves=15,
)
# Ids, names and sources of the client's own: the engine's (own_events) are refused whatever else holds.
_ids = (_text(min_size=1, max_size=40) | st.from_regex(r"\A[a-z0-9-]{1,60}\Z")).filter(
    lambda i: own_events.id_problem(i) is None
)
_names = st.from_regex(EVENT_NAME, fullmatch=True).filter(lambda n: own_events.name_problem(n) is None)
_sources = _text(max_size=30).filter(lambda s: own_events.source_problem(s) is None)
# Up to the day before the app's clock (tests.http.conftest.NOW, 2026-11-23 10:00 UTC) in any zone: an
# event after the engine's clock is refused.
_timestamps = st.datetimes(datetime(2000, 1, 1), datetime(2026, 11, 22), timezones=st.timezones()).map(
    lambda d: d.isoformat()
)


@st.composite
def valid_event(draw: Draw) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": draw(_ids),
        "type": draw(_names),
        "email": draw(st.sampled_from(ADDRESSES)),
    }
    if draw(st.booleans()):
        event["occurred_at"] = draw(_timestamps)
    if draw(st.booleans()):
        event["properties"] = draw(st.dictionaries(_text(max_size=10), _json_values, max_size=4))
    if draw(st.booleans()):
        event["source"] = draw(st.none() | _sources)
    return event


_ENGINE_OWN = (
    ("id", "form:cost-of-not-recycling:1"), ("id", "click:1:lead-magnet:deliver-report:pricing"), ("id", "import:x:y"),
    ("type", "manual_enroll"), ("type", "funnel_unsubscribed"), ("type", "lead_updated"), ("type", "unsubscribed"),
    ("source", "ops"), ("source", "form"),
)  # fmt: skip
_BAD_TIMESTAMPS = (
    "yesterday", "2026-11-23T10:00:00", 1700000000, "1700000000", "2026-13-01T00:00:00Z", True, "", "2026-11-23", [],
    "2026-02-30T10:00:00+00:00", "2026-11-23T10:05:01Z", "2100-01-01T00:00:00+00:00",
)  # fmt: skip
_BREAKAGES: dict[str, Callable[[Draw, dict[str, Any]], None]] = {
    "missing-field": lambda draw, e: e.pop(draw(st.sampled_from(("id", "type", "email")))),
    "id": lambda draw, e: e.update(id=draw(st.sampled_from(("", "x" * 201, 5, None, [], {"a": 1}, True)))),
    "type": lambda draw, e: e.update(type=draw(st.sampled_from(("", "Bad", "1x", "x" * 101, "a b", 3, {}, None)))),
    "email": lambda draw, e: e.update(email=draw(st.sampled_from(_NOT_ADDRESSES) | st.integers() | st.none())),
    "occurred_at": lambda draw, e: e.update(occurred_at=draw(st.sampled_from(_BAD_TIMESTAMPS))),
    "properties": lambda draw, e: e.update(properties=draw(st.sampled_from(([], "x", 5, True, [{"a": 1}])))),
    "source": lambda draw, e: e.update(source=draw(st.sampled_from(("x" * 201, 5, [], {})))),
    "extra-field": lambda draw, e: e.update({draw(st.sampled_from(("ID", "name", "lead", "data", ""))): 1}),
}


@st.composite
def invalid_event(draw: Draw) -> tuple[dict[str, Any], str]:
    event = draw(valid_event())
    how = draw(st.sampled_from(sorted(_BREAKAGES)))
    _BREAKAGES[how](draw, event)
    return event, how


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


@st.composite
def event_bodies(draw: Draw) -> Body:
    """A `POST /v1/events` body, with what the API must do with it."""
    shape = draw(
        st.sampled_from(
            ("event", "event", "batch", "batch", "batch-with-repeats", "batch-with-repeats", "bad-event",
             "batch-with-bad-items", "empty-batch", "over-limit", "random-json", "not-json", "not-utf8",
             "wrong-content-type", "huge-properties", "huge-id", "odd-addresses", "odd-timestamps",
             "numbers-json-cannot-hold", "deep-json", "unstorable-text", "engine-own", "not-one-address")
        )
    )  # fmt: skip
    json_type = "application/json"
    if shape == "event":
        return Body("valid", _json(draw(valid_event())), json_type, shape)
    if shape == "batch":
        return Body("valid", _json(draw(st.lists(valid_event(), min_size=1, max_size=20))), json_type, shape)
    if shape == "batch-with-repeats":
        events = draw(st.lists(valid_event(), min_size=1, max_size=8))
        repeats = [dict(e, type="repeated") for e in draw(st.lists(st.sampled_from(events), min_size=1, max_size=4))]
        return Body("valid", _json(events + repeats), json_type, shape)
    if shape == "bad-event":
        event, how = draw(invalid_event())
        return Body("invalid", _json(event), json_type, f"{shape}: {how}")
    if shape == "batch-with-bad-items":
        good = draw(st.lists(valid_event(), max_size=10))
        bad = draw(st.lists(invalid_event(), min_size=1, max_size=3))
        items = good + [e for e, _ in bad]
        order = draw(st.permutations(range(len(items))))
        return Body("invalid", _json([items[i] for i in order]), json_type, f"{shape}: {', '.join(h for _, h in bad)}")
    if shape == "empty-batch":
        return Body("invalid", b"[]", json_type, shape)
    if shape == "over-limit":
        count, seed = draw(st.integers(MAX_BATCH + 1, MAX_BATCH + 50)), draw(st.integers(0, 10**9))
        items = [{"id": f"over-{seed}-{i}", "type": "page_viewed", "email": ADDRESSES[i % 3]} for i in range(count)]
        return Body("invalid", _json(items), json_type, f"{shape}: {count} events")
    if shape == "random-json":
        return Body("unknown", _json(draw(_json_values)), json_type, shape)
    if shape == "not-json":
        content = draw(st.binary(max_size=200) | st.sampled_from((b"", b"{", b"[1,", b"{'id': 1}", b"nul", b"\x00")))
        return Body("invalid", content, json_type, shape)
    if shape == "not-utf8":
        event = _json(draw(valid_event()))
        at = event.index(b'"id": "') + 7
        content = event[:at] + draw(st.sampled_from((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf"))) + event[at:]
        return Body("invalid", content, json_type, shape)
    if shape == "wrong-content-type":
        content_type = draw(
            st.sampled_from(
                (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/xml", "application/json; charset=latin-1", "application/vnd.api+json", "*/*", "")
            )
        )  # fmt: skip
        return Body("unknown", _json(draw(valid_event())), content_type, f"{shape}: {content_type}")
    if shape == "huge-properties":
        event = draw(valid_event())
        event["properties"] = {
            "blob": "x" * draw(st.integers(10_000, 300_000)),
            "deep": _nested(draw(st.integers(1, 200))),
        }
        return Body("unknown", _json(event), json_type, shape)
    if shape == "huge-id":
        event = draw(valid_event())
        event["id"] = "i" * draw(st.integers(201, 100_000))
        return Body("invalid", _json(event), json_type, shape)
    if shape == "engine-own":  # an id, name or source only the engine may write
        event = draw(valid_event())
        field, value = draw(st.sampled_from(_ENGINE_OWN))
        event[field] = value
        return Body("invalid", _json(event), json_type, f"{shape}: {field} {value}")
    if shape == "not-one-address":  # a display name, a list, SMTPUTF8, a special-use name
        event = draw(valid_event())
        event["email"] = draw(st.sampled_from(_NOT_ADDRESSES[-4:]))
        return Body("invalid", _json(event), json_type, shape)
    if shape == "odd-addresses":
        event = draw(valid_event())
        event["email"] = draw(st.emails() | st.text(max_size=40))
        return Body("unknown", _json(event), json_type, shape)
    if shape == "odd-timestamps":
        event = draw(valid_event())
        event["occurred_at"] = draw(
            st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
            | st.sampled_from(("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "2026-11-23T10:00:00+24:00",
                               "2026-11-23T10:00:00.123456789Z", "2026-11-23 10:00Z", "2026-11-23T10:00:00-00:00"))
        )  # fmt: skip
        return Body("unknown", _json(event), json_type, shape)
    if shape == "deep-json":
        depth = draw(st.sampled_from((10, 64, 65, 200, 900, 990, 3000, 100_000)))
        event = dict(draw(valid_event()), properties={"deep": "<deep>"})
        content = _json(event).replace(b'"<deep>"', b"[" * depth + b"]" * depth)
        return Body("unknown", content, json_type, f"{shape}: {depth} levels")
    if shape == "unstorable-text":
        # What JSON can escape but PostgreSQL's text and JSON types cannot hold, or is not Unicode text.
        text = draw(st.sampled_from(("\\u0000", "a\\u0000b", "\\ud800", "x\\udfff", "\\udbff\\udfff")))
        where = draw(st.sampled_from(("id", "source", "property", "property-name")))
        event = draw(valid_event())
        event = {
            "id": dict(event, id="<text>"),
            "source": dict(event, source="<text>"),
            "property": dict(event, properties={"p": "<text>"}),
            "property-name": dict(event, properties={"<text>": 1}),
        }[where]
        content = _json(event).replace(b"<text>", text.encode())
        return Body("unknown", content, json_type, f"{shape}: {text} in {where}")
    # Numbers that JSON can write but a database's JSON cannot store, or Python cannot read.
    number = draw(st.sampled_from(("1e999", "-1e999", "NaN", "Infinity", "1" * 5000, "1" * 30, "-0", "1E400")))
    event = dict(draw(valid_event()), properties={"n": "<number>"})
    content = _json(event).replace(b'"<number>"', number.encode())
    return Body("unknown", content, json_type, f"{shape}: {number[:20]}")


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"x": value}
    return value


# --------------------------------------------------------------------------------------------------
# Leads and forms
# --------------------------------------------------------------------------------------------------

_path_text = st.text(string.printable + "é🎉\x00/", max_size=40)


@st.composite
def lead_puts(draw: Draw) -> tuple[str, Body]:
    """A `PUT /v1/leads/{email}`: the address as written in the path (not yet quoted) and the body."""
    address = draw(st.sampled_from(ADDRESSES) | st.sampled_from(_NOT_ADDRESSES) | st.emails() | _path_text)
    good = {
        "attributes": draw(st.dictionaries(st.text(max_size=10), _json_values, max_size=4)),
        "tags": draw(st.lists(st.text(min_size=1, max_size=20), max_size=4)),
        "timezone": draw(st.sampled_from((None, "Europe/Berlin", "UTC", "America/Sao_Paulo"))),
        "consent": draw(st.sampled_from((None, "subscribed", "unsubscribed", "pending"))),
    }
    shape = draw(st.sampled_from(("good", "bad-field", "random-json", "not-json", "huge")))
    if shape == "good":
        return address, Body("unknown", _json(good), "application/json", shape)
    if shape == "bad-field":
        field, value = draw(
            st.sampled_from(
                (("timezone", "Mars/Olympus"), ("timezone", "../../etc/passwd"), ("timezone", ""), ("consent", "yes"),
                 ("tags", [""]), ("tags", ["x" * 101]), ("tags", "vip"), ("attributes", []), ("extra", 1),
                 ("consent_source", "x" * 201))
            )
        )  # fmt: skip
        return address, Body("invalid", _json({**good, field: value}), "application/json", f"{shape}: {field}")
    if shape == "random-json":
        return address, Body("unknown", _json(draw(_json_values)), "application/json", shape)
    if shape == "not-json":
        return address, Body("invalid", draw(st.binary(max_size=100)) + b"\xff", "application/json", shape)
    good["attributes"] = {"blob": "y" * draw(st.integers(10_000, 200_000))}
    return address, Body("unknown", _json(good), "application/json", shape)


@st.composite
def form_posts(draw: Draw) -> Body:
    """A `POST /forms/{id}` body: an ordinary form post, valid or not, or bytes a browser would never send."""
    fields: dict[str, str] = {}
    if draw(st.booleans()):
        fields["email"] = draw(st.sampled_from(ADDRESSES) | st.sampled_from(_NOT_ADDRESSES) | st.text(max_size=30))
    if draw(st.booleans()):
        fields["consent"] = draw(st.sampled_from(("yes", "on", "no", "", "YES", "1")))
    if draw(st.integers(0, 4)) == 0:
        fields["website"] = draw(st.text(min_size=1, max_size=10))  # the honeypot
    fields.update(
        draw(st.dictionaries(st.sampled_from(("name", "company", "employees", "x")), st.text(max_size=40), max_size=3))
    )
    if draw(st.integers(0, 5)) == 0:
        fields["company"] = "c" * draw(st.integers(400, 5000))
    encoded = urlencode(fields).encode()
    shape = draw(st.sampled_from(("form", "form", "form", "not-utf8", "multipart", "json", "garbage", "no-type")))
    if shape == "form":
        person = (
            fields.get("email") in ADDRESSES
            and fields.get("consent", "").lower() in ("on", "yes", "true", "1")
            and not fields.get("website", "").strip()
            and all(len(v.strip()) <= 500 and "\x00" not in v for v in fields.values())
        )
        return Body("valid" if person else "unknown", encoded, "application/x-www-form-urlencoded", shape)
    if shape == "not-utf8":
        return Body("unknown", encoded + b"&name=%FF%FE&x=\xff", "application/x-www-form-urlencoded", shape)
    if shape == "multipart":
        boundary = "fuzzboundary"
        parts = "".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()
        )
        content = (parts + f"--{boundary}--\r\n").encode() if draw(st.booleans()) else parts.encode()[:50]
        return Body("unknown", content, f"multipart/form-data; boundary={boundary}", shape)
    if shape == "json":
        return Body("unknown", _json(fields), "application/json", shape)
    if shape == "garbage":
        return Body("unknown", draw(st.binary(max_size=200)), "application/x-www-form-urlencoded", shape)
    return Body("unknown", encoded, None, shape)


# --------------------------------------------------------------------------------------------------
# CSV files for `funnel import`
# --------------------------------------------------------------------------------------------------

CSV_COLUMNS = ("email", "company", "notes", "tags")
# Bytes that are not UTF-8: Latin-1, a truncated sequence, an overlong form, a surrogate and a code point
# past U+10FFFF in UTF-8 form, continuation bytes alone.
_NOT_UTF8 = (
    b"\xe9", b"\xff", b"\xc3(", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80\x80", b"\xf0\x9f\x98",
)  # fmt: skip
# Cell text: what real exports hold, quotes, commas and line breaks included.
_CELL = st.text(st.sampled_from("abcxyz ABC019-_.,;'\"éüß中🎉\n"), max_size=20)
# The address of a row the database refuses (a trigger the scenario installs): a failure mid-file.
TRIP = "trip-"
CSV_FIELD_LIMIT = 131_072


@dataclass(frozen=True)
class CsvRow:
    number: int
    cells: tuple[str, ...]  # as written, in CSV_COLUMNS order; "{p}" in the address stands for a prefix
    fault: str | None  # what was put in it: None for a good row

    def address(self, prefix: str) -> str:
        return self.cells[0].replace("{p}", prefix)


@dataclass(frozen=True)
class CsvFile:
    """A generated file and what `funnel import` must make of it. Addresses carry a prefix given when
    the file is written, so that every example's leads are its own in a shared database."""

    rows: tuple[CsvRow, ...]
    bom: bool
    crlf: bool
    header_fault: str | None  # bytes put in the second column's name

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        faults = [(r.number, r.fault) for r in self.rows if r.fault]
        printer.text(f"CsvFile({len(self.rows)} rows, faults {faults}, header {self.header_fault!r})")

    @property
    def how(self) -> str:
        kinds = sorted({(r.fault or "").split(" ")[0] for r in self.rows if r.fault})
        return ", ".join(([f"header {self.header_fault}"] if self.header_fault else []) + kinds) or "clean"

    def content(self, prefix: str) -> bytes:
        eol = b"\r\n" if self.crlf else b"\n"
        header = [c.encode() for c in CSV_COLUMNS]
        if self.header_fault is not None:
            header[1] = b"comp" + self.header_fault.encode("utf-8", "surrogateescape") + b"any"
        out = [(b"\xef\xbb\xbf" if self.bom else b"") + b",".join(header) + eol]
        out += [self._row_bytes(row, prefix) + eol for row in self.rows]
        return b"".join(out)

    @staticmethod
    def _row_bytes(row: CsvRow, prefix: str) -> bytes:
        cells = []
        for n, cell in enumerate(row.cells):
            raw = (row.address(prefix) if n == 0 else cell).encode("utf-8", "surrogateescape")
            if any(c in raw for c in (b",", b'"', b"\n", b"\r")):
                raw = b'"' + raw.replace(b'"', b'""') + b'"'
            cells.append(raw)
        return b",".join(cells)

    def lines(self, prefix: str) -> dict[int, int]:
        """Each row's first line in the file (the header is line 1)."""
        line, found = 2, {}
        for row in self.rows:
            found[row.number] = line
            line += self._row_bytes(row, prefix).count(b"\n") + 1
        return found

    def bad_lines(self, prefix: str) -> dict[int, int]:
        """The line `funnel import` must name for each bad row, by row number: where its first NUL or first
        byte that is not UTF-8 is (bytes put in a cell may happen to make UTF-8 with their neighbours: the
        row is then good), or the row's own line for a field the parser cannot read."""
        found = {}
        for row, first in zip(self.rows, self.lines(prefix).values(), strict=True):
            if any(len(cell) > CSV_FIELD_LIMIT for cell in row.cells):
                found[row.number] = first
                continue
            raw = self._row_bytes(row, prefix)
            positions = [raw.index(b"\x00")] if b"\x00" in raw else []
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                positions.append(exc.start)
            if positions:
                found[row.number] = first + raw[: min(positions)].count(b"\n")
        return found

    def stops_at(self) -> CsvRow | None:
        """The first row whose field the parser cannot read past: nothing after it is read."""
        return next((r for r in self.rows if any(len(c) > CSV_FIELD_LIMIT for c in r.cells)), None)


@st.composite
def csv_files(draw: Draw) -> CsvFile:
    """A file of 1 to 40 leads in which up to three rows hold a NUL, bytes that are not UTF-8 (sequences
    no decoder takes, or random bytes written as lone surrogates with `surrogateescape`), a field over
    the parser's limit, or an address the database will refuse; rarely, the header holds bad bytes."""
    count = draw(st.integers(1, 40))
    rows = [
        [f"lead-{{p}}-{n}@example.com", draw(_CELL), draw(_CELL), draw(st.sampled_from(("", "a", "a;b")))]
        for n in range(1, count + 1)
    ]
    faults: dict[int, str] = {}
    for _ in range(draw(st.integers(0, 3))):
        number = draw(st.integers(1, count))
        cells = rows[number - 1]
        kind = draw(st.sampled_from(("nul", "bytes", "surrogates", "trip", "huge")))
        # Bytes that make UTF-8 with their neighbours would make an address that is simply not valid.
        column = draw(st.integers(1 if kind in ("surrogates", "huge") else 0, 3))
        at = draw(st.integers(0, len(cells[column])))
        if number in faults:
            continue  # one fault per row
        if kind == "nul":
            cells[column] = cells[column][:at] + "\x00" + cells[column][at:]
            faults[number] = f"NUL in {CSV_COLUMNS[column]}"
        elif kind == "bytes":
            bad = draw(st.sampled_from(_NOT_UTF8)).decode("utf-8", "surrogateescape")
            cells[column] = cells[column][:at] + bad + cells[column][at:]
            faults[number] = f"bytes {bad.encode('utf-8', 'surrogateescape')!r} in {CSV_COLUMNS[column]}"
        elif kind == "surrogates":
            escaped = "".join(chr(0xDC00 + b) for b in draw(st.lists(st.integers(0x80, 0xFF), min_size=1, max_size=3)))
            cells[column] = cells[column][:at] + escaped + cells[column][at:]
            faults[number] = f"surrogateescape bytes in {CSV_COLUMNS[column]}"
        elif kind == "trip":
            cells[0] = f"{TRIP}{{p}}-{number}@example.com"
            faults[number] = "trip: the database refuses it"
        else:
            cells[column] = "x" * (CSV_FIELD_LIMIT + draw(st.integers(1, 50_000)))
            faults[number] = f"huge field in {CSV_COLUMNS[column]}"
    header_fault = None
    if draw(st.integers(0, 15)) == 9:  # not 0: hypothesis draws the smallest value far more often
        header_fault = draw(st.sampled_from(("\x00", *(b.decode("utf-8", "surrogateescape") for b in _NOT_UTF8[:3]))))
    return CsvFile(
        tuple(CsvRow(n, tuple(cells), faults.get(n)) for n, cells in enumerate(rows, start=1)),
        bom=draw(st.booleans()),
        crlf=draw(st.booleans()),
        header_fault=header_fault,
    )
