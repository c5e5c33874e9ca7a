"""Loading funnel files: YAML syntax, shape (the pydantic model) and graph checks, with positions.

Every problem becomes one `FunnelError` whose text is `file:line:column: where: expected X, found Y`,
and all of them are reported at once, so a marketer fixes a file in one pass. Shape errors come from
pydantic and are translated here: union tags are stripped from locations, list indexes are replaced by
ids where the file has them, and "no recognised action key" becomes the unknown key that caused it.
Graph checks (targets, reachability, templates, loops) run only on files whose shape is right.
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError
from pydantic.json_schema import GenerateJsonSchema
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.authoring.experiment_checks import check_experiments
from engine.authoring.translations import check_translations
from engine.core.definition import (
    EVENT_PATTERN,
    ID_PATTERN,
    MAX_ID_LENGTH,
    TEMPLATE_PATTERN,
    AllCondition,
    AttrCondition,
    BranchStep,
    ConditionTrigger,
    EventTrigger,
    ExitStep,
    Funnel,
    MoveStep,
    OnEndMove,
    Outcome,
    SendStep,
    SplitStep,
    Stage,
    WaitFor,
    WaitForStep,
    WaitStep,
    WaitUntilStep,
    WebhookStep,
    shorten,
)
from engine.core.durations import format_duration
from engine.core.webhook_targets import Targets, url_problem
from engine.core.yamlfile import Position, YamlDocument, YamlSyntaxError, read_yaml
from engine.mail.folder_loader import FolderLoader, OutsideFolder
from engine.mail.templates import TemplateLibrary

Loc = tuple[str | int, ...]

SCHEMA_ID = "funnel.schema.json"
SCENARIO_SUFFIX = ".scenarios.yaml"
TEMPLATE_SUFFIXES = (".md", ".html")


@dataclass(frozen=True)
class FunnelError:
    """One problem in one file, printable as `file:line:column: message`."""

    path: Path
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


@dataclass
class LoadResult:
    funnels: list[Funnel] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    errors: list[FunnelError] = field(default_factory=list)
    sources: dict[str, Path] = field(default_factory=dict)  # funnel id -> the file it came from
    # Worth knowing, not wrong: e.g. a language an email has no translation into (its leads read another).
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def funnel_files(paths: Iterable[Path]) -> tuple[list[Path], list[FunnelError]]:
    """The funnel files named by `paths`: files as given, folders as their `*.yaml`/`*.yml` files
    (not recursive), leaving out scenario files, which are test input rather than funnels. A file of a
    folder that is a link leading outside it is an error and is not read: its text could end up in an
    error message (the folder's loader decides, as for templates)."""
    files: list[Path] = []
    errors: list[FunnelError] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix in (".yaml", ".yml") and not p.name.endswith(SCENARIO_SUFFIX)
            )
            if not found:
                message = "no funnel files: expected *.yaml or *.yml files, found none"
                errors.append(FunnelError(path, 1, 1, message))
            folder = FolderLoader(path)
            for file in found:
                try:
                    folder.find(file.name)
                except OutsideFolder as exc:
                    errors.append(FunnelError(file, 1, 1, str(exc)))
                else:
                    files.append(file)
        elif path.is_file():
            files.append(path)
        else:
            errors.append(FunnelError(path, 1, 1, "no such file or folder"))
    return files, errors


def load_funnels(
    paths: Iterable[Path], emails_dir: Path | None = Path("emails"), targets: Targets | None = None
) -> LoadResult:
    """Read and check funnel files. `emails_dir=None` skips the template check (for callers that
    only need the funnels' logic, such as scenario tests without emails). `targets` (from
    `Settings.webhook_targets()`) checks where `webhook` steps call; None leaves that to the sender,
    which checks every call when it is made."""
    files, errors = funnel_files(paths)
    result = LoadResult(files=files, errors=errors)
    checked: list[tuple[Funnel, YamlDocument]] = []
    templates = _Templates(emails_dir)
    for path in files:
        funnel, doc, file_errors = _load_file(path)
        result.errors.extend(file_errors)
        if funnel is None or doc is None:
            continue
        found = check_graph(funnel, doc.data)
        found += check_experiments(funnel, describe, doc.data, emails_dir)
        if targets is not None:
            found += check_webhook_urls(funnel, doc.data, targets)
        graph_errors = [_error(doc, loc, msg, key=key) for loc, msg, key in found]
        graph_errors += templates.check(funnel, doc)
        result.notes += templates.take_notes()
        result.errors.extend(sorted(graph_errors, key=lambda e: (e.line, e.column)))
        if not graph_errors:
            checked.append((funnel, doc))
    seen: dict[str, Path] = {}
    for funnel, doc in checked:
        if funnel.id in seen:
            result.errors.append(
                _error(
                    doc,
                    ("id",),
                    f"funnel id '{funnel.id}' is also used by {seen[funnel.id]}: expected an id unique across"
                    f" funnel files, found '{funnel.id}' again",
                )
            )
            continue
        seen[funnel.id] = doc.path
        result.funnels.append(funnel)
        result.sources[funnel.id] = doc.path
    return result


