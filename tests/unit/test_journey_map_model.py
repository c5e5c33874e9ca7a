"""The customer journey map's model and its Markdown: built from the example funnel and from small
funnels written here; live figures given as the rows the database would return."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.authoring.validation import load_funnels
from engine.core.definition import Funnel
from engine.core.report_rows import ExitRow
from engine.views.journey_map import markdown as journey_map_md
from engine.views.journey_map import model as journey_map
from engine.views.journey_map.model import ANY_STAGE, Live
from engine.views.report import EmailFigures, FunnelReport, StageFigures

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 11, 2, 9, tzinfo=UTC)


@pytest.fixture(scope="module")
def example() -> Funnel:
    loaded = load_funnels([ROOT / "funnels" / "lead-magnet.yaml"], emails_dir=None)
    assert loaded.ok, loaded.errors
    return loaded.funnels[0]


def funnel(text: str) -> Funnel:
    return Funnel.model_validate(yaml.safe_load(text))


def test_stages_are_columns_in_order_with_the_personas_notes(example: Funnel) -> None:
    m = journey_map.build(example, {})
    assert [c.stage for c in m.columns] == ["inquiry", "comparison", "conversion", "onboarding", "advocacy"]
    assert m.persona is not None and m.persona.id == "facilities-manager"
    for column, stage in zip(m.columns, example.stages, strict=True):
        assert column.notes is not None and column.notes == stage.journey
        assert column.notes.question and column.notes.needs and column.notes.goal
    assert m.columns[1].notes is not None
    assert m.columns[1].notes.question == "What are they looking for in an environmental consultancy?"


def test_each_email_says_when_it_goes(example: Funnel) -> None:
    subjects = {"lead-magnet/hidden-costs": "The bin you're paying for twice"}
    when = {t.step: t.when for c in journey_map.build(example, subjects).columns for t in c.touchpoints}
    assert when["deliver-report"] == ("on entering the stage",)
    assert when["nurture-benefits"] == ("next weekday 09:00 after entering the stage",)
    assert when["nurture-hidden-costs"] == ("2 days after nurture-benefits",)
    # After the café case study the second branch always skips the manufacturer's: that way is left out.
    assert when["case-study-manufacturer"] == ("2 days after nurture-hidden-costs",)
    assert set(when["nurture-choosing"]) == {"3 days after case-study-cafe", "3 days after case-study-manufacturer"}
    assert when["call-reminder"] == ("3 days without email_clicked after invite-to-call",)
    assert when["first-month-check-in"] == ("28 days after kickoff-checklist",)
    comparison = journey_map.build(example, subjects).columns[1]
    hidden = next(t for t in comparison.touchpoints if t.step == "nurture-hidden-costs")
    assert hidden.subject == "The bin you're paying for twice" and hidden.template == "lead-magnet/hidden-costs"
    assert not hidden.transactional


def test_moves_in_and_out_carry_their_triggers(example: Funnel) -> None:
    columns = {c.stage: c for c in journey_map.build(example, {}).columns}
    ins = {(x.source, x.trigger) for x in columns["conversion"].ins}
    assert ("comparison", "when its sequence ends") in ins
    assert ("inquiry", "on email_clicked (link: pricing, book-call)") in ins
    outs = columns["conversion"].outs
    leave = next(x for x in outs if x.target is None)
    assert leave.exit_reason == "no-reply" and leave.step == "await-reminder-click"
    assert "after 5 days without email_clicked" in leave.trigger
    assert columns["conversion"].end == ("stay", "conversion")
    onboarding_in = columns["onboarding"].ins
    assert [(x.kind, x.source) for x in onboarding_in] == [("goal", ANY_STAGE)]
    assert "purchase_completed" in onboarding_in[0].trigger
    assert columns["advocacy"].end == ("exit", "sequence-end")
    entry = columns["inquiry"].ins[0]
    assert (
        entry.kind == "entry"
        and entry.source is None
        and "form_submitted (form: cost-of-not-recycling)" in entry.trigger
    )


def test_ways_through_branches_and_loops_end() -> None:
    looping = funnel("""
id: loop
name: Loop
entry: {triggers: [{manual: true}]}
stages:
  - id: inquiry
    steps:
      - {id: hello, send: x/hello}
      - {id: pause, wait: 1d}
      - {id: again, branch: {if: {attr: score, lt: 5}, then: {goto: hello}}}
      - {id: update, update: {score: 1}}
      - {id: check, branch: {if: {attr: score, lt: 5}, then: {goto: bye}, else: {exit: done}}}
      - {id: bye, send: x/bye}
