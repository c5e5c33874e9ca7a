"""`funnel simulate` with the example funnel's subject-line experiment: an arm's own behaviour in the event
mix, and each arm's leads and conversions printed and in the JSON figures."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_funnel_commands import funnel

MIX = """\
per_email:
  - {event: email_opened, probability: 0.5, max_delay: 18h}
  - {event: email_clicked, probability: 0.05, properties: {link: $link}}
arms:
  benefits-subject:
    question:
      per_email:
        - {event: email_clicked, step: nurture-benefits, probability: 0.10, properties: {link: $link}}
"""


def test_an_arm_that_clicks_more_shows_more_conversions(tmp_path: Path) -> None:
    mix = tmp_path / "mix.yaml"
    mix.write_text(MIX)
    result = funnel("simulate", "lead-magnet", "-n", "3000", "-d", "10", "--events", str(mix), "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])["experiments"]["benefits-subject"]
    statement, question = figures["statement"], figures["question"]
    assert statement["leads"] + question["leads"] == 3000
    assert abs(statement["leads"] - 1500) < 5 * (3000 * 0.25) ** 0.5
    # 5% and 10% of about 1,500 leads each: far more than sampling error apart.
    assert 0.03 < statement["conversions"] / statement["leads"] < 0.07
    assert 0.075 < question["conversions"] / question["leads"] < 0.125
    assert "Experiment benefits-subject: a click within 3d of" in result.stdout


def test_without_an_arm_override_both_arms_behave_alike(tmp_path: Path) -> None:
    result = funnel("simulate", "lead-magnet", "-n", "2000", "-d", "10", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])["experiments"]["benefits-subject"]
    rates = [arm["conversions"] / arm["leads"] for arm in figures.values()]
    assert abs(rates[0] - rates[1]) < 0.06  # the default mix: 30% click, sampling error about 1.5 points


def test_a_mix_naming_an_unknown_experiment_or_arm_is_refused(tmp_path: Path) -> None:
    mix = tmp_path / "mix.yaml"
    mix.write_text("arms:\n  benefits-subject:\n    quiz: {}\n  nope:\n    a: {}\n")
    result = funnel("simulate", "lead-magnet", "-n", "5", "-d", "2", "--events", str(mix))
    assert result.returncode == 2
    assert "arms.benefits-subject.quiz: unknown arm: expected one of statement, question" in result.stderr
    assert "arms.nope: unknown experiment: expected one of benefits-subject" in result.stderr
