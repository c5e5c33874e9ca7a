"""The customer journey map as Markdown: the persona, a table with one column per stage (the persona's
question, needs, feelings and preferred content, the emails, the moves in and out, and with live
figures the leads, conversion, median stay and drop-off), each stage's emails, and the funnel's graph as
a Mermaid flowchart, so a pull request that edits a funnel shows the change as a picture."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from engine.core.durations import stay_in_words
from engine.views.journey_map.experiments import ExperimentView, arm_words
from engine.views.journey_map.model import ANY_STAGE, Column, JourneyMap, Move, StepView, Target, Touchpoint


def render(m: JourneyMap) -> str:
    out = [f"# Journey map: {_text(m.name)} (`{m.funnel}`)", ""]
    if m.description:
        out += [_text(m.description), ""]
    out += [_live_line(m), ""]
    if m.languages:
        out += [
            f"Languages: {', '.join(m.languages)} (the default first). Each email says the ones it is written in;"
            " a ~~struck-through~~ language reads another one of its lookup chain.",
            "",
        ]
    if m.persona is not None:
        p = m.persona
        out += [f"## Persona: {_text(p.name)} (`{p.id}`)", ""]
        if p.description:
            out += [_text(p.description), ""]
        for title, items in (("Goals", p.goals), ("Pains", p.pains)):
            if items:
                out += [f"**{title}**", "", *[f"- {_text(i)}" for i in items], ""]
    out += ["## How leads enter, move on and leave", ""]
    out.append(f"- **Enter** ({m.entry_stage}): {_text(' or '.join(m.entry))}")
    if m.goal:
        out.append(f"- **Goal**: {_text(m.goal)}")
    if m.send_window:
        out.append(f"- **Marketing emails go out** on {_text(m.send_window)}; transactional ones at once")
    leave = "; ".join(f"{x.exit_reason} {x.trigger}" for x in m.exits)
    out += [f"- **Leave from any stage**: {_text(leave)}", ""]
    out += ["## Stages", "", *_stage_table(m), ""]
    for c in m.columns:
        out += [f"### {_text(c.title)} (`{c.stage}`)", ""]
        if c.description:
            out += [_text(c.description), ""]
        out += [*_email_table(c, m.live is not None, m.languages), ""]
        for e in c.experiments:
            out += [*_experiment_table(e), ""]
        if c.drop_offs:
            out += ["| Dropped out | Reason | After email | Leads |", "|---|---|---|--:|"]
            out += [f"| {d.kind} | {d.reason} | {d.after or '(before any)'} | {d.leads} |" for d in c.drop_offs]
            out.append("")
    out += ["## Journey diagram", "", "```mermaid", *mermaid(m), "```", ""]
    return "\n".join(out)


def _live_line(m: JourneyMap) -> str:
    if m.live is None:
        return f"Drawn from the funnel file (version `{m.version}`); `funnel map --live` adds the figures."
    at = m.live.at.strftime("%Y-%m-%d %H:%M UTC")
    r = m.live.report
    if r is None:
        return f"Version `{m.version}`. Figures as of {at}: no lead has entered this funnel yet."
    exited = ", ".join(f"{n} {reason}" for reason, n in r.exited.items()) or "none"
    whose = f" of the leads in {m.language}" if m.language else ""
    return (
        f"Version `{m.version}`. Figures{whose} as of {at}: {r.leads} leads entered, {r.active} in a stage,"
        f" exited: {exited}."
    )


def _stage_table(m: JourneyMap) -> list[str]:
    cols = m.columns
    rows: list[tuple[str, list[str]]] = [
        ("Question", [_text(c.notes.question) if c.notes and c.notes.question else "" for c in cols]),
        ("Needs", [_items(c.notes.needs if c.notes else ()) for c in cols]),
        ("Feelings", [_items(c.notes.feelings if c.notes else ()) for c in cols]),
        ("Preferred content", [_items(c.notes.content if c.notes else ()) for c in cols]),
        ("Our goal", [_text(c.notes.goal) if c.notes and c.notes.goal else "" for c in cols]),
        ("Emails", [_items(_touchpoint(t, m.languages) for t in c.touchpoints) for c in cols]),
        ("Experiments", [_items(_experiment(e) for e in c.experiments) for c in cols]),
        ("In", [_items(_move_in(x) for x in c.ins) for c in cols]),
        ("Out", [_items(_move_out(x) for x in c.outs) for c in cols]),
    ]
    if m.live is not None:
        rows += [
            ("Leads now", [str(c.figures.now) if c.figures else "0" for c in cols]),
            ("Reached", [str(c.figures.reached) if c.figures else "0" for c in cols]),
            ("On to next stage", [_conversion(c) for c in cols]),
            ("Median stay", [stay_in_words(c.figures.median_minutes) if c.figures else "-" for c in cols]),
            ("Dropped out", [_items(f"{d.leads} {d.kind}" for d in c.drop_offs) for c in cols]),
        ]
    rows = [(title, cells) for title, cells in rows if any(cells)]
    head = "| | " + " | ".join(f"**{_text(c.title)}**" for c in cols) + " |"
    rule = "|---|" + "---|" * len(cols)
    return [head, rule, *(f"| **{title}** | " + " | ".join(cells) + " |" for title, cells in rows)]


def _conversion(c: Column) -> str:
    f = c.figures
    if f is None or f.conversion is None or f.next_stage is None:
        return "-"
    return f"{f.conversion:.0%} to {f.next_stage}"


def _touchpoint(t: Touchpoint, languages: Sequence[str]) -> str:
    subject = _text(t.subject) if t.subject else f"`{t.template}`"
    return f"{subject} ({t.step}; {_text(' or '.join(t.when) or 'not reached')}){_languages(t, languages)}"


def _languages(t: Touchpoint, languages: Sequence[str]) -> str:
    """` [en-GB de ~~fr~~]`: the funnel's languages, struck through where the email is not written in it."""
    if not languages:
        return ""
    return " [" + " ".join(lang if lang in t.languages else f"~~{lang}~~" for lang in languages) + "]"


