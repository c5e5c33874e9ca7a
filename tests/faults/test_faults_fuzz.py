"""Fuzzing: malformed funnel files and malformed API input from hypothesis, through the real entry points.

Funnel files go through `load_funnels`, what `funnel validate` runs, and a handful of them through the
`funnel validate` command itself: each loads, or fails with errors that name the file and a line and
column within it and say what is wrong, never an exception, never a hang (each example has a time
limit), never the memory an alias bomb asks for. A funnel that loads is run for a few virtual leads.

API input goes over a real socket to the app under uvicorn, on SQLite and on PostgreSQL: never a 5xx,
a refused request changes nothing, an accepted batch stores each new event id exactly once, a replay
changes nothing (invariants 7 and 12).
"""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.simulation import simulate
from engine.validation import FunnelError, load_funnels
from tests.faults.conftest import size
from tests.faults.fuzz_inputs import (
    FunnelFile,
    funnel_files,
)
from tests.faults.tally import Tally

ROOT = Path(__file__).resolve().parents[2]
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
# Loading a funnel file takes milliseconds (PyYAML needs up to ~2 s for a line of a thousand `[`); ten
# seconds mean something walks far more than the file holds.
EXAMPLE_LIMIT_S = 10.0
MEMORY_GROWTH_LIMIT_MB = 300