def _load_file(path: Path) -> tuple[Funnel | None, YamlDocument | None, list[FunnelError]]:
    try:
        doc = read_yaml(path)
    except YamlSyntaxError as exc:
        return None, None, [FunnelError(path, exc.position.line, exc.position.column, exc.message)]
    except (OSError, UnicodeDecodeError) as exc:
        return None, None, [FunnelError(path, 1, 1, f"cannot read the file: {exc}")]
    errors = [FunnelError(path, pos.line, pos.column, msg) for pos, msg in _duplicate_keys(doc.root, (), [])]
    try:
        funnel = Funnel.model_validate(doc.data)
    except ValidationError as exc:
        errors += shape_errors(doc, exc)
        return None, doc, sorted(errors, key=lambda e: (e.line, e.column))
    return (None if errors else funnel), doc, errors


def _error(doc: YamlDocument, loc: Loc, message: str, key: bool = False) -> FunnelError:
    pos: Position = doc.key_position(loc) if key else doc.position(loc)
    return FunnelError(doc.path, pos.line, pos.column, message)


def _duplicate_keys(node: Node | None, loc: Loc, trail: list[Node]) -> Iterator[tuple[Position, str]]:
    # PyYAML keeps the last of two equal keys without a word; a marketer would lose a step silently.
    # `trail` holds the nodes from the root down to `node`: a duplicate is named by the copy it is written
    # in, which the data (holding the last copy of each key) may not have.
    if isinstance(node, MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, ScalarNode):
                if key.value in seen:
                    yield (
                        Position(key.start_mark.line + 1, key.start_mark.column + 1),
                        f"{describe(loc, _as_written([*trail, node], loc))}: duplicate key '{key.value}':"
                        " expected each key once, found it twice",
                    )
                seen.add(key.value)
                yield from _duplicate_keys(value, (*loc, key.value), [*trail, node])
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*loc, i), [*trail, node])


def _as_written(trail: list[Node], loc: Loc) -> Any:
    """Plain data along `loc` as these nodes hold it, for `describe`: each mapping with its first scalar
    values (the ids that name stages and steps) and, on the way down, the next node of the trail."""
    data: Any = None
    for depth in range(len(trail) - 1, -1, -1):
        node = trail[depth]
        if isinstance(node, MappingNode):
            mapping: dict[str, Any] = {}
            for key, value in node.value:
                if isinstance(key, ScalarNode) and isinstance(value, ScalarNode):
                    mapping.setdefault(key.value, value.value)
            if depth < len(loc):
                mapping[str(loc[depth])] = data
            data = mapping
        elif isinstance(node, SequenceNode):
            items: list[Any] = [None] * len(node.value)
            if depth < len(loc) and isinstance(loc[depth], int):
                items[int(loc[depth])] = data
            data = items
    return data


# --------------------------------------------------------------------------------------------------
# Shape errors: pydantic's errors in the marketer's words
# --------------------------------------------------------------------------------------------------

_UNION_ERRORS = {"step": "step", "condition": "condition", "trigger": "trigger"}
_MISMATCH = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "time_type": "a local clock time 'HH:MM' such as '09:00'",
    "time_parsing": "a local clock time 'HH:MM' such as '09:00'",
    "time_delta_type": "a duration such as '30m', '36h', '2d' or '1w2d'",
    "time_delta_parsing": "a duration such as '30m', '36h', '2d' or '1w2d'",
}
_PATTERNS = {
    ID_PATTERN: "a lowercase kebab-case id (letters, digits and single dashes) such as 'nurture-1'",
    EVENT_PATTERN: "an event name in snake_case such as 'form_submitted'",
    TEMPLATE_PATTERN: "a template path under the emails folder, without extension, such as 'lead-magnet/report'",
    r"^https?://\S+$": "an http:// or https:// URL",
    r"^[A-Za-z_][A-Za-z0-9_.]*$": "a field name such as 'company_size' or 'address.country'",
}
_LABELS = {"str": "text", "int": "a number", "float": "a number", "bool": "a boolean (true/false)"}


@dataclass(frozen=True)
class _Shaped:
    """A pydantic error with its location split into the data path and the union it went through."""

    loc: Loc  # path in the file's data
    union_at: Loc | None  # data path of the innermost smart union passed through, if any
    model: type[BaseModel] | None  # the model owning the last location part, if known
    leaf: Any  # the type found at `loc`, if known
    error: Any  # pydantic's ErrorDetails


def shape_errors(doc: YamlDocument, exc: ValidationError) -> list[FunnelError]:
    shaped = [_shape(e) for e in exc.errors(include_url=False)]
    out: list[FunnelError] = []
    done_unions: set[Loc] = set()
    for item in shaped:
        if item.union_at is not None:
            if item.union_at in done_unions:
                continue
            group = [s for s in shaped if s.union_at == item.union_at]
            deep = [s for s in group if s.loc != item.union_at]
            if deep:
                # One member took the value's shape; its own errors are the useful ones.
                for s in deep:
                    out.extend(_messages(doc, s))
            else:
                out.append(_union_mismatch(doc, item.union_at, group))
            done_unions.add(item.union_at)
            continue
        out.extend(_messages(doc, item))
    unique = {(e.line, e.column, e.message): e for e in out}
    return sorted(unique.values(), key=lambda e: (e.line, e.column))


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _members(tp: Any) -> list[Any]:
    return [m for m in get_args(tp) if m is not type(None)]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field_type(model: type[BaseModel], key: str | int) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return None