def _experiment(e: ExperimentView) -> str:
    arms = ", ".join(arm_words(a) for a in e.arms)
    state = f"; {e.state}" if e.state else ""
    return _text(f"experiment {e.id} ({e.kind} at {e.step}): {arms}{state}")


def _experiment_table(e: ExperimentView) -> list[str]:
    """One experiment: what it is, what it counts, and per arm its share, what it gets and its leads."""
    what = "split: each arm a path of steps" if e.kind == "split" else "variant send: each arm a template"
    head = [f"**Experiment `{e.id}`** at step `{e.step}` ({what}); counts {_text(e.metric)}.", ""]
    if e.state:
        head[0] += f" {_text(e.state[0].upper() + e.state[1:])}."
    live = any(a.leads is not None for a in e.arms)
    rows = ["| Arm | Share | Gets | Leads |" if live else "| Arm | Share | Gets |", "|---|--:|---|--:|"]
    if not live:
        rows[1] = "|---|--:|---|"
    for a in e.arms:
        marks = [m for m, on in (("control", a.control), ("holdout", a.holdout), ("winner", a.winner)) if on]
        name = a.id + (f" ({', '.join(marks)})" if marks else "")
        if e.kind == "split":
            gets = "nothing from the split" if a.holdout else "the path " + " → ".join(a.path or (a.goto or "",))
            gets += f", then on at {a.goto}" if a.holdout and a.goto else ""
        else:
            gets = f"{a.subject} ({a.template})" if a.subject else str(a.template)
        cells = [name, f"{a.share:.0%}", _text(gets)] + ([str(a.leads)] if live else [])
        rows.append("| " + " | ".join(cells) + " |")
    return head + rows


def _move_in(x: Move) -> str:
    source = "entry" if x.source is None else "any stage" if x.source == ANY_STAGE else x.source
    return _text(f"from {source}: {x.trigger}")


def _move_out(x: Move) -> str:
    target = f"leaves ({x.exit_reason})" if x.target is None else f"to {x.target}"
    return _text(f"{target}: {x.trigger}")


def _email_table(c: Column, live: bool, languages: Sequence[str] = ()) -> list[str]:
    if not c.touchpoints:
        return ["No emails in this stage."]
    if not live:
        head = ["| Email | Subject | When |", "|---|---|---|"]
        return head + [
            f"| {t.step} | {_text(t.subject or t.template)}{_languages(t, languages)} | {_text(' or '.join(t.when))} |"
            for t in c.touchpoints
        ]
    head = [
        "| Email | Subject | When | Delivered | Opened | Clicked | Dropped out after |",
        "|---|---|---|--:|--:|--:|--:|",
    ]
    lines = []
    for t in c.touchpoints:
        f = t.figures
        pain = " (most)" if c.pain_point == t.step else ""
        lines.append(
            f"| {t.step} | {_text(t.subject or t.template)}{_languages(t, languages)} | {_text(' or '.join(t.when))}"
            f" | {f.delivered if f else 0}"
            f" | {_rate(t.open_rate)} | {_rate(t.click_rate)} | {t.dropped_after}{pain} |"
        )
    return head + lines


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _items(items: Iterable[str]) -> str:
    return "<br>".join(f"• {i}" for i in items)