Report = Callable[[Tally], None]


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` (the tests run in the main thread, where signals arrive)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


# --------------------------------------------------------------------------------------------------
# Funnel files
# --------------------------------------------------------------------------------------------------

# The line breaks YAML positions count (PyYAML's), so that "a line within the file" means the same thing.
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
# Words of Python or pydantic that mean an exception's text reached the marketer.
_INTERNALS = ("Traceback", " object at 0x", "NoneType", "function-after", "function-before", "<class", "pydantic")


def lines_of(content: bytes) -> list[str]:
    return _LINE_BREAK.split(content.decode("utf-8", "replace"))


def check_error(error: FunnelError, path: Path, lines: list[str]) -> None:
    """An error a marketer can act on: the file, a line and column inside it, what was expected."""
    text = str(error)
    assert error.path == path, text
    assert text.startswith(f"{path}:{error.line}:{error.column}: "), text
    assert 1 <= error.line <= len(lines), f"line {error.line} of a file of {len(lines)} lines: {text}"
    assert 1 <= error.column <= len(lines[error.line - 1]) + 1, f"column past the end of line {error.line}: {text}"
    message = error.message
    assert "expected" in message or message.startswith("invalid YAML: "), text
    assert not any(word in message for word in _INTERNALS), text
    assert len(message) <= 1000, f"a message of {len(message):,} characters: {message[:300]}..."


_KINDS = (
    "invalid YAML", "not UTF-8", "unknown key", "missing key", "duplicate key", "unknown stage", "unknown step",
    "unreachable", "email template", "loop without a wait",
)  # fmt: skip


def kind_of(message: str) -> str:
    """A name for the kind of error, for the summary."""
    for phrase in _KINDS:
        if phrase in message:
            return phrase
    found = re.search(r"expected ([^,(':]{1,30})", message)
    return f"expected {found.group(1).strip()}" if found else message[:30]


@dataclass
class FileRun:
    inputs: int = 0
    loaded: int = 0
    rejected: int = 0
    slowest: tuple[float, str] = (0.0, "")
    kinds: Counter[str] = field(default_factory=Counter)
    kept: dict[str, bytes] = field(default_factory=dict)  # a few broken files for the command line, by kind

    def keep(self, file: FunnelFile, errors: list[FunnelError]) -> None:
        kind = f"{file.how.split(' ')[0]}|{kind_of(errors[0].message)}"
        if kind not in self.kept and len(self.kept) < 8:
            self.kept[kind] = file.content


def test_funnel_files_load_or_say_where_they_are_wrong(tmp_path: Path, fault_report: Report) -> None:
    work = tmp_path / "funnels"
    work.mkdir()
    no_templates = tmp_path / "emails"  # there, but empty: every `send` is an error located in the funnel file
    no_templates.mkdir()
    run = FileRun()
    memory_before = peak_memory_mb()

    @settings(max_examples=size(80, 5000), deadline=None, suppress_health_check=SLOW)
    # A quarter of the files meet an empty templates folder: each `send` is then an error in the funnel file.
    @given(file=funnel_files(), templates=st.sampled_from((False, False, False, True)))
    @example(FunnelFile(b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n" * 1, "laughs"), False)
    @example(
        FunnelFile(
            b"a: &a [x,x,x,x,x,x,x,x,x]\n"
            + b"".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n".encode() for i in range(7)
            ),
            "billion laughs: 9 ** 8 values in 8 lines (it took PyYAML's node walk seconds, then minutes)",
        ),
        False,
    )
    @example(FunnelFile(b"stages: " + b"[" * 5000 + b"]" * 5000, "deep nesting (a RecursionError)"), False)
    @example(FunnelFile(b"a: &a [*a]\n", "an alias inside its own anchor (a RecursionError)"), False)
    @example(FunnelFile(b"id: x\nallowed_lateness: " + b"9" * 5000 + b"\n", "more digits than int() reads"), False)
    @example(FunnelFile(b"id: 2026-13-45\nname: !!int abc\nx: !!timestamp 99999-01-01\n", "unbuildable"), False)
    @example(FunnelFile(b"id: x\x00\n", "a NUL character"), False)
    @example(FunnelFile(b"id: x\n\xff\xfename: y\n", "not UTF-8 on line 2"), False)
    @example(FunnelFile("".join(f"k{i}: {i}\n" for i in range(5000)).encode(), "5,000 unknown keys"), False)
    @example(
        FunnelFile(
            (ROOT / "funnels" / "lead-magnet.yaml").read_bytes().replace(b"wait: 28d", b"wait: 99999999999999999999w"),
            "a wait longer than a date can hold (an OverflowError)",
        ),
        False,
    )
    @example(
        FunnelFile(
            (ROOT / "funnels" / "lead-magnet.yaml").read_bytes().replace(b"wait: 28d", b"wait: 999999999d"),
            "a wait that loaded, then overflowed the journey's date arithmetic",
        ),
        False,
    )
    @example(
        FunnelFile(
            (ROOT / "funnels" / "lead-magnet.yaml").read_bytes().replace(b"score: 10}", b"score: 1.0e999}"),
            "an infinite score",
        ),
        False,
    )
    def check(file: FunnelFile, templates: bool) -> None:
        path = work / "funnel.yaml"
        path.write_bytes(file.content)
        started = time.perf_counter()
        with time_limit(EXAMPLE_LIMIT_S):
            result = load_funnels([path], emails_dir=no_templates if templates else None)
            if result.ok:
                [funnel] = result.funnels
                simulate(funnel, leads=3, days=45)
        elapsed = time.perf_counter() - started
        run.inputs += 1
        run.slowest = max(run.slowest, (elapsed, file.how[:80]))
        if result.ok:
            run.loaded += 1
            return
        run.rejected += 1
        lines = lines_of(file.content)
        for error in result.errors:
            check_error(error, path, lines)
            run.kinds[kind_of(error.message)] += 1
        run.keep(file, result.errors)

    check()
    memory_growth = peak_memory_mb() - memory_before
    assert memory_growth < MEMORY_GROWTH_LIMIT_MB, f"peak memory grew by {memory_growth:.0f} MB"

    # The command itself on a handful of the broken files at once: exactly what the loader said.
    files = []
    for n, content in enumerate(run.kept.values()):
        files.append(tmp_path / f"broken-{n}.yaml")
        files[-1].write_bytes(content)
    expected = [str(e) for e in load_funnels(files, emails_dir=no_templates).errors]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "validate", *map(str, files), "--emails", str(no_templates)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    cli_s = time.perf_counter() - started
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    printed = done.stderr.splitlines()
    assert printed == [*expected, f"{len(expected)} error(s) in {len(files)} file(s)"]
    assert all(re.match(r"^\S+\.yaml:\d+:\d+: \S", line) for line in printed[:-1])
    assert {line.split(":")[0] for line in printed[:-1]} == {str(f) for f in files}

    tally = Tally(scenario="fuzz: funnel files", faults=run.rejected)
    tally.notes.append(
        f"{run.inputs} inputs ({run.rejected} rejected with file:line:column errors, {run.loaded} loaded and"
        f" simulated), 0 crashes, 0 hangs; slowest {run.slowest[0]:.2f} s ({run.slowest[1]});"
        f" peak memory +{max(memory_growth, 0):.0f} MB"
    )
    tally.notes.append("most frequent errors: " + ", ".join(f"{k} ({n})" for k, n in run.kinds.most_common(6)))
    tally.notes.append(
        f"funnel validate on {len(files)} broken files: exit 1, {len(expected)} file:line:column lines as loaded,"
        f" no traceback ({cli_s:.1f} s)"
    )
    fault_report(tally)