def _shape(error: Any) -> _Shaped:
    """Walk pydantic's location alongside the model's types: parts that name a union member (tags
    such as `send`, labels such as `OnEndMove`) are not in the file and are dropped."""
    tp: Any = Funnel
    data_loc: list[str | int] = []
    union_at: Loc | None = None
    model: type[BaseModel] | None = None
    for part in error["loc"]:
        tp = _unwrap(tp)
        while _is_union(tp) and len(_members(tp)) == 1:
            tp = _unwrap(_members(tp)[0])
        if _is_union(tp):
            tagged = _member_by_tag(tp, part)
            if tagged is None:
                union_at = tuple(data_loc)
            tp = tagged if tagged is not None else _member_by_name(tp, part)
            continue
        data_loc.append(part)
        if _is_model(tp):
            model = tp
            tp = _field_type(tp, part)
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            tp = None
    return _Shaped(tuple(data_loc), union_at, model, _unwrap(tp), error)


def _member_by_tag(union: Any, part: str | int) -> Any:
    for member in get_args(union):
        tags = get_args(member)[1:] if get_origin(member) is Annotated else ()
        if any(isinstance(m, Tag) and m.tag == part for m in tags):
            return get_args(member)[0]
    return None


def _member_by_name(union: Any, part: str | int) -> Any:
    for member in _members(union):
        inner = _unwrap(member)
        if isinstance(inner, type) and inner.__name__ == part:
            return inner
    return None


def _messages(doc: YamlDocument, s: _Shaped) -> list[FunnelError]:
    e = s.error
    kind: str = e["type"]
    loc = s.loc
    if kind == "extra_forbidden" and loc:
        return [_error(doc, loc, _unknown_key(doc, loc[:-1], str(loc[-1]), _keys_of(s.model)), key=True)]
    if kind == "missing" and loc:
        return [_error(doc, loc[:-1], _missing(doc, loc, s.model), key=True)]
    if kind in _UNION_ERRORS:
        return _union_failure(doc, loc, kind, s.leaf, e["input"])
    return [_error(doc, loc, f"{describe(loc, doc.data)}: {_expected_found(e)}")]


def _expected_found(e: Any) -> str:
    kind: str = e["type"]
    ctx = e.get("ctx") or {}
    found = show(e["input"])
    if kind in ("value_error", "assertion_error"):
        text = str(ctx.get("error", e["msg"]))
        if "found" in text:
            return text
        if isinstance(e["input"], dict):
            # A model-level rule names the keys it is about; say which of them were written.
            named = [k for k in dict.fromkeys(re.findall(r"'([a-z_]+)'", text)) if k in e["input"]]
            found = " and ".join(f"'{k}'" for k in named) if named else "none of them"
        return f"{text}, found {found}"
    if kind == "string_pattern_mismatch":
        wanted = _PATTERNS.get(str(ctx.get("pattern")), f"text matching {ctx.get('pattern')}")
        return f"expected {wanted}, found {found}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}, found {found}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} item(s), found {found}"
    if kind == "too_long":
        return f"expected at most {ctx.get('max_length')} item(s), found {len(e['input'])}"
    if kind == "string_too_short":
        return f"expected text of at least {ctx.get('min_length')} character(s), found {found}"
    if kind == "string_too_long":
        return f"expected at most {ctx.get('max_length')} characters, found {len(e['input'])}"
    if kind in _MISMATCH:
        return f"expected {_MISMATCH[kind]}, found {found}"
    return f"expected {e['msg'][0].lower()}{e['msg'][1:]}, found {found}"