def _text(value: str) -> str:
    """Text for a Markdown table cell: one line, pipes escaped, no HTML."""
    text = " ".join(value.split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


# --------------------------------------------------------------------------------------------------
# The Mermaid flowchart: stages as boxes of their steps, moves as arrows, exits as end points
# --------------------------------------------------------------------------------------------------

_SHAPES = {
    "send": ('["', '"]'),
    "wait": ('("', '")'),
    "wait_for": ('{{"', '"}}'),
    "branch": ('{"', '"}'),
    "update": ('[["', '"]]'),
    "webhook": ('[/"', '"/]'),
    "move": ('>"', '"]'),
    "exit": ('>"', '"]'),
    "split": ('[/"', '"\\]'),
    "variant": ('[\\"', '"\\]'),
}


def mermaid(m: JourneyMap) -> list[str]:
    """The funnel's graph: a subgraph per stage holding its steps in order, an arrow per way on (labelled
    with its trigger), entry and "any stage" as start points, exits as end points."""
    lines = ["flowchart TD", f'  entry(["{_label("enter: " + " or ".join(m.entry))}"])']
    ends: dict[str, str] = {}
    edges: list[str] = []
    stages = {c.stage for c in m.columns}
    for c in m.columns:
        lines.append(f'  subgraph {_stage_id(c.stage)}["{_label(c.title)}"]')
        lines.append("    direction TB")
        steps: Sequence[StepView] = c.steps
        if not steps:
            # "--" is in no id, so the placeholder cannot meet a step's node.
            steps = (StepView(f"{c.stage}--empty", "wait", "no steps", ((c.end, ""),) if c.end else ()),)
        for s in steps:
            left, right = _SHAPES[s.kind]
            lines.append(f"    {_node_id(s.id)}{left}{_label(s.label)}{right}")
        lines.append("  end")
        for s in steps:
            for way, label in s.next:
                edges.append(_edge(_node_id(s.id), _target(way, ends), label))
    for x in m.moves:
        if x.kind in ("sequence_end", "step"):
            continue  # drawn from the steps above
        if x.kind == "entry":
            source = "entry"
        elif x.source == ANY_STAGE:
            source = "anywhere"
        elif x.source in stages:
            source = _stage_id(x.source)
        else:
            continue
        to = _stage_id(x.target) if x.target is not None else _target(("exit", x.exit_reason or "exited"), ends)
        edges.append(_edge(source, to, x.trigger, dotted=x.source == ANY_STAGE))
    if any(x.source == ANY_STAGE for x in m.moves):
        lines.append('  anywhere(("any stage"))')
    lines += [f'  {node}(["{_label(label)}"])' for node, label in ends.items()]
    marked = [_node_id(s.id) for c in m.columns for s in c.steps if s.kind in ("split", "variant")]
    if marked:
        # Experiments stand out from ordinary branches and sends.
        lines += [
            "  classDef experiment fill:#fff4d6,stroke:#b26b00,stroke-width:2px",
            f"  class {','.join(marked)} experiment",
        ]
    return lines + edges


def _target(target: Target, ends: dict[str, str]) -> str:
    """The node a way leads to; an end point (an exit, a stay) is noted in `ends` (node -> label)."""
    kind, ident = target
    if kind == "step":
        return _node_id(ident)
    if kind == "stage":
        return _stage_id(ident)
    if kind == "stay":
        ends.setdefault(f"y_{_safe(ident)}", f"stays in {ident} until an event moves it on")
        return f"y_{_safe(ident)}"
    ends.setdefault(_exit_id(ident), f"exit: {ident}")
    return _exit_id(ident)


def _edge(source: str, target: str, label: str, dotted: bool = False) -> str:
    arrow = "-.->" if dotted else "-->"
    return f'  {source} {arrow}|"{_label(label)}"| {target}' if label else f"  {source} {arrow} {target}"


def _safe(ident: str) -> str:
    return re.sub(r"[^a-z0-9]", "_", ident.lower())


def _stage_id(stage: str) -> str:
    return f"st_{_safe(stage)}"


def _node_id(step: str) -> str:
    return f"n_{_safe(step)}"


def _exit_id(reason: str) -> str:
    return f"x_{_safe(reason)}"


def _label(text: str) -> str:
    """Text inside a quoted Mermaid label: quotes and markup characters as Mermaid's entity codes."""
    text = " ".join(text.split())
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("|", "#124;")):
        text = text.replace(char, code)
    return text


__all__ = ["mermaid", "render"]
