"""`benchmarks/run --quick`: every benchmark runs at small sizes (three at a time), and the results file has
each headline figure as a positive number, the machine it ran on, and a table that lists every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
RUN = ROOT / "benchmarks" / "run"

# The quick sizes of the tick benchmark are 1,000, 3,000 and 10,000 leads.
FIGURES = [
    "e2e_emails_per_s",
    "raw_smtp_emails_per_s",
    "e2e_to_raw_ratio",
    *(f"tick_{what}_{size}" for size in ("1k", "3k", "10k") for what in ("claim_ms", "due_rows_per_s")),
    "http_events_per_s",
    "bounce_reports_per_s",
    "bounce_report_p99_ms",
    "import_rows_per_s",
    "form_to_email_ms",
    "simulate_leads_per_s",
    "simulate_emails_per_s",
    *(f"peak_rss_mb_{name}" for name in ("send", "tick", "http", "bounces", "import", "form", "simulate")),
    "peak_rss_mb",
]


@pytest.mark.slow
def test_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    data = json.loads(out.read_text())
    assert data["mode"] == "quick" and data["ok"] is True
    assert {name: b["status"] for name, b in data["benchmarks"].items()} == {
        name: "ok" for name in ("send", "tick", "http", "bounces", "import", "form", "simulate")
    }
    figures = data["figures"]
    assert sorted(figures) == sorted(FIGURES)
    for key, value in figures.items():
        assert isinstance(value, int | float) and value > 0, (key, value)
    assert figures["peak_rss_mb"] == max(v for k, v in figures.items() if k.startswith("peak_rss_mb_"))
    machine = data["machine"]
    for key in ("cpu", "cores", "ram_gib", "os", "python", "sqlite", "date", "git_commit"):
        assert machine[key], key
    assert isinstance(machine["git_dirty"], bool)

    table = out.with_suffix(".md").read_text()
    for key in FIGURES:
        assert f"`{key}`" in table, key
    assert table in done.stdout
    # Nothing of where the checkout sits on this machine goes into the results.
    assert str(ROOT) not in out.read_text() + table


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--only", "send,nope"], ["nope", "simulate"]),
        (["--database-url", "sqlite:///elsewhere.db"], ["--database-url", "PostgreSQL"]),
    ],
)
def test_arguments_are_checked_before_anything_runs(tmp_path: Path, args: list[str], said: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(RUN), *args, "--out", str(tmp_path / "r.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    for words in said:
        assert words in done.stderr
    assert not (tmp_path / "r.json").exists()
