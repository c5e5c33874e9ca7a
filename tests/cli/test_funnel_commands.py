"""The definition-side commands as a marketer runs them: real processes, real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def funnel(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_validate_passes_on_the_shipped_funnels() -> None:
    result = funnel("validate", "funnels/")
    assert result.returncode == 0, result.stderr
    assert "ok lead-magnet" in result.stdout


def test_simulate_ten_thousand_leads_prints_stage_counts_and_elapsed_time() -> None:
    result = funnel("simulate", "lead-magnet", "--leads", "10000", "--days", "30", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["leads"] == 10000 and summary["days"] == 30
    assert summary["elapsed_s"] > 0
    in_funnel = sum(summary["stages"].values()) + sum(summary["exited"].values())
    assert in_funnel == 10000
    assert set(summary["stages"]) == {"inquiry", "comparison", "conversion", "onboarding", "advocacy"}
    assert "simulated 10000 leads over 30 days in" in result.stdout


def test_simulate_prints_one_leads_timeline_in_local_time() -> None:
    result = funnel("simulate", "lead-magnet", "--leads", "20", "--lead", "3")
    assert result.returncode == 0, result.stderr
    assert "Timeline of lead-000003@sim.example" in result.stdout
    assert "transition  (new) -> inquiry" in result.stdout
    assert "Your report" in result.stdout  # the delivery email, by its subject


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "per_email:\n  - {event: email_opened, probability: 2}\n",
            "mix.yaml:2:40: per_email[0].probability: Input should be less",
        ),
        ("per_email: [\n", "mix.yaml:2:1: invalid YAML"),
        ("opens: 0.5\n", "mix.yaml:1:8: opens: Extra inputs are not permitted"),
        ("- 1\n", "mix.yaml:1:1: the file: Input should be a valid dictionary"),
    ],
)
def test_a_bad_event_mix_is_named_with_its_line_and_no_traceback(tmp_path: Path, text: str, said: str) -> None:
    mix = tmp_path / "mix.yaml"
    mix.write_text(text)
    for events, expected in ((mix, said), (tmp_path / "missing.yaml", "missing.yaml: cannot read the event mix")):
        result = funnel("simulate", "lead-magnet", "-n", "5", "-d", "2", "--events", str(events))
        assert result.returncode == 2, result.stdout + result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert "simulated" not in result.stdout


def test_shipped_scenarios_pass() -> None:
    result = funnel("test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout


def test_a_broken_expectation_fails_with_what_was_expected_and_found(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "funnels", tmp_path / "funnels")
    shutil.copytree(ROOT / "emails", tmp_path / "emails")
    scenarios = tmp_path / "funnels" / "lead-magnet.scenarios.yaml"
    text = scenarios.read_text()
    # Move one expected send time by an hour: the scenario must now fail, naming both times.
    marker = '"2026-11-23 09:00"'
    assert marker in text, "the shipped scenarios expect a Monday 09:00 nurture email"
    scenarios.write_text(text.replace(marker, '"2026-11-23 10:00"', 1))
    result = funnel("test", cwd=tmp_path)
    assert result.returncode == 1
    assert "FAIL" in result.stdout
    assert "expected at 2026-11-23 10:00" in result.stdout and "found at 2026-11-23 09:00" in result.stdout


def test_a_malformed_scenario_file_names_file_line_and_column(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "funnels", tmp_path / "funnels")
    shutil.copytree(ROOT / "emails", tmp_path / "emails")
    bad = tmp_path / "funnels" / "bad.scenarios.yaml"
    bad.write_text(
        "funnel: lead-magnet\nscenarios:\n  - name: x\n    start: tomorrow\n"
        "    expect:\n      - {email: deliver-report}\n"
    )
    result = funnel("test", str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert "bad.scenarios.yaml:4:12:" in result.stderr
    assert "found 'tomorrow'" in result.stderr


def test_validate_prints_what_the_file_says_without_turning_it_into_emoji(tmp_path: Path) -> None:
    broken = tmp_path / "fire.yaml"
    broken.write_text("id: fire\nname: Fire\n':fire:': 1\nstages: [{id: only, steps: [{id: w, wait: 1d}]}]\n")
    result = funnel("validate", str(broken))
    assert result.returncode == 1
    assert "':fire:'" in result.stdout + result.stderr
    assert "🔥" not in result.stdout + result.stderr


def test_validate_reports_a_template_or_page_that_reads_outside_its_folder(tmp_path: Path) -> None:
    import os

    for folder in ("funnels", "emails", "pages", "config"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "secrets.env").write_text("FUNNEL_SECRET_KEY=kept-on-the-server-only\n")
    (tmp_path / "emails" / "_partials" / "notes.txt").symlink_to(Path("..", "..", "secrets.env"))
    (tmp_path / "pages" / "lead-magnet" / "notes.html").symlink_to(tmp_path / "secrets.env")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}

    def validate() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine.cli", "validate"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def include(path: Path, name: str) -> int:
        text = path.read_text()
        path.write_text(text + f'{{% include "{name}" %}}\n')
        return text.count("\n") + 1

    report = tmp_path / "emails" / "lead-magnet" / "report-delivery.md"
    original = report.read_text()
    line = include(report, "_partials/notes.txt")
    result = validate()
    assert result.returncode == 1
    assert f"emails/lead-magnet/report-delivery.md:{line}:1: " in result.stderr, result.stderr
    assert "'_partials/notes.txt'" in result.stderr and "outside" in result.stderr
    assert "kept-on-the-server-only" not in result.stdout + result.stderr

    report.write_text(original)
    page_line = include(tmp_path / "pages" / "lead-magnet" / "signup.html", "lead-magnet/notes.html")
    result = validate()
    assert result.returncode == 1
    assert f"settings: forms.cost-of-not-recycling.page: pages/lead-magnet/signup.html:{page_line}: " in result.stderr
    assert "'lead-magnet/notes.html'" in result.stderr and "outside" in result.stderr, result.stderr
    assert "kept-on-the-server-only" not in result.stdout + result.stderr


CALLS = """\
id: calls
name: Calls
entry:
  triggers:
    - event: signed_up