def _keys_of(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _unknown_key(doc: YamlDocument, parent: Loc, key: str, allowed: Sequence[str]) -> str:
    where = describe(parent, doc.data)
    text = f"unknown key '{key}' in {where}: expected one of {', '.join(allowed)}, found '{key}'"
    close = difflib.get_close_matches(key, allowed, n=1)
    return text + (f" (did you mean '{close[0]}'?)" if close else "")


def _missing(doc: YamlDocument, loc: Loc, model: type[BaseModel] | None) -> str:
    key = str(loc[-1])
    hint = ""
    if model is not None:
        if model is WaitFor and key == "timeout":
            hint = "a 'timeout': how long to wait for the event before following on_timeout, such as '3d'"
        elif key == "id":
            hint = f"an 'id': {_PATTERNS[ID_PATTERN]}"
        else:
            for name, info in model.model_fields.items():
                if key in (name, info.alias) and info.description:
                    text = info.description.replace("`", "'").rstrip(".")
                    hint = f"a value for '{key}' ({text[0].lower()}{text[1:]})"
    hint = hint or f"a value for '{key}'"
    return f"{describe(loc[:-1], doc.data)}: missing key '{key}': expected {hint}, found none"


def _union_failure(doc: YamlDocument, loc: Loc, kind: str, union: Any, value: Any) -> list[FunnelError]:
    """A step/condition/trigger mapping whose action key could not be told: the unknown keys say more
    than "none of the kinds matched", because they are usually typos."""
    actions, extra = _union_keys(union)
    where = describe(loc, doc.data)
    noun = _UNION_ERRORS[kind]
    if not isinstance(value, dict):
        wanted = f"a {noun} mapping with one of {', '.join(actions)}"
        return [_error(doc, loc, f"{where}: expected {wanted}, found {show(value)}")]
    allowed = [*extra, *actions]
    known = set(allowed) | _all_member_keys(union)
    unknown = [k for k in value if str(k) not in known]
    if unknown:
        return [_error(doc, (*loc, str(k)), _unknown_key(doc, loc, str(k), allowed), key=True) for k in unknown]
    present = [k for k in actions if k in value]
    found = " and ".join(f"'{k}'" for k in present) if present else "none"
    return [_error(doc, loc, f"{where}: expected exactly one of {', '.join(actions)}, found {found}")]


def _union_keys(union: Any) -> tuple[list[str], list[str]]:
    """(action keys = the union's tags, keys every member shares such as `id`)."""
    tags: list[str] = []
    shared: set[str] | None = None
    for member in get_args(union):
        for meta in get_args(member)[1:]:
            if isinstance(meta, Tag):
                tags.append(meta.tag)
        keys = set(_keys_of(_unwrap(member)))
        shared = keys if shared is None else shared & keys
    common = [k for k in _keys_of(_unwrap(get_args(union)[0])) if k in (shared or set())]
    return tags, common


def _all_member_keys(union: Any) -> set[str]:
    return {k for member in get_args(union) for k in _keys_of(_unwrap(member))}


def _union_mismatch(doc: YamlDocument, loc: Loc, group: list[_Shaped]) -> FunnelError:
    wanted: list[str] = []
    for s in group:
        e = s.error
        label = str(e["loc"][-1])
        if e["type"] == "literal_error":
            text = str((e.get("ctx") or {}).get("expected"))
        elif e["type"] in ("model_type", "dict_type") and label in _MODEL_NAMES:
            text = f"a mapping with {', '.join(_keys_of(_MODEL_NAMES[label]))}"
        elif label in _LABELS:
            text = _LABELS[label]
        else:
            text = _MISMATCH.get(e["type"], label)
        if text not in wanted:
            wanted.append(text)
    expected = ", ".join(wanted[:-1]) + " or " + wanted[-1] if len(wanted) > 1 else wanted[0]
    found = show(group[0].error["input"])
    return _error(doc, loc, f"{describe(loc, doc.data)}: expected {expected}, found {found}")


_MODEL_NAMES: dict[str, type[BaseModel]] = {"OnEndMove": OnEndMove}


def show(value: Any) -> str:
    """A value as the marketer wrote it, for "found ..."."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return shorten(repr(value) if isinstance(value, str) else str(value))


_NAMED = {"stages": "stage", "steps": "step", "transitions": "transition"}


def describe(loc: Loc, data: Any = None) -> str:
    """A location in words: `stage 'inquiry' step 'w1' wait_for.timeout`, with indexes where a
    stage, step or transition has no valid id to name it by."""
    if not loc:
        return "funnel"
    words: list[str] = []
    dotted = ""
    node = data
    i = 0
    while i < len(loc):
        part = loc[i]
        nxt = loc[i + 1] if i + 1 < len(loc) else None
        child = _get(node, part)
        if isinstance(part, str) and part in _NAMED and isinstance(nxt, int) and not dotted:
            item = _get(child, nxt)
            ident = item.get("id") if isinstance(item, dict) else None
            if isinstance(ident, str) and len(ident) <= MAX_ID_LENGTH and re.match(ID_PATTERN, ident):
                words.append(f"{_NAMED[part]} '{ident}'")
                node = item
                i += 2
                continue
        if isinstance(part, int):
            dotted += f"[{part}]"
        else:
            dotted += f".{part}" if dotted else str(part)
        node = child
        i += 1
    if dotted:
        words.append(dotted)
    return " ".join(words)


def _get(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


# --------------------------------------------------------------------------------------------------
# Graph checks on a well-shaped funnel
# --------------------------------------------------------------------------------------------------

_WAITS = (WaitStep, WaitUntilStep, WaitForStep)
Found = tuple[Loc, str, bool]  # location, message, point at the key rather than the value


class _StageTargets:
    """Checks that a place names a stage of the funnel, collecting an error (with a "did you mean") if not."""

    def __init__(self, funnel: Funnel, data: Any, found: list[Found]) -> None:
        self.stages = [s.id for s in funnel.stages]
        self.data = data
        self.found = found

    def __call__(self, loc: Loc, stage_id: str) -> bool:
        if stage_id in self.stages:
            return True
        close = difflib.get_close_matches(stage_id, self.stages, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        self.found.append(
            (
                loc,
                f"{describe(loc, self.data)}: unknown stage '{stage_id}': expected one of"
                f" {', '.join(self.stages)}, found '{stage_id}'{hint}",
                False,
            )
        )
        return False


def check_graph(funnel: Funnel, data: Any) -> list[Found]:
    """Targets exist, ids are unique, every stage is reachable, every `goto` loop waits.

    `data` is the file's plain data, used to name places; the funnel model has the meaning."""
    found: list[Found] = []
    target = _StageTargets(funnel, data, found)
    _funnel_targets(funnel, target, found)
    _step_targets(funnel, data, target, found)
    found += _duplicate_transitions(funnel)
    found += _unreachable(funnel, data)
    found += _instant_loops(funnel, data)
    found += _persona_entry(funnel, data)
    return found


def _funnel_targets(funnel: Funnel, target: _StageTargets, found: list[Found]) -> None:
    """The stages the entry, the renames, the goal and the transitions name."""
    if funnel.entry.stage is not None:
        target(("entry", "stage"), funnel.entry.stage)
    if funnel.renamed is not None:
        step_ids = {st.id for s in funnel.stages for st in s.steps}
        for old_id, new_id in funnel.renamed.stages.items():
            target(("renamed", "stages", old_id), new_id)
        for old_id, new_id in funnel.renamed.steps.items():
            if new_id not in step_ids:
                message = f"renamed.steps.{old_id}: expected the id of a step of this funnel, found '{new_id}'"
                found.append((("renamed", "steps", old_id), message, False))
    if funnel.goal is not None and funnel.goal.move_to is not None:
        target(("goal", "move_to"), funnel.goal.move_to)
    for t_index, t in enumerate(funnel.transitions):
        target(("transitions", t_index, "to"), t.to)
        if t.from_ != "*":
            for f_index, stage_id in enumerate(t.from_):
                target(("transitions", t_index, "from", f_index), stage_id)


def _step_targets(funnel: Funnel, data: Any, target: _StageTargets, found: list[Found]) -> None:
    """Step ids unique within the funnel; the stages steps move to and the steps they go to exist."""
    step_seen: dict[str, Loc] = {}
    for s_index, stage in enumerate(funnel.stages):
        if isinstance(stage.on_end, OnEndMove):
            target(("stages", s_index, "on_end", "move_to"), stage.on_end.move_to)
        step_ids = {st.id for st in stage.steps}
        for st_index, step in enumerate(stage.steps):
            loc: Loc = ("stages", s_index, "steps", st_index)
            if step.id in step_seen:
                first = describe(step_seen[step.id], data)
                found.append(
                    (
                        (*loc, "id"),
                        f"{describe(loc, data)}: duplicate step id '{step.id}' (also {first}):"
                        f" expected step ids unique within the funnel, found '{step.id}' again",
                        False,
                    )
                )
            else:
                step_seen[step.id] = loc
            if isinstance(step, MoveStep):
                target((*loc, "move_to"), step.move_to)
            for out_loc, outcome in _outcomes(step, loc):
                if outcome.move_to is not None:
                    target((*out_loc, "move_to"), outcome.move_to)
                if outcome.goto is not None and outcome.goto not in step_ids:
                    g_loc = (*out_loc, "goto")
                    found.append(
                        (
                            g_loc,
                            f"{describe(g_loc, data)}: unknown step '{outcome.goto}': expected a step of"
                            f" stage '{stage.id}' ({', '.join(st.id for st in stage.steps)}),"
                            f" found '{outcome.goto}'",
                            False,
                        )
                    )


def _duplicate_transitions(funnel: Funnel) -> list[Found]:
    found: list[Found] = []
    t_seen: set[str] = set()
    for t_index, t in enumerate(funnel.transitions):
        if t.id in t_seen:
            loc = ("transitions", t_index, "id")
            found.append(
                (
                    loc,
                    f"transitions[{t_index}].id: duplicate transition id: expected unique transition ids,"
                    f" found '{t.id}' again",
                    False,
                )
            )
        t_seen.add(t.id)
    return found


def check_webhook_urls(funnel: Funnel, data: Any, targets: Targets) -> list[Found]:
    """`webhook` steps whose URL the address policy refuses as written (a literal private address, a
    loopback name, the engine itself); a name is judged again by what it resolves to when the call is sent."""
    found: list[Found] = []
    for s_index, stage in enumerate(funnel.stages):
        for st_index, step in enumerate(stage.steps):
            if isinstance(step, WebhookStep):
                problem = url_problem(step.webhook.url, targets)
                if problem is not None:
                    loc: Loc = ("stages", s_index, "steps", st_index, "webhook", "url")
                    found.append((loc, f"{describe(loc, data)}: {problem}", False))
    return found


def _persona_entry(funnel: Funnel, data: Any) -> list[Found]:
    """A funnel written for one persona whose entry only lets in another is a contradiction (a copied
    funnel whose persona was changed in one place): the entry's `persona` tests must admit it."""
    if funnel.persona is None:
        return []
    wanted = funnel.persona.id
    out: list[Found] = []
    for t_index, trigger in enumerate(funnel.entry.triggers):
        loc: Loc = ("entry", "triggers", t_index)
        tests: list[tuple[Loc, list[Any]]] = []
        if isinstance(trigger, EventTrigger) and "persona" in trigger.where:
            value = trigger.where["persona"]
            tests.append(((*loc, "where", "persona"), value if isinstance(value, list) else [value]))
        elif isinstance(trigger, ConditionTrigger):
            tests += _persona_tests(trigger.condition, (*loc, "condition"))
        for at, admitted in tests:
            if wanted not in [str(v) for v in admitted]:
                shown = ", ".join(f"'{v}'" for v in admitted)
                out.append(
                    (
                        at,
                        f"{describe(at, data)}: the funnel's persona is '{wanted}' (persona.id) but this"
                        f" trigger lets in only {shown}: expected '{wanted}' among the values, found {shown}",
                        False,
                    )
                )
    return out


def _persona_tests(condition: Any, loc: Loc) -> list[tuple[Loc, list[Any]]]:
    """`{attr: persona, equals|in: ...}` at the top of a condition or inside its `all`: the tests every
    admitted lead must pass (one under `any` or `not` need not hold, so it proves nothing)."""
    if isinstance(condition, AllCondition):
        return [t for i, c in enumerate(condition.all) for t in _persona_tests(c, (*loc, "all", i))]
    if isinstance(condition, AttrCondition) and condition.attr == "persona":
        op, value = condition.operator
        if op == "equals":
            return [((*loc, "equals"), [value])]
        if op == "in":
            return [((*loc, "in"), list(value))]
    return []


def _outcomes(step: Any, loc: Loc) -> list[tuple[Loc, Outcome]]:
    if isinstance(step, BranchStep):
        return [((*loc, "branch", "then"), step.branch.then), ((*loc, "branch", "else"), step.branch.else_)]
    if isinstance(step, WaitForStep):
        return [
            ((*loc, "wait_for", "on_event"), step.wait_for.on_event),
            ((*loc, "wait_for", "on_timeout"), step.wait_for.on_timeout),
        ]
    if isinstance(step, SplitStep):
        # A split arm without `goto` is reported by the experiment checks; here it is not a way anywhere.
        return [
            ((*loc, "split", "arms", i), Outcome(goto=arm.goto)) for i, arm in enumerate(step.split.arms) if arm.goto
        ]
    return []


def _stage_moves(funnel: Funnel, stage: Stage) -> set[str]:
    """Stages a lead can go to from `stage` through its own sequence."""
    moves: set[str] = set()
    if stage.on_end == "next":
        nxt = funnel.next_stage(stage.id)
        if nxt is not None:
            moves.add(nxt)
    elif isinstance(stage.on_end, OnEndMove):
        moves.add(stage.on_end.move_to)
    for step in stage.steps:
        if isinstance(step, MoveStep):
            moves.add(step.move_to)
        moves |= {o.move_to for _, o in _outcomes(step, ()) if o.move_to is not None}
    return moves


def _unreachable(funnel: Funnel, data: Any) -> list[Found]:
    entry = funnel.entry.stage or funnel.stages[0].id
    reached = {entry}
    todo = [entry]
    anywhere = {t.to for t in funnel.transitions if t.from_ == "*"}
    if funnel.goal is not None and funnel.goal.move_to is not None:
        anywhere.add(funnel.goal.move_to)
    todo += sorted(anywhere - reached)
    reached |= anywhere
    ids = set(funnel.stage_ids())
    while todo:
        current = todo.pop()
        if current not in ids:
            continue
        nexts = set(_stage_moves(funnel, funnel.stage(current)))
        nexts |= {t.to for t in funnel.transitions if t.from_ != "*" and current in t.from_}
        for stage_id in sorted(nexts - reached):
            reached.add(stage_id)
            todo.append(stage_id)
    out: list[Found] = []
    for s_index, stage in enumerate(funnel.stages):
        if stage.id not in reached:
            out.append(
                (
                    ("stages", s_index, "id"),
                    f"stage '{stage.id}' is unreachable: expected a way in from the entry stage '{entry}'"
                    " (the stage before it ending with on_end next, a move_to, a branch or wait_for outcome,"
                    " a transition or goal.move_to), found none",
                    False,
                )
            )
    return out


Node_ = tuple[str, int]  # (stage id, step index); index == len(steps) is the end of the sequence
Edge = tuple[Node_, Loc, bool]  # where to, the place that leads there, whether it is a `goto`


def _instant_loops(funnel: Funnel, data: Any) -> list[Found]:
    """Cycles of moves that happen at the same instant (no wait in between). The core would run such a
    loop until its step budget stops the lead, so it is refused here."""
    graph = _InstantMoves(funnel).graph()
    return [_loop_error(funnel, data, graph, component) for component in _cycles(graph)]


class _InstantMoves:
    """The graph of moves a lead makes at one instant: from each step (and each stage's end) to where the
    lead goes next without time passing."""

    def __init__(self, funnel: Funnel) -> None:
        self.funnel = funnel
        self.stage_index = {s.id: i for i, s in enumerate(funnel.stages)}

    def enter(self, stage_id: str) -> Node_ | None:
        return (stage_id, 0) if stage_id in self.stage_index else None

    def follow(self, outcome: Outcome, o_loc: Loc, step_loc: Loc, index: dict[str, int], nxt: Node_) -> list[Edge]:
        """Where an outcome leads at once (`goto` edges are marked: they are where a loop is reported)."""
        if outcome.goto is not None:
            goto = outcome.goto
            return [((nxt[0], index[goto]), (*o_loc, "goto"), True)] if goto in index else []
        if outcome.move_to is not None:
            target = self.enter(outcome.move_to)
            return [(target, (*o_loc, "move_to"), False)] if target else []
        return [] if outcome.exit is not None else [(nxt, step_loc, False)]

    def step_edges(self, step: Any, loc: Loc, index: dict[str, int], nxt: Node_) -> list[Edge]:
        out: list[Edge] = []
        if isinstance(step, WaitStep):
            if not step.wait:  # a zero wait is no wait: the next step follows at the same instant
                out.append((nxt, loc, False))
        elif isinstance(step, WaitForStep):
            # The event outcome needs a new event, so it never comes round at the same instant; the
            # timeout outcome does when the timeout is 0s.
            if not step.wait_for.timeout:
                out += self.follow(step.wait_for.on_timeout, (*loc, "wait_for", "on_timeout"), loc, index, nxt)
        elif isinstance(step, WaitUntilStep):
            pass  # always a later time (engine.core.localtime.next_local_time)
        elif isinstance(step, BranchStep | SplitStep):
            for o_loc, outcome in _outcomes(step, loc):
                out += self.follow(outcome, o_loc, loc, index, nxt)
        elif isinstance(step, MoveStep):
            target = self.enter(step.move_to)
            if target:
                out.append((target, (*loc, "move_to"), False))
        elif not isinstance(step, ExitStep):
            out.append((nxt, loc, False))
        return out

    def end_edges(self, s_index: int, stage: Any) -> list[Edge]:
        end_out: list[Edge] = []
        on_end_loc: Loc = ("stages", s_index, "on_end")
        if isinstance(stage.on_end, OnEndMove):
            target = self.enter(stage.on_end.move_to)
            if target:
                end_out.append((target, (*on_end_loc, "move_to"), False))
        elif stage.on_end == "next":
            following = self.funnel.next_stage(stage.id)
            if following is not None:
                end_out.append(((following, 0), ("stages", s_index, "id"), False))
        return end_out

    def graph(self) -> dict[Node_, list[Edge]]:
        funnel = self.funnel
        edges: dict[Node_, list[Edge]] = {}
        for s_index, stage in enumerate(funnel.stages):
            index = {st.id: i for i, st in reversed(list(enumerate(stage.steps)))}
            for i, step in enumerate(stage.steps):
                loc: Loc = ("stages", s_index, "steps", i)
                edges[(stage.id, i)] = self.step_edges(step, loc, index, (stage.id, i + 1))
            edges[(stage.id, len(stage.steps))] = self.end_edges(s_index, stage)
        for t_index, t in enumerate(funnel.transitions):
            # A stage timeout of 0s fires at the instant the lead enters the stage.
            target = self.enter(t.to)
            if t.after is not None and not t.after and target is not None:
                for stage in funnel.stages:
                    if t.applies_to(stage.id) and stage.id != t.to:
                        edges[(stage.id, 0)].append((target, ("transitions", t_index, "after"), False))

        def normal(node: Node_) -> Node_:
            stage_id, i = node
            return (stage_id, min(i, len(funnel.stage(stage_id).steps)))

        return {n: [(normal(t), loc, g) for t, loc, g in outs] for n, outs in edges.items()}


def _loop_error(funnel: Funnel, data: Any, graph: dict[Node_, list[Edge]], component: set[Node_]) -> Found:
    """The error for one loop without a wait: at its `goto` if it has one, naming its steps."""
    stage_index = {s.id: i for i, s in enumerate(funnel.stages)}
    ordered = sorted(component, key=lambda n: (stage_index[n[0]], n[1]))
    inner = [(loc, g) for n in ordered for t, loc, g in graph[n] if t in component]
    loc, _ = next(((loc, g) for loc, g in inner if g), inner[0])
    path = " -> ".join(
        f"{s}/{funnel.stage(s).steps[i].id}" if i < len(funnel.stage(s).steps) else f"{s}/(end)" for s, i in ordered
    )
    timeless = [_timeless_wait(funnel.stage(s).steps[i]) for s, i in ordered if i < len(funnel.stage(s).steps)]
    timeless += [
        f"transition '{funnel.transitions[int(at[1])].id}' (after 0s)" for at, _ in inner if at[0] == "transitions"
    ]
    zero = ", ".join(w for w in timeless if w)
    return (
        loc,
        f"{describe(loc, data)}: loop without a wait ({path}): expected a step inside the loop that lets"
        " time pass (a wait or a wait_for timeout longer than 0s, or a wait_until), found"
        f" {'only ' + zero if zero else 'none'}",
        False,
    )


def _timeless_wait(step: Any) -> str | None:
    """`'pause' (wait 0s)` for a wait that lets no time pass, for the loop error."""
    if isinstance(step, WaitStep) and not step.wait:
        return f"'{step.id}' (wait 0s)"
    if isinstance(step, WaitForStep) and not step.wait_for.timeout:
        return f"'{step.id}' (wait_for timeout 0s)"
    return None


def _cycles(graph: dict[Node_, list[tuple[Node_, Loc, bool]]]) -> list[set[Node_]]:
    """Strongly connected components that contain a cycle (Tarjan, iterative)."""
    index: dict[Node_, int] = {}
    low: dict[Node_, int] = {}
    stack: list[Node_] = []
    on_stack: set[Node_] = set()
    result: list[set[Node_]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[Node_, int]] = [(root, 0)]
        while work:
            node, child_i = work.pop()
            if child_i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            children = [t for t, _, _ in graph.get(node, [])]
            if child_i < len(children):
                work.append((node, child_i + 1))
                child = children[child_i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component: set[Node_] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or any(t == node for t, _, _ in graph.get(node, [])):
                    result.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return result


def _sends(funnel: Funnel) -> Iterator[tuple[Loc, str]]:
    """Every template a send step names, with its place: the step's own and its arms'."""
    for s_index, stage in enumerate(funnel.stages):
        for st_index, step in enumerate(stage.steps):
            if isinstance(step, SendStep):
                loc: Loc = ("stages", s_index, "steps", st_index)
                yield (*loc, "send"), step.send
                for a_index, arm in enumerate(step.experiment.arms if step.experiment else ()):
                    if arm.send is not None:
                        yield (*loc, "experiment", "arms", a_index, "send"), arm.send


class _Templates:
    """Email template lookups: `x/y` is `emails/x/y.md` or `emails/x/y.html`."""

    def __init__(self, emails_dir: Path | None) -> None:
        self.emails_dir = emails_dir
        self.reported_missing_dir = False
        self.checked: set[str] = set()
        self.library: TemplateLibrary | None = None
        self.notes: list[str] = []

    def check(self, funnel: Funnel, doc: YamlDocument) -> list[FunnelError]:
        if self.emails_dir is None:
            return []
        out: list[FunnelError] = []
        found: dict[str, Loc] = {}  # each template that exists -> the first step sending it
        for loc, template in _sends(funnel):
            where = describe(loc, doc.data)
            if not self.emails_dir.is_dir():
                if not self.reported_missing_dir:
                    self.reported_missing_dir = True
                    out.append(
                        _error(
                            doc,
                            loc,
                            f"{where}: email templates folder '{self.emails_dir}' not found: expected"
                            f" a folder holding '{template}.md' or '{template}.html', found none",
                        )
                    )
                continue
            candidates = [self.emails_dir / f"{template}{suffix}" for suffix in TEMPLATE_SUFFIXES]
            if not any(c.is_file() for c in candidates):
                out.append(
                    _error(
                        doc,
                        loc,
                        f"{where}: email template '{template}' not found: expected"
                        f" {' or '.join(str(c) for c in candidates)}, found neither",
                    )
                )
                continue
            found.setdefault(template, loc)
            if template not in self.checked:
                out.extend(self._render_check(template))
        return out + self._languages(funnel, doc, found)

    def _languages(self, funnel: Funnel, doc: YamlDocument, found: dict[str, Loc]) -> list[FunnelError]:
        """The translations of the templates found (engine.authoring.translations): errors at their
        files, or at the step sending the template when a `complete` language lacks it; notes kept."""
        if not found:
            return []
        out: list[FunnelError] = []
        for problem in check_translations(self._library(), funnel, found):
            if not problem.error:
                self.notes.append(f"{doc.path}: {problem.message}")
            elif problem.path is not None:
                out.append(FunnelError(Path(problem.path), problem.line, 1, problem.message))
            else:
                loc = found[problem.template]
                out.append(_error(doc, loc, f"{describe(loc, doc.data)}: {problem.message}"))
        return list(dict.fromkeys(out))

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes

    def _library(self) -> TemplateLibrary:
        assert self.emails_dir is not None
        if self.library is None:
            self.library = TemplateLibrary(self.emails_dir)
        return self.library

    def _render_check(self, name: str) -> list[FunnelError]:
        """Render the template for sample leads (strict undefined): a variable with no value and no
        fallback, a syntax error or a missing unsubscribe link is found here, not when sending."""
        self.checked.add(name)
        return [FunnelError(Path(e.path), e.line, 1, e.message) for e in self._library().check(name)]


# --------------------------------------------------------------------------------------------------
# JSON Schema
# --------------------------------------------------------------------------------------------------


class _FunnelSchema(GenerateJsonSchema):
    """Defaults written as a marketer writes them (`1d`, `09:00`), so they match the schema's own
    patterns instead of pydantic's ISO forms (`P1D`, `09:00:00`)."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return format_duration(dft)
        if isinstance(dft, time):
            return f"{dft:%H:%M}"
        return super().encode_default(dft)


def funnel_schema() -> dict[str, Any]:
    schema = Funnel.model_json_schema(by_alias=True, schema_generator=_FunnelSchema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "Funnel",
        "description": "A marketing funnel: entry triggers, stages with drip steps, transitions, a goal and"
        " exit rules. Files start with `# yaml-language-server: $schema=../config/funnel.schema.json`.",
    }


def schema_text() -> str:
    return json.dumps(funnel_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schema(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(schema_text(), encoding="utf-8")


__all__ = [
    "FunnelError",
    "LoadResult",
    "check_graph",
    "describe",
    "funnel_files",
    "funnel_schema",
    "load_funnels",
    "schema_text",
    "write_schema",
]
