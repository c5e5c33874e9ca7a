"""Hypothesis strategies for random funnels, leads and input streams (events, clock ticks, downtime).

Funnels are built as engine.core.definition models directly, validated for shape only (pydantic): they may
hold loops without a wait, stages that bounce between each other, or unreachable stages, because the
journey core must stay sane on definitions that slipped past the graph checks too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from hypothesis import strategies as st

from engine.core.definition import WEEKDAYS, Funnel
from engine.core.journey import Event, Lead

ZONES = ("Europe/Berlin", "America/Los_Angeles", "Asia/Kolkata", "UTC")
EVENT_NAMES = ("email_opened", "email_clicked", "purchase_completed", "replied", "demo_booked")
LINKS = ("pricing", "docs", "book-call")
TAGS = ("vip", "customer", "cold")
DURATIONS = ("0s", "5m", "1h", "3h", "1d", "2d", "7d")

# 2026 DST changes in the zones above, so that random runs cross them often.
DST_DAYS_2026 = (
    datetime(2026, 3, 8, tzinfo=UTC),  # America/Los_Angeles spring forward
    datetime(2026, 3, 29, tzinfo=UTC),  # Europe/Berlin spring forward
    datetime(2026, 10, 25, tzinfo=UTC),  # Europe/Berlin fall back
    datetime(2026, 11, 1, tzinfo=UTC),  # America/Los_Angeles fall back
)

# Gaps between two inputs: from simultaneous to a long downtime.
GAPS = (
    timedelta(0),
    timedelta(minutes=1),
    timedelta(minutes=37),
    timedelta(hours=1),
    timedelta(hours=5),
    timedelta(days=1),
    timedelta(days=3),
    timedelta(days=20),
)


# --------------------------------------------------------------------------------------------------
# Conditions, event filters, outcomes
# --------------------------------------------------------------------------------------------------


def conditions(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.one_of(
        st.sampled_from(TAGS).map(lambda t: {"has_tag": t}),
        st.integers(-2, 5).map(lambda n: {"attr": "score", "gte": n}),
        st.sampled_from(("pro", "free", 1, "1")).map(lambda v: {"attr": "plan", "equals": v}),
        st.booleans().map(lambda b: {"attr": "company", "exists": b}),
    )
    if depth <= 0:
        return leaf
    sub = st.lists(conditions(depth - 1), min_size=1, max_size=2)
    return st.one_of(
        leaf,
        sub.map(lambda cs: {"all": cs}),
        sub.map(lambda cs: {"any": cs}),
        conditions(depth - 1).map(lambda c: {"not": c}),
    )


@st.composite
def event_matches(draw: st.DrawFn) -> dict[str, Any]:
    match: dict[str, Any] = {"event": draw(st.sampled_from(EVENT_NAMES))}
    if draw(st.booleans()):
        links = draw(st.lists(st.sampled_from(LINKS), min_size=1, max_size=2, unique=True))
        match["where"] = {"link": links[0] if len(links) == 1 else links}
    return match


def outcomes(step_ids: list[str], stage_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.just({}),
        st.sampled_from(step_ids).map(lambda s: {"goto": s}),
        st.sampled_from(stage_ids).map(lambda s: {"move_to": s}),
        st.just({"exit": "gave-up"}),
    )


# --------------------------------------------------------------------------------------------------
# Steps, stages, funnels
# --------------------------------------------------------------------------------------------------

STEP_KINDS = ("send", "wait", "wait_until", "wait_for", "branch", "update", "move_to", "webhook", "exit")


@st.composite
def steps(draw: st.DrawFn, step_id: str, stage_step_ids: list[str], stage_ids: list[str]) -> dict[str, Any]:
    # Sends and waits are the common case; weigh them up so runs send mail.
    kind = draw(st.sampled_from((*STEP_KINDS, "send", "send", "wait", "wait_until")))
    if kind == "send":
        return {"id": step_id, "send": f"mail/{step_id}", "transactional": draw(st.booleans())}
    if kind == "wait":
        return {"id": step_id, "wait": draw(st.sampled_from(DURATIONS))}
    if kind == "wait_until":
        wait_until: dict[str, Any] = {"time": draw(clock_times())}
        if draw(st.booleans()):
            wait_until["days"] = draw(st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=3, unique=True))
        return {"id": step_id, "wait_until": wait_until}
    if kind == "wait_for":
        return {
            "id": step_id,
            "wait_for": {
                **draw(event_matches()),
                "timeout": draw(st.sampled_from(DURATIONS[1:])),
                "on_event": draw(outcomes(stage_step_ids, stage_ids)),
                "on_timeout": draw(outcomes(stage_step_ids, stage_ids)),
            },
        }
    if kind == "branch":
        return {
            "id": step_id,
            "branch": {
                "if": draw(conditions()),
                "then": draw(outcomes(stage_step_ids, stage_ids)),
                "else": draw(outcomes(stage_step_ids, stage_ids)),
            },
        }
    if kind == "update":
        return {
            "id": step_id,
            "update": {
                "add_tags": draw(st.lists(st.sampled_from(TAGS), max_size=1)),
                "remove_tags": draw(st.lists(st.sampled_from(TAGS), max_size=1)),
                "score": draw(st.integers(-2, 3)),
                "set": draw(st.dictionaries(st.just("plan"), st.sampled_from(("pro", "free")), max_size=1)),
            },
        }
    if kind == "move_to":
        return {"id": step_id, "move_to": draw(st.sampled_from(stage_ids))}
    if kind == "webhook":
        return {
            "id": step_id,
            "webhook": {"url": "https://crm.example.com/hook", "payload": {"step": step_id}},
        }
    return {"id": step_id, "exit": "not-a-fit"}


def clock_times() -> st.SearchStrategy[str]:
    # Hours 0-4 are over-represented: that is where DST gaps and overlaps are.
    hours = st.one_of(st.integers(0, 4), st.integers(0, 23))
    minutes = st.sampled_from((0, 15, 30, 59))
    return st.builds(lambda h, m: f"{h:02d}:{m:02d}", hours, minutes)


@st.composite
def send_windows(draw: st.DrawFn) -> dict[str, Any]:
    start_h = draw(st.one_of(st.integers(0, 4), st.integers(0, 22)))
    start_m = draw(st.sampled_from((0, 30)))
    end_h = draw(st.integers(start_h + 1, 23))
    end_m = draw(st.sampled_from((0, 30, 59)))
    return {
        "days": draw(st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True)),
        "start": f"{start_h:02d}:{start_m:02d}",
        "end": f"{end_h:02d}:{end_m:02d}",
    }


@st.composite
def funnel_dicts(draw: st.DrawFn) -> dict[str, Any]:
    n_stages = draw(st.integers(1, 5))
    stage_ids = [f"stage-{i}" for i in range(n_stages)]
    stages: list[dict[str, Any]] = []
    for i, stage_id in enumerate(stage_ids):
        n_steps = draw(st.integers(0, 6))
        # Step ids are unique within the funnel, as validation requires.
        step_ids = [f"s{i}-{j}" for j in range(n_steps)]
        stage: dict[str, Any] = {
            "id": stage_id,
            "steps": [draw(steps(step_id, step_ids, stage_ids)) for step_id in step_ids],
        }
        on_end = draw(st.sampled_from(("next", "stay", "exit", "move")))
        stage["on_end"] = {"move_to": draw(st.sampled_from(stage_ids))} if on_end == "move" else on_end
        stages.append(stage)
    transitions: list[dict[str, Any]] = []
    for k in range(draw(st.integers(0, 3))):
        t: dict[str, Any] = {"id": f"t{k}", "to": draw(st.sampled_from(stage_ids))}
        if draw(st.booleans()):
            t["from"] = draw(st.lists(st.sampled_from(stage_ids), min_size=1, max_size=2, unique=True))
        if draw(st.booleans()):
            t["on"] = draw(event_matches())
        else:
            t["after"] = draw(st.sampled_from(DURATIONS))
        if draw(st.integers(0, 3)) == 0:
            t["if"] = draw(conditions(1))
        transitions.append(t)
    funnel: dict[str, Any] = {
        "id": "random",
        "name": "Random",
        "timezone": draw(st.sampled_from(ZONES)),
        "allowed_lateness": draw(st.sampled_from(("1h", "1d", "3d"))),
        "entry": {
            "triggers": [{"event": "form_submitted"}],
            "stage": draw(st.sampled_from(stage_ids)),
            "reentry": draw(st.sampled_from(("never", "after_exit"))),
        },
        "stages": stages,
        "transitions": transitions,
    }
    if funnel["entry"]["reentry"] == "after_exit" and draw(st.booleans()):
        funnel["entry"]["cooldown"] = draw(st.sampled_from(DURATIONS))
    if draw(st.booleans()):
        funnel["send_window"] = draw(send_windows())
    if draw(st.booleans()):
        goal: dict[str, Any] = {"event": draw(st.sampled_from(EVENT_NAMES))}
        if draw(st.booleans()):
            goal["within"] = draw(st.sampled_from(DURATIONS[1:]))
        choice = draw(st.sampled_from(("none", "move", "exit")))
        if choice == "move":
            goal["move_to"] = draw(st.sampled_from(stage_ids))
        elif choice == "exit":
            goal["exit"] = True
        funnel["goal"] = goal
    if draw(st.booleans()):
        funnel["exits"] = [{**draw(event_matches()), "reason": "opted-out"}]
    return funnel


def funnels() -> st.SearchStrategy[Funnel]:
    return funnel_dicts().map(Funnel.model_validate)


# --------------------------------------------------------------------------------------------------
# Leads and inputs
# --------------------------------------------------------------------------------------------------


@st.composite
def leads(draw: st.DrawFn) -> Lead:
    attributes: dict[str, Any] = {}
    if draw(st.booleans()):
        attributes["plan"] = draw(st.sampled_from(("pro", "free", 1)))
    if draw(st.booleans()):
        attributes["company"] = "Acme"
    return Lead(
        id="ada@example.com",
        timezone=draw(st.one_of(st.none(), st.sampled_from(ZONES))),
        attributes=attributes,
        tags=frozenset(draw(st.lists(st.sampled_from(TAGS), max_size=2))),
        score=draw(st.integers(-1, 4)),
        consent=draw(st.sampled_from(("subscribed", "subscribed", "subscribed", "unsubscribed"))),
    )


def start_times() -> st.SearchStrategy[datetime]:
    """A moment in 2026, usually a few days before a DST change."""
    near_dst = st.builds(
        lambda day, minutes: day - timedelta(days=3) + timedelta(minutes=minutes),
        st.sampled_from(DST_DAYS_2026),
        st.integers(0, 6 * 24 * 60),
    )
    anywhere = st.integers(0, 364 * 24 * 60).map(lambda m: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=m))
    return st.one_of(near_dst, anywhere)


InputKind = Literal["tick", "wake", "event", "enter"]


@dataclass(frozen=True)
class Input:
    """One thing that happens to a lead, `gap` after the previous one. `wake` ticks the clock exactly
    when the core asked to be woken (if later than the previous input); `tick` at an arbitrary moment;
    `enter` is the entry event again (re-entry when the lead has left)."""

    kind: InputKind
    gap: timedelta
    name: str = ""
    properties: tuple[tuple[str, str], ...] = ()


@st.composite
def inputs(draw: st.DrawFn) -> Input:
    kind: InputKind = draw(st.sampled_from(("tick", "wake", "wake", "event", "event", "enter")))
    gap = draw(st.sampled_from(GAPS))
    if kind != "event":
        return Input(kind, gap)
    name = draw(st.sampled_from(EVENT_NAMES))
    props = (("link", draw(st.sampled_from(LINKS))),) if draw(st.booleans()) else ()
    return Input(kind, gap, name, props)


def input_streams() -> st.SearchStrategy[list[Input]]:
    return st.lists(inputs(), min_size=1, max_size=25)


def entry_event(event_id: str, at: datetime) -> Event:
    return Event(event_id, "form_submitted", at)


# --------------------------------------------------------------------------------------------------
# Addresses as people and systems type them
# --------------------------------------------------------------------------------------------------

# Plain and odd local parts, ASCII and Unicode domains, special-use names, case, padding, display names
# and lists: what the entries must all accept, or all refuse, alike.
_LOCALS = ("ann", "Ann.Lee", "o'neil", "a+tag", "josé", "x" * 64, "x" * 65, "a..b", ".a", '"q"', "")
_DOMAINS = (
    "example.com", "Example.COM", "bücher.example", "xn--bcher-kva.example", "straße.example", "example.test",
    "localhost", "a.local", "-bad.example", "exa_mple.com", "ＥＸＡＭＰＬＥ.com", "x.y", "", "[192.0.2.1]",
    "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + ".example", "пример.example", "ex\u00adample.com",
)  # fmt: skip
_PADDING = ("", " ", "\t", "\n", "\u00a0", "\u3000")


@st.composite
def address_like(draw: st.DrawFn) -> str:
    core = f"{draw(st.sampled_from(_LOCALS))}@{draw(st.sampled_from(_DOMAINS))}"
    shape = draw(st.sampled_from(["bare", "named", "list", "upper"]))
    if shape == "named":
        core = f"Someone <{core}>"
    elif shape == "list":
        core = f"{core}, other@example.com"
    elif shape == "upper":
        core = core.upper()
    return draw(st.sampled_from(_PADDING)) + core + draw(st.sampled_from(_PADDING))


def address_texts() -> st.SearchStrategy[str]:
    """Text an entry may be given as an address: address-like, well-formed, or anything at all (no lone
    surrogates, which no UTF-8 request, file or command line can carry)."""
    anything = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=80)
    return st.one_of(address_like(), st.emails(), anything)