stages:
  - id: inquiry
    steps:
      - id: metadata
        webhook:
          url: http://169.254.169.254/latest/meta-data/
      - id: internal
        webhook:
          url: "http://[fd00:ec2::254]/x"
      - id: decimal
        webhook:
          url: http://2852039166/
      - id: crm
        webhook:
          url: https://crm.example.com/hooks/funnel
      - id: pause
        wait: 30d
"""


def test_validate_names_each_webhook_step_that_calls_an_address_webhooks_may_not_reach(tmp_path: Path) -> None:
    (tmp_path / "funnels").mkdir()
    (tmp_path / "funnels" / "calls.yaml").write_text(CALLS)
    shutil.copytree(ROOT / "emails", tmp_path / "emails")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}

    def validate(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine.cli", "validate"],
            cwd=tmp_path,
            env={**clean, "PYTHONPATH": str(ROOT), **env},
            capture_output=True,
            text=True,
            timeout=300,
        )

    refused = validate()
    assert refused.returncode == 1
    lines = refused.stderr.splitlines()
    assert lines[0].startswith(
        "funnels/calls.yaml:11:16: stage 'inquiry' step 'metadata' webhook.url: "
        "169.254.169.254 is a link-local address (169.254.0.0/16)"
    )
    assert lines[1].startswith(
        "funnels/calls.yaml:14:16: stage 'inquiry' step 'internal' webhook.url: "
        "fd00:ec2::254 is a unique-local address (fc00::/7)"
    )
    assert lines[2].startswith(
        "funnels/calls.yaml:17:16: stage 'inquiry' step 'decimal' webhook.url: "
        "2852039166 is 169.254.169.254, a link-local address (169.254.0.0/16)"
    )
    assert all("webhooks.allow_private_hosts" in line for line in lines[:3])
    assert lines[3].startswith("3 error(s)")

    allowed = validate(FUNNEL_WEBHOOKS__ALLOW_PRIVATE_HOSTS='["169.254.169.254", "fd00:ec2::254"]')
    assert allowed.returncode == 0, allowed.stderr
    assert "ok calls" in allowed.stdout

    subscribed = validate(
        FUNNEL_WEBHOOKS__ALLOW_PRIVATE_HOSTS='["169.254.169.254", "fd00:ec2::254"]',
        FUNNEL_WEBHOOKS__CRM__URL="http://10.0.0.5/in",
        FUNNEL_WEBHOOKS__CRM__SECRET="VwNz41bQc9z_nN6aatYkGBD5h3zNNLlqPhhm-zGlt8Y",
    )
    assert subscribed.returncode == 1
    assert subscribed.stderr.startswith("settings: webhooks.crm.url: 10.0.0.5 is a private address (10.0.0.0/8)")


def test_validate_reports_a_template_past_the_bounds_with_its_file_and_line(tmp_path: Path) -> None:
    for folder in ("funnels", "emails"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    email = tmp_path / "emails" / "lead-magnet" / "hidden-costs.md"
    text = email.read_text()
    email.write_text(text + "\n{{ '{:>5000000}'.format(lead.email) }}\n")
    result = funnel("validate", "funnels/", cwd=tmp_path)
    assert result.returncode == 1
    line = text.count("\n") + 2
    assert (
        f"emails/lead-magnet/hidden-costs.md:{line}:1: str.format would build more than 1,000,000 characters"
        in " ".join(result.stderr.split())
    ), result.stderr


def test_every_command_that_takes_a_funnel_takes_its_id_or_its_file(tmp_path: Path) -> None:
    import os

    for folder in ("funnels", "emails", "config"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env |= {"FUNNEL_DATABASE_URL": f"sqlite:///{tmp_path / 'funnel.db'}", "COLUMNS": "200"}
    from engine.store.database import upgrade

    upgrade(env["FUNNEL_DATABASE_URL"])  # the engine's database (plan reads one, it makes none)

    def run(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "engine.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return " ".join((result.stdout + result.stderr).split())

    for ref in ("lead-magnet", "funnels/lead-magnet.yaml"):
        assert "ok lead-magnet" in run("validate", ref)
        assert "simulated 5 leads" in run("simulate", ref, "-n", "5", "-d", "3")
        assert "wrote" in run("map", ref, "--format", "md", "-o", str(tmp_path / "map.md"))
        assert "lead-magnet: 0 lead(s) in flight" in run("plan", ref)
        assert "enters lead-magnet" in run("lead", "enroll", "sam@example.com", ref, "--by", "ops")
    assert "lead-magnet: 0 lead(s) in flight" in run("plan", "funnels")

    missing = subprocess.run(
        [sys.executable, "-m", "engine.cli", "plan", "lead-magnit"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 1
    assert (
        "no funnel 'lead-magnit': expected a funnel file, a folder of funnel files or the id of a funnel in"
        " funnels/ (found: lead-magnet)" in " ".join(missing.stderr.split())
    ), missing.stderr


def test_timelines_show_subjects_as_the_lead_reads_them_and_updates_in_words() -> None:
    result = funnel("test", "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # The scenario lead Kiran buys: the welcome's subject names the sender and Kiran.
    assert 'welcome-client "Welcome to Greenleaf Consulting, Kiran. Here\'s what happens next"' in out
    assert "update      tag-report-downloaded: tag report-downloaded, score +10" in out
    assert "update      tag-client: tag client, untag sales-ready, score +50" in out
    assert "{{" not in out and "UpdateLead" not in out

    simulated = funnel("simulate", "lead-magnet", "--leads", "20", "--lead", "3")
    assert simulated.returncode == 0, simulated.stderr
    assert "update      tag-report-downloaded: tag report-downloaded, score +10" in simulated.stdout
    assert "{{" not in simulated.stdout and "UpdateLead" not in simulated.stdout


def test_simulate_writes_every_leads_timeline_as_json_lines(tmp_path: Path) -> None:
    out = tmp_path / "timelines.jsonl"
    result = funnel("simulate", "lead-magnet", "-n", "40", "-d", "30", "--json", "--timelines", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    leads = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [lead["lead"] for lead in leads] == list(range(1, 41))
    emails = [m for lead in leads for m in lead["timeline"] if m["kind"] == "email"]
    assert len(emails) == summary["emails_sent"]
    assert all(m["subject"] and "{{" not in m["subject"] for m in emails)
    ended = {lead["ended"] for lead in leads}
    assert ended <= set(summary["stages"]) | {f"exited:{reason}" for reason in summary["exited"]}
    first = leads[0]
    assert first["email"] == "lead-000001@sim.example" and first["timezone"] and first["attributes"]["first_name"]
    entry = first["timeline"][1]
    assert (entry["kind"], entry["from"], entry["to"]) == ("transition", None, "inquiry")
    assert entry["at"].endswith("Z") and entry["local"]
    report = next(m for m in first["timeline"] if m["kind"] == "email")
    assert (report["step"], report["template"]) == ("deliver-report", "lead-magnet/report-delivery")
    update = next(m for m in first["timeline"] if m["kind"] == "update")
    assert update["words"] == "tag report-downloaded, score +10"
