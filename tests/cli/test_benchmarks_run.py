"""`benchmarks/run --quick`: every benchmark runs at small sizes (three at a time), send and tick on SQLite and on
a PostgreSQL server the run starts itself, and the results file has each headline figure as a positive number,
the machine it ran on, and a table that lists every figure and sets the two backends side by side."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
RUN = ROOT / "benchmarks" / "run"

BENCHMARKS = (
    "send", "send-pg", "tick", "tick-pg", "scale-pg", "http", "bounces", "experiments", "import", "form", "simulate",
    "retention", "soak",
)  # fmt: skip
# The quick sizes of the tick benchmark are 1,000, 3,000 and 10,000 leads.
ON_BOTH = [
    "e2e_emails_per_s",
    "raw_smtp_emails_per_s",
    "e2e_to_raw_ratio",
    "e2e_three_languages_emails_per_s",
    "three_languages_to_one_ratio",
    "send_worker_cpu_ms",
    *(f"tick_{what}_{size}" for size in ("1k", "3k", "10k") for what in ("claim_ms", "due_rows_per_s")),
    "tick_worker_cpu_ms",
]
SERVER = ("server_cpu_ms", "round_trips", "statements", "wal_bytes")
SOAK = ("rss_growth_mb_per_min", "rss_mb_last", "fds_max", "wal_mb_max", "db_bytes_per_lead", "info_lines_per_min",
        "outage_log_lines", "http_p99_ms")  # fmt: skip
RETENTION = ("bytes_per_lead", "plateau_mb", "plateau_growth_pct", "for_ever_bytes_per_day", "prune_s")
# Figures that may be zero or below: memory may shrink over a short run, a plateau may dip.
ANY_SIGN = {"soak_rss_growth_mb_per_min", "retention_plateau_growth_pct", "retention_for_ever_bytes_per_day"}
FIGURES = [
    *ON_BOTH,
    *(f"pg_{key}" for key in ON_BOTH),
    *(f"pg_{what}_{key}" for what in ("send", "tick") for key in SERVER),
    *(f"scale_pg_{what}_{n}w" for n in (1, 2, 3) for what in ("emails_per_s", "smallest_share")),
    "scale_pg_worker_cpu_ms",
    "scale_pg_server_cpu_ms",
    "capacity_worker_cores_10m_per_h",
    "capacity_server_cores_10m_per_h",
    "pg_to_sqlite_e2e_emails_per_s",
    "pg_to_sqlite_e2e_to_raw_ratio",
    "pg_to_sqlite_tick_due_rows_per_s_10k",
    "http_events_per_s",
    "bounce_reports_per_s",
    "bounce_report_p99_ms",
    *(f"experiments_{key}" for key in ("aa_false_positive_rate", "ab_power", "predicted_power")),
    "experiments_naive_false_positive_rate",
    "import_rows_per_s",
    "form_to_email_ms",
    "simulate_leads_per_s",
    "simulate_emails_per_s",
    *(f"soak_{key}" for key in SOAK),
    *(f"retention_{key}" for key in RETENTION),
    *(f"peak_rss_mb_{name}" for name in BENCHMARKS),
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
    assert {name: b["status"] for name, b in data["benchmarks"].items()} == {name: "ok" for name in BENCHMARKS}
    figures = data["figures"]
    assert sorted(figures) == sorted(FIGURES)
    for key, value in figures.items():
        assert isinstance(value, int | float) and (value > 0 or key in ANY_SIGN), (key, value)
    assert figures["peak_rss_mb"] == max(v for k, v in figures.items() if k.startswith("peak_rss_mb_"))
    machine = data["machine"]
    for key in ("cpu", "cores", "ram_gib", "os", "python", "sqlite", "postgresql", "date", "git_commit"):
        assert machine[key], key
    # Every worker sent a share of the emails; the target for PostgreSQL is stated and judged.
    for run in data["benchmarks"]["scale-pg"]["report"]["runs"]:
        assert len(run["shares"]) == run["workers"] and sum(run["shares"]) == pytest.approx(1.0, abs=0.01), run
    target = data["targets"]["pg_to_sqlite_e2e_emails_per_s"]
    assert target["target"] == 0.7 and target["value"] == figures["pg_to_sqlite_e2e_emails_per_s"]
    assert isinstance(machine["git_dirty"], bool)

    table = out.with_suffix(".md").read_text()
    for key in FIGURES:
        assert f"`{key}`" in table, key
    assert "| figure, both backends in this run | SQLite | PostgreSQL | PostgreSQL / SQLite | unit |" in table
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


def _experiments_module() -> Any:
    spec = importlib.util.spec_from_file_location("experiments_benchmark", ROOT / "benchmarks" / "experiments.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_experiments_keep_false_positives_at_alpha_when_looked_at_every_batch(tmp_path: Path) -> None:
    """300 A/A and 300 A/B experiments, looked at after every 100 leads: the run's check passes, and the same
    A/A experiments judged by a z-test at every look (what the method avoids) fail it."""
    out = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--only", "experiments", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    bench = json.loads(out.read_text())["benchmarks"]["experiments"]
    assert bench["status"] == "ok" and bench["problems"] == []
    report = bench["report"]
    assert report["experiments"] == 300 and report["alpha"] == 0.05 and report["elapsed_s"] < 10
    tolerance = 3 * (0.05 * 0.95 / 300) ** 0.5
    assert report["aa_false_positive_rate"] <= 0.05 + tolerance
    assert abs(report["ab_power"] - report["predicted_power"]) <= 3 * (0.8 * 0.2 / 300) ** 0.5
    assert report["naive_false_positive_rate"] > 0.05 + tolerance

    check = _experiments_module().check
    assert check(report) == []
    assert (
        "A/A false positive rate" in check({**report, "aa_false_positive_rate": report["naive_false_positive_rate"]})[0]
    )
    assert "A/B power" in check({**report, "ab_power": report["predicted_power"] - 0.1})[0]
