"""Funnel files: every error names file:line:column, says what was expected and what was found."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.authoring.validation import FunnelError, LoadResult, load_funnels
from engine.cli.main import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BROKEN = FIXTURES / "broken"
VALID = FIXTURES / "valid"
EMAILS = FIXTURES / "emails"

# fixture file -> every error it must produce: (line, column, words the message must contain)
EXPECTED: dict[str, list[tuple[int, int, tuple[str, ...]]]] = {
    "yaml-syntax.yaml": [(8, 7, ("invalid YAML", "expected ',' or '}'"))],
    "unknown-top-key.yaml": [
        (
            4,
            1,
            ("unknown key 'descripton' in funnel", "expected one of id, name, description", "'description'?"),
        )
    ],
    "unknown-step-key.yaml": [
        (
            11,
            9,
            (
                "unknown key 'sned' in stage 'inquiry' step 'report'",
                "expected one of id, send, wait",
                "'send'?",
            ),
        )
    ],
    "bad-duration.yaml": [
        (13, 15, ("stage 'inquiry' step 'w1' wait:", "expected a duration such as '30m'", "found '2x'"))
    ],
    "bad-id.yaml": [(8, 9, ("stages[0].id:", "expected a lowercase kebab-case id", "found 'Inquiry_Stage'"))],
    "unknown-target.yaml": [
        (13, 18, ("step 'go' move_to: unknown stage 'comparision'", "expected one of inquiry, comparison"))
    ],
    "unknown-goto.yaml": [
        (
            15,
            24,
            ("step 'check' branch.then.goto: unknown step 'reprot'", "expected a step of stage 'inquiry'"),
        )
    ],
    "unreachable-stage.yaml": [(13, 9, ("stage 'orphan' is unreachable", "from the entry stage 'inquiry'"))],
    "missing-template.yaml": [
        (
            11,
            15,
            ("email template 'lead-magnet/no-such-email' not found", "no-such-email.md or", "found neither"),
        )
    ],
    "loop-without-wait.yaml": [
        (15, 24, ("step 'again' branch.then.goto: loop without a wait", "inquiry/report -> inquiry/again"))
    ],
    "stage-loop.yaml": [(9, 23, ("stage 'inquiry' on_end.move_to: loop without a wait", "comparison/note"))],
    "duplicate-step-id.yaml": [
        (14, 13, ("duplicate step id 'report' (also stage 'inquiry' step 'report')", "found 'report' again"))
    ],
    "wait-for-without-timeout.yaml": [
        (
            11,
            9,
            (
                "step 'clicked' wait_for: missing key 'timeout'",
                "how long to wait for the event",
                "found none",
            ),
        )
    ],
    "bad-timezone.yaml": [(4, 11, ("timezone: expected an IANA time zone", "found 'Europe/Atlantis'"))],
    "two-operators.yaml": [(13, 13, ("step 'check' branch.if: expected exactly one operator", "found gte, lt"))],
    # `on:` must be read as the key "on" (YAML 1.2), not as the boolean true of YAML 1.1.
    "on-key.yaml": [(11, 5, ("transition 'demo': expected exactly one of 'on'", "found 'on' and 'after'"))],
    "unknown-condition-key.yaml": [
        (12, 16, ("unknown key 'has_tags' in stage 'inquiry' step 'check' branch.if", "'has_tag'?"))
    ],
    "many-errors.yaml": [
        (2, 5, ("id: expected a lowercase kebab-case id", "found 'Many_Errors'")),
        (4, 11, ("timezone:", "found 'Mars/Olympus'")),
        (5, 19, ("allowed_lateness: expected a duration", "found 'soon'")),
        (8, 7, ("unknown key 'evnt' in entry.triggers[0]", "expected one of event, condition, manual")),
        (11, 13, ("stage 'inquiry' on_end: expected 'next', 'stay' or 'exit' or a mapping", "found 'later'")),
        (14, 15, ("step 'report' send: expected a template path", "found 'Lead Magnet/Report'")),
        (16, 15, ("step 'w1' wait: expected a duration with a unit", "found 3")),
        (17, 9, ("unknown key 'extra' in stage 'inquiry' step 'w1': expected one of id, wait",)),
        (19, 5, ("transition 'demo': expected exactly one of 'on' (an event) or 'after'", "found none")),
    ],
}


def load(*paths: Path, emails: Path | None = EMAILS) -> LoadResult:
    return load_funnels(list(paths), emails_dir=emails)


def located(errors: list[FunnelError]) -> list[tuple[int, int]]:
    return [(e.line, e.column) for e in errors]


def write_funnel(folder: Path, name: str, funnel_id: str = "tmp") -> Path:
    text = (VALID / "nurture.yaml").read_text(encoding="utf-8").replace("id: nurture", f"id: {funnel_id}", 1)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_broken_fixture_is_covered() -> None:
    assert sorted(p.name for p in BROKEN.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_file_reports_each_error_at_its_position(name: str) -> None:
    path = BROKEN / name
    result = load(path)
    expected = EXPECTED[name]
    assert located(result.errors) == [(line, column) for line, column, _ in expected], [str(e) for e in result.errors]
    for error, (line, column, gists) in zip(result.errors, expected, strict=True):
        text = str(error)
        assert text.startswith(f"{path}:{line}:{column}: ")
        for gist in gists:
            assert gist in text
    assert result.funnels == []


def test_several_errors_in_one_file_are_all_reported_sorted_by_position() -> None:
    result = load(BROKEN / "many-errors.yaml")
    assert len(result.errors) == 9
    assert located(result.errors) == sorted(located(result.errors))


def test_all_files_of_a_folder_are_checked_at_once() -> None:
    result = load(BROKEN)
    assert {e.path.name for e in result.errors} == set(EXPECTED)
    assert len(result.errors) == sum(len(v) for v in EXPECTED.values())


def test_a_valid_funnel_loads() -> None:
    result = load(VALID)
    assert result.errors == []
    assert [f.id for f in result.funnels] == ["nurture"]
    assert result.sources == {"nurture": VALID / "nurture.yaml"}
    # `on:` is an event trigger key here, not a YAML 1.1 boolean.
    demo = result.funnels[0].transitions[0]
    assert demo.on is not None and demo.on.event == "demo_booked"


def test_error_lines_follow_the_documented_format() -> None:
    (error,) = load(BROKEN / "bad-duration.yaml").errors
    assert str(error) == (
        f"{BROKEN / 'bad-duration.yaml'}:13:15: stage 'inquiry' step 'w1' wait:"
        " expected a duration such as '30m', '36h', '2d' or '1w2d', found '2x'"
    )


def test_folder_reads_yaml_and_yml_but_not_scenarios(tmp_path: Path) -> None:
    write_funnel(tmp_path, "a.yaml", "first")
    write_funnel(tmp_path, "b.yml", "second")
    (tmp_path / "a.scenarios.yaml").write_text("scenarios: [not, a, funnel]\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not yaml\n", encoding="utf-8")
    result = load(tmp_path)
    assert result.errors == []
    assert [p.name for p in result.files] == ["a.yaml", "b.yml"]
    assert [f.id for f in result.funnels] == ["first", "second"]


def test_a_funnel_file_that_leads_outside_its_folder_is_refused_unread(tmp_path: Path) -> None:
    funnels = tmp_path / "funnels"
    (funnels / "parts").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / ".env").write_text("FUNNEL_SMTP__PASSWORD=hunter2-relay-password\n", encoding="utf-8")
    (funnels / "leak.yaml").symlink_to(Path("..", ".env"))
    (funnels / "shared.yaml").symlink_to(write_funnel(tmp_path / "shared", "shared.yaml", "shared"))
    write_funnel(funnels, "inside.yaml", "inside")
    write_funnel(funnels / "parts", "aliased.yaml", "aliased")
    (funnels / "alias.yml").symlink_to(Path("parts", "aliased.yaml"))  # a link that stays inside is fine
    result = load(funnels)
    outside = [(tmp_path / ".env").as_posix(), (tmp_path / "shared" / "shared.yaml").as_posix()]
    assert [(e.path.name, e.line, e.column, e.message) for e in result.errors] == [
        (name, 1, 1, f"'{name}' leads outside {funnels.as_posix()} (to {target}): only files inside it are read")
        for name, target in zip(("leak.yaml", "shared.yaml"), outside, strict=True)
    ]
    assert "hunter2" not in "".join(str(e) for e in result.errors)
    assert [f.id for f in result.funnels] == ["aliased", "inside"]


def test_funnel_ids_must_be_unique_across_files(tmp_path: Path) -> None:
    write_funnel(tmp_path, "a.yaml", "same")
    second = write_funnel(tmp_path, "b.yaml", "same")
    result = load(tmp_path)
    assert [str(e) for e in result.errors] == [
        f"{second}:2:5: funnel id 'same' is also used by {tmp_path / 'a.yaml'}:"
        " expected an id unique across funnel files, found 'same' again"
    ]
    assert [f.id for f in result.funnels] == ["same"]


def test_missing_emails_folder_is_reported_once(tmp_path: Path) -> None:
    write_funnel(tmp_path, "a.yaml", "first")
    write_funnel(tmp_path, "b.yaml", "second")
    result = load(tmp_path, emails=tmp_path / "no-emails")
    assert len(result.errors) == 1
    assert "email templates folder" in str(result.errors[0]) and "not found" in str(result.errors[0])


def test_templates_may_be_markdown_or_html(tmp_path: Path) -> None:
    emails = tmp_path / "emails"
    shutil.copytree(EMAILS, emails)
    assert load(VALID, emails=emails).errors == []
    (emails / "lead-magnet" / "book-call.html").unlink()
    (error,) = load(VALID, emails=emails).errors
    assert "email template 'lead-magnet/book-call' not found" in str(error)


def test_template_check_can_be_skipped() -> None:
    assert load(BROKEN / "missing-template.yaml", emails=None).errors == []


def test_missing_path_and_empty_folder_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = load(tmp_path / "nope.yaml", tmp_path / "empty")
    assert [e.message for e in result.errors] == [
        "no such file or folder",
        "no funnel files: expected *.yaml or *.yml files, found none",
    ]


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(
        (VALID / "nurture.yaml").read_text(encoding="utf-8").replace("name: Report nurture", "name: A\nname: B"),
        encoding="utf-8",
    )
    (error,) = load(path).errors
    assert (error.line, error.column) == (4, 1)
    assert "duplicate key 'name'" in error.message


def test_a_duplicate_key_is_named_by_the_stage_and_step_that_hold_it(tmp_path: Path) -> None:
    # PyYAML keeps the last copy of a key; the place of a duplicate is the copy it is written in.
    path = tmp_path / "dup.yaml"
    text = (VALID / "nurture.yaml").read_text(encoding="utf-8")
    text = text.replace("        transactional: true\n", "        transactional: true\n        transactional: false\n")
    text = text.replace("  - id: conversion\n", "  - id: conversion\n    id: closing\n")
    path.write_text(text + "stages:\n  - id: other\n", encoding="utf-8")
    messages = [(e.line, e.column, e.message) for e in load(path).errors]
    twice = "expected each key once, found it twice"
    assert messages == [
        (22, 9, f"stage 'inquiry' step 'report': duplicate key 'transactional': {twice}"),
        (56, 5, f"stage 'conversion': duplicate key 'id': {twice}"),
        (74, 1, f"funnel: duplicate key 'stages': {twice}"),
    ]


def test_loops_through_a_wait_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    text = (BROKEN / "loop-without-wait.yaml").read_text(encoding="utf-8")
    path.write_text(
        text.replace("      - id: again\n", "      - id: pause\n        wait: 1d\n      - id: again\n"),
        encoding="utf-8",
    )
    assert load(path).errors == []


LOOP = (BROKEN / "loop-without-wait.yaml").read_text(encoding="utf-8")
TIMELESS = (
    "expected a step inside the loop that lets time pass (a wait or a wait_for timeout longer than 0s,"
    " or a wait_until), found"
)


@pytest.mark.parametrize(
    ("step", "found"),
    [
        ("      - id: pause\n        wait: 0s\n", "only 'pause' (wait 0s)"),
        (
            "      - id: pause\n        wait_for: {event: email_clicked, timeout: 0s, on_event: {exit: clicked}}\n",
            "only 'pause' (wait_for timeout 0s)",
        ),
    ],
)
def test_a_wait_of_no_time_does_not_break_a_loop(tmp_path: Path, step: str, found: str) -> None:
    # The core would run such a loop until its step budget stops the lead ("step-limit").
    path = tmp_path / "loop.yaml"
    path.write_text(LOOP.replace("      - id: again\n", step + "      - id: again\n"), encoding="utf-8")
    (error,) = load(path).errors
    assert (error.line, error.column) == (17, 24)
    assert error.message == (
        "stage 'inquiry' step 'again' branch.then.goto: loop without a wait"
        f" (inquiry/report -> inquiry/pause -> inquiry/again): {TIMELESS} {found}"
    )


def test_a_transition_after_0s_is_no_wait_either(tmp_path: Path) -> None:
    path = tmp_path / "bounce.yaml"
    text = (
        "id: bounce\nname: Bounce\nentry:\n  triggers:\n    - manual: true\nstages:\n  - id: a\n    on_end: stay\n"
        "  - id: b\n    on_end: {move_to: a}\ntransitions:\n  - id: quick\n    from: a\n    after: {after}\n    to: b\n"
    )
    path.write_text(text.replace("{after}", "0s"), encoding="utf-8")
    messages = [(e.line, e.column, e.message) for e in load(path).errors]
    assert messages == [
        (
            14,
            12,
            f"transition 'quick' after: loop without a wait (a/(end) -> b/(end)): {TIMELESS} only transition"
            " 'quick' (after 0s)",
        )
    ]
    path.write_text(text.replace("{after}", "1m"), encoding="utf-8")
    assert load(path).errors == []


@pytest.mark.parametrize(
    "step",
    [
        "      - id: pause\n        wait: 1s\n",
        "      - id: pause\n        wait_until: {time: '09:00'}\n",
        "      - id: pause\n        wait_for: {event: email_clicked, timeout: 1s}\n",
        # Only a new event goes round again: the timeout leaves the loop.
        "      - id: pause\n        wait_for: {event: email_clicked, timeout: 0s, on_timeout: {exit: quiet}}\n",
    ],
)
def test_a_wait_that_lets_time_pass_breaks_a_loop(tmp_path: Path, step: str) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(LOOP.replace("      - id: again\n", step + "      - id: again\n"), encoding="utf-8")
    assert load(path).errors == []


def test_cli_validate_exits_1_and_prints_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES.parents[1])
    path = Path("tests/fixtures/broken/bad-duration.yaml")
    outcome = CliRunner().invoke(app, ["validate", str(path), "--emails", "tests/fixtures/emails"])
    assert outcome.exit_code == 1
    # Rich may wrap long lines on a narrow terminal; the words must all be there in order.
    printed = " ".join(outcome.output.split())
    assert f"{path}:13:15: stage 'inquiry' step 'w1' wait: expected a duration" in printed
    assert "1 error(s) in 1 file(s)" in printed


def test_cli_validate_passes_a_valid_folder() -> None:
    outcome = CliRunner().invoke(app, ["validate", str(VALID), "--emails", str(EMAILS)])
    assert outcome.exit_code == 0, outcome.output
    assert "ok nurture" in outcome.output


def test_a_step_with_two_actions_or_none_says_which(tmp_path: Path) -> None:
    path = tmp_path / "steps.yaml"
    text = (BROKEN / "unknown-step-key.yaml").read_text(encoding="utf-8")
    path.write_text(
        text.replace("        sned: lead-magnet/report\n", "        send: lead-magnet/report\n        wait: 2d\n")
        + "      - id: nothing\n",
        encoding="utf-8",
    )
    messages = [(e.line, e.column, e.message) for e in load(path).errors]
    actions = "send, wait, wait_until, wait_for, branch, split, update, move_to, webhook, exit"
    assert messages == [
        (10, 9, f"stage 'inquiry' step 'report': expected exactly one of {actions}, found 'send' and 'wait'"),
        (13, 9, f"stage 'inquiry' step 'nothing': expected exactly one of {actions}, found none"),
    ]


# --------------------------------------------------------------------------------------------------
# Bounds: a funnel file is small, and so is what it holds
# --------------------------------------------------------------------------------------------------


def test_a_funnel_file_over_the_size_bound_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    from engine.core.yamlfile import MAX_FILE_BYTES

    path = write_funnel(tmp_path, "big.yaml")
    stage = "  - id: s{0}\n    steps:\n" + "".join(f"      - id: s{{0}}-w{i}\n        wait: 1d\n" for i in range(20))
    with path.open("a", encoding="utf-8") as out:
        for n in range(10_000):  # ~5 MB of well-formed stages: what took half a minute and 900 MB to load
            out.write(stage.format(n))
    size = path.stat().st_size
    assert size > 4 * MAX_FILE_BYTES
    started = time.perf_counter()
    result = load(path)
    assert time.perf_counter() - started < 2
    assert [str(e) for e in result.errors] == [
        f"{path}:1:1: expected a file of at most {MAX_FILE_BYTES:,} bytes (256 KiB), found {size:,} bytes"
    ]
    assert result.funnels == []


def test_a_funnel_file_at_the_size_bound_loads(tmp_path: Path) -> None:
    from engine.core.yamlfile import MAX_FILE_BYTES

    path = write_funnel(tmp_path, "padded.yaml")
    padding = MAX_FILE_BYTES - path.stat().st_size
    with path.open("a", encoding="utf-8") as out:
        out.write(("#" * 99 + "\n") * (padding // 100) + "#" * (padding % 100))
    assert path.stat().st_size == MAX_FILE_BYTES
    assert load(path).errors == []


def test_stages_and_steps_are_bounded_with_the_place_and_the_count(tmp_path: Path) -> None:
    from engine.core.definition import MAX_STAGES, MAX_STEPS_PER_STAGE

    head = ["id: many", "name: Many", "entry:", "  triggers:", "    - event: form_submitted", "stages:"]
    many_stages = tmp_path / "stages.yaml"
    many_stages.write_text("\n".join([*head, *(f"  - id: s{i}" for i in range(MAX_STAGES + 1))]) + "\n")
    many_steps = tmp_path / "steps.yaml"
    steps = [f"      - id: w{i}\n        wait: 1d" for i in range(MAX_STEPS_PER_STAGE + 1)]
    many_steps.write_text("\n".join([*head, "  - id: first", "    steps:", *steps]) + "\n")
    messages = [(e.path.name, e.line, e.column, e.message) for e in load(many_stages, many_steps).errors]
    assert messages == [
        ("stages.yaml", 7, 3, f"stages: expected at most {MAX_STAGES} item(s), found {MAX_STAGES + 1}"),
        (
            "steps.yaml",
            9,
            7,
            f"stage 'first' steps: expected at most {MAX_STEPS_PER_STAGE} item(s), found {MAX_STEPS_PER_STAGE + 1}",
        ),
    ]
    lines = many_stages.read_text().splitlines()
    many_stages.write_text("\n".join(lines[:-1]) + "\n")
    assert load(many_stages).errors == []
