"""The README's two quick-start commands are the ones CI and users run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the quick start has a sh code block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_quick_start_is_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "funnel run" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quick_start_commands()[1] in ci


def test_the_command_the_quick_start_names_lists_the_sinks_emails(tmp_path: Path) -> None:
    """The quick start says which command lists the `.eml` files of its first run: that command does."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    named = re.search(
        r"emails land as \.eml files in data/outbox/ \(`\.venv/bin/funnel ([a-z -]+)` lists them\)", section
    )
    assert named, "the quick start says which command lists the emails"
    outbox = tmp_path / "data" / "outbox"
    outbox.mkdir(parents=True)
    (outbox / "20261123T100000-1.eml").write_bytes(
        b"To: sam@example.com\r\nSubject: Your report\r\nX-Funnel: lead-magnet/deliver-report\r\n\r\nHello\r\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", *named.group(1).split()],
        cwd=ROOT,
        env={**env, "FUNNEL_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "20261123T100000-1.eml" in done.stdout and "Your report" in done.stdout