""")
    (column,) = journey_map.build(looping, {}).columns
    when = {t.step: t.when for t in column.touchpoints}
    assert when["hello"] == ("on entering the stage",)
    # The update may change the score, so the second test may go either way.
    assert when["bye"] == ("1 day after hello",)
    assert column.outs[0].exit_reason == "done"


def live(report: FunnelReport | None, *exits: ExitRow) -> Live:
    return Live(report, exits, AT)


def figures(step: str, delivered: int, opened: int, clicked: int) -> EmailFigures:
    return EmailFigures(step, "t", 0, delivered, delivered, 0, 0, 0, 0, opened, clicked, 0)


def test_drop_off_says_why_and_after_which_email(example: Funnel) -> None:
    rows = [
        ExitRow("lead-magnet", "comparison", "unsubscribed", "exit_rule", False, "nurture-hidden-costs", 4),
        ExitRow("lead-magnet", "comparison", "unsubscribed", "event", False, "nurture-hidden-costs", 1),
        ExitRow("lead-magnet", "comparison", "unsubscribed", "exit_rule", False, "nurture-benefits", 2),
        ExitRow("lead-magnet", "inquiry", "bounced", "bounce", False, "deliver-report", 3),
        ExitRow("lead-magnet", "conversion", "no-reply", "timeout", False, "call-reminder", 6),
        ExitRow("lead-magnet", "conversion", "refunded", "exit_rule", True, None, 1),
        # Journeys that ended, not drop-outs: the goal reached, the last stage run to its end.
        ExitRow("lead-magnet", "advocacy", "sequence-end", "sequence_end", True, "referral-ask", 9),
        ExitRow("other-funnel", "comparison", "unsubscribed", "exit_rule", False, "nurture-benefits", 50),
    ]
    report = FunnelReport(
        "lead-magnet",
        20,
        10,
        {},
        [StageFigures("comparison", 5, 12, "conversion", 0.5, 6, 3000, 4000)],
        [figures("nurture-hidden-costs", 10, 5, 2)],
    )
    columns = {c.stage: c for c in journey_map.build(example, {}, live(report, *rows)).columns}
    comparison = columns["comparison"]
    assert [(d.kind, d.after, d.leads) for d in comparison.drop_offs] == [
        ("unsubscribed", "nurture-hidden-costs", 5),
        ("unsubscribed", "nurture-benefits", 2),
    ]
    assert comparison.pain_point == "nurture-hidden-costs"
    hidden = next(t for t in comparison.touchpoints if t.step == "nurture-hidden-costs")
    assert (hidden.dropped_after, hidden.open_rate, hidden.click_rate) == (5, 0.5, 0.2)
    assert comparison.figures is not None and comparison.figures.reached == 12
    assert [(d.kind, d.reason) for d in columns["inquiry"].drop_offs] == [("bounced", "bounced")]
    assert [(d.kind, d.reason, d.after) for d in columns["conversion"].drop_offs] == [
        ("timed out", "no-reply", "call-reminder"),
        ("left", "refunded", None),
    ]
    assert columns["advocacy"].drop_offs == ()
    assert columns["inquiry"].figures is None  # no figures for a stage nobody reached


def test_drop_kind() -> None:
    def kind(reason: str, cause: str, goal: bool = False, has_goal: bool = True) -> str | None:
        return journey_map.drop_kind(ExitRow("f", "s", reason, cause, goal, None, 1), has_goal)

    assert kind("sequence-end", "sequence_end") == "goal missed"
    assert kind("completed", "sequence_end", goal=True) is None
    assert kind("completed", "sequence_end", has_goal=False) is None
    assert kind("goal-reached", "goal") is None
    assert kind("no-reply", "timeout") == "timed out"
    assert kind("unsubscribed", "event") == "unsubscribed"
    assert kind("not-a-fit", "step") == "left"


# --------------------------------------------------------------------------------------------------
# Markdown and Mermaid
# --------------------------------------------------------------------------------------------------

AWKWARD = """
id: awkward
name: Quotes "and" | pipes
entry: {triggers: [{event: signed_up, where: {plan: [a, b]}}]}
stages:
  - id: inquiry
    journey: {question: 'Is <b>this</b> #1 | "the" one?', needs: [a | b]}
    steps:
      - {id: hello, send: x/hello}
      - {id: wait-for-click, wait_for: {event: email_clicked, timeout: 2d, on_timeout: {exit: no-click}}}
      - {id: fit, branch: {if: {attr: employees, gte: 50}, then: {move_to: sales}, else: {exit: not-a-fit}}}
  - id: sales
transitions:
  - {id: anywhere-demo, to: sales, "on": {event: demo_booked}}
  - {id: slow, from: inquiry, to: sales, after: 10d, if: {has_tag: vip}}
