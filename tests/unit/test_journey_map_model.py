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
    leave, let_go = (x for x in outs if x.target is None)
    assert leave.exit_reason == "no-reply" and leave.step == "await-reminder-click"
    assert "after 5 days without email_clicked" in leave.trigger
    assert (let_go.exit_reason, let_go.step) == ("no-purchase", "no-purchase")
    # The sequence ends in an exit step: it never runs past it, so no move "when its sequence ends".
    assert columns["conversion"].end is None and not [x for x in outs if x.kind == "sequence_end"]
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


EXPERIMENTS = """
id: ab
name: A/B
entry: {triggers: [{event: signed_up}]}
stages:
  - id: nurture
    steps:
      - id: welcome
        send: drip/welcome
        experiment:
          id: subject
          arms:
            - {id: plain}
            - {id: teaser, send: drip/teaser, weight: 3}
          metric: {click: "*", within: 3d}
          decide: {min_per_arm: 100, promote: auto}
      - id: pace
        split:
          id: nurture-pace
          arms:
            - {id: weekly, goto: weekly-wait, weight: 2}
            - {id: daily, goto: daily-tip}
            - {id: none, holdout: true, goto: summary}
          metric: {goal: true, within: 30d}
          decide: {min_per_arm: 100, promote: manual}
      - {id: weekly-wait, wait: 7d}
      - {id: weekly-tip, send: drip/weekly, }
      - {id: weekly-done, branch: {if: {has_tag: x}, then: {goto: summary}, else: {goto: summary}}}
      - {id: daily-tip, send: drip/daily}
      - {id: summary, send: drip/summary}
    on_end: stay
goal: {event: bought}
"""
HOSTILE = "<script>x</script> | **bold**"


def experiment_map(live: Live | None = None) -> journey_map.JourneyMap:
    subjects = {"drip/welcome": "Welcome", "drip/teaser": HOSTILE}
    return journey_map.build(funnel(EXPERIMENTS), subjects, live)


def test_a_split_is_marked_as_an_experiment_with_its_arms_shares_and_holdout() -> None:
    (column,) = experiment_map().columns
    steps = {s.id: s for s in column.steps}
    assert steps["pace"].kind == "split" and steps["pace"].label == "experiment nurture-pace: split into 3 arms"
    assert [label for _, label in steps["pace"].next] == [
        "arm weekly 50%",
        "arm daily 25%",
        "arm none 25% (control, holdout)",
    ]
    assert steps["welcome"].kind == "variant"
    variant, split = column.experiments
    assert (variant.kind, variant.step, split.kind, split.step) == ("variant send", "welcome", "split", "pace")
    assert [(a.id, a.share, a.template, a.subject) for a in variant.arms] == [
        ("plain", 0.25, "drip/welcome", "Welcome"),
        ("teaser", 0.75, "drip/teaser", HOSTILE),
    ]
    assert [(a.id, a.path, a.holdout, a.control) for a in split.arms] == [
        ("weekly", ("weekly-wait", "weekly-tip", "weekly-done"), False, False),
        ("daily", ("daily-tip",), False, False),
        ("none", (), True, True),
    ]
    assert column.touchpoints[0].experiment is variant
    assert variant.state == "" and all(a.leads is None for a in variant.arms)


def test_live_arms_show_their_leads_and_a_decided_experiment_its_winner() -> None:
    from engine.views.journey_map.experiments import Decided

    live = Live(
        None,
        [],
        AT,
        {("subject", "plain"): 12, ("subject", "teaser"): 30, ("nurture-pace", "weekly"): 7},
        {"subject": Decided("teaser", "auto", AT, "engine")},
    )
    m = experiment_map(live)
    variant, split = m.columns[0].experiments
    assert [(a.leads, a.winner) for a in variant.arms] == [(12, False), (30, True)]
    assert variant.state == "decided (auto) 2026-11-02 by engine: new leads get teaser"
    assert [a.leads for a in split.arms] == [7, 0, 0] and split.state == "not decided yet"
    md = journey_map_md.render(m)
    assert "| teaser (winner) | 75% | &lt;script&gt;x&lt;/script&gt; \\| **bold** (drip/teaser) | 30 |" in md
    assert "| none (control, holdout) | 25% | nothing from the split, then on at summary | 0 |" in md
    assert "| weekly | 50% | the path weekly-wait → weekly-tip → weekly-done | 7 |" in md
    assert "Decided (auto) 2026-11-02 by engine: new leads get teaser." in md
    assert "<script>" not in md
    graph = "\n".join(journey_map_md.mermaid(m))
    assert 'n_pace[/"experiment nurture-pace: split into 3 arms"\\]' in graph
    assert '-->|"arm weekly 50%: 7 leads"| n_weekly_wait' in graph
    assert "class n_welcome,n_pace experiment" in graph
    assert "<script>" not in graph


def test_the_html_map_escapes_what_experiments_show_and_marks_arms() -> None:
    from engine.views.journey_map import html as journey_map_html

    live = Live(None, [], AT, {("subject", "teaser"): 30}, {})
    page = journey_map_html.render(experiment_map(live))
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert 'data-experiment="nurture-pace" data-type="split" data-step="pace"' in page
    assert 'data-arm="none" data-weight="1" data-share="0.2500" data-holdout="true" data-control="true"' in page