exits:
  - {event: unsubscribed, reason: unsubscribed}
"""


def mermaid_graph(lines: list[str]) -> tuple[set[str], list[tuple[str, str]], list[str]]:
    """(declared node and subgraph ids, edges, labels) of the flowchart this module writes."""
    declared: set[str] = set()
    edges: list[tuple[str, str]] = []
    labels: list[str] = []
    for line in lines[1:]:
        text = line.strip()
        if text in ("end", "direction TB"):
            continue
        edge = re.fullmatch(r'(\w+) (-->|-\.->)(?:\|"([^"]*)"\|)? (\w+)', text)
        if edge:
            edges.append((edge.group(1), edge.group(4)))
            labels.append(edge.group(3) or "")
            continue
        node = re.fullmatch(
            r'(?:subgraph )?(\w+)(\[\[|\[/|\[|\(\[|\(\(|\(|\{\{|\{|>)"([^"]*)"(\]\]|/\]|\]|\]\)|\)\)|\)|\}\}|\})?', text
        )
        assert node, f"not a node, subgraph or edge: {text!r}"
        declared.add(node.group(1))
        labels.append(node.group(3))
    return declared, edges, labels


def test_the_mermaid_diagram_has_every_stage_step_and_way() -> None:
    m = journey_map.build(funnel(AWKWARD), {"x/hello": 'Say "hi" & <wave> | #1'})
    lines = journey_map_md.mermaid(m)
    assert lines[0] == "flowchart TD"
    declared, edges, labels = mermaid_graph(lines)
    assert {"st_inquiry", "st_sales"} <= declared
    assert {"n_hello", "n_wait_for_click", "n_fit"} <= declared
    assert "n_sales__empty" in declared  # a stage without steps still shows
    assert {target for _, target in edges} | {source for source, _ in edges} <= declared
    assert ("n_hello", "n_wait_for_click") in edges
    assert ("n_wait_for_click", "x_no_click") in edges and ("n_fit", "st_sales") in edges
    assert ("n_fit", "x_not_a_fit") in edges
    assert ("anywhere", "st_sales") in edges and ("anywhere", "x_unsubscribed") in edges
    assert ("st_inquiry", "st_sales") in edges and ("entry", "st_inquiry") in edges
    for label in labels:
        assert '"' not in label and "<" not in label and "|" not in label
    assert any("Say #quot;hi#quot; & #lt;wave#gt; #124; #35;1" in label for label in labels)
    assert "after 10 days in the stage if tagged vip" in " ".join(labels)


def test_markdown_has_a_column_per_stage_and_the_diagram(example: Funnel) -> None:
    subjects = {"lead-magnet/report-delivery": "Your report: The real cost of not recycling"}
    text = journey_map_md.render(journey_map.build(example, subjects))
    header = next(line for line in text.splitlines() if line.startswith("| | "))
    assert [h.strip(" *") for h in header.strip("|").split("|")[1:]] == [s.title for s in example.stages]
    for stage in example.stages:
        assert stage.journey is not None and stage.journey.question in text
    assert "Your report: The real cost of not recycling" in text
    assert "## Persona: Fiona, facilities manager (`facilities-manager`)" in text
    assert text.count("```mermaid\nflowchart TD\n") == 1
    rows = [line for line in text.splitlines() if line.startswith("| **")]
    cells = {len(re.split(r"(?<!\\)\|", row)) for row in rows}
    assert cells == {len(example.stages) + 3}, "every row has a cell per stage (pipes in text escaped)"


def test_markdown_escapes_table_text() -> None:
    text = journey_map_md.render(journey_map.build(funnel(AWKWARD), {}))
    question = next(line for line in text.splitlines() if line.startswith("| **Question**"))
    assert question == '| **Question** | Is &lt;b&gt;this&lt;/b&gt; #1 \\| "the" one? |  |'


def test_markdown_with_figures(example: Funnel) -> None:
    report = FunnelReport(
        "lead-magnet", 3, 2, {"unsubscribed": 1}, [StageFigures("inquiry", 2, 3, "comparison", 1 / 3, 1, 90, 90)], []
    )
    rows: Any = [ExitRow("lead-magnet", "inquiry", "unsubscribed", "exit_rule", False, "deliver-report", 1)]
    text = journey_map_md.render(journey_map.build(example, {}, live(report, *rows)))
    assert "3 leads entered, 2 in a stage, exited: 1 unsubscribed" in text
    assert "| **Leads now** | 2 | 0 | 0 | 0 | 0 |" in text
    assert "| **On to next stage** | 33% to comparison | - | - | - | - |" in text
    assert "| unsubscribed | unsubscribed | deliver-report | 1 |" in text
