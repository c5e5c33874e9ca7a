"""CSV import speed: a generated file of leads into a fresh SQLite database, the way `funnel import` does it
(check pass, which keeps the parsed good rows, then batched writes).

    python benchmarks/import_csv.py [--rows 100000] [--funnel] [--keep]

Prints rows/s and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.runtime import importer  # noqa: E402
from engine.store.database import create_engine_for, upgrade  # noqa: E402

ZONES = ("Europe/London", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "first_name", "last_name", "company", "tags", "timezone", "employees"])
        for i in range(rows):
            writer.writerow(
                [
                    f"Lead.{i}@Company{i % 500}.example",
                    f"First{i}",
                    f"Last{i}",
                    f"Company {i % 500} Ltd",
                    "imported;trade-show" if i % 3 else "imported",
                    ZONES[i % len(ZONES)],
                    str(i % 300),
                ]
            )


def run(rows: int, folder: Path, funnel: bool = False) -> dict[str, Any]:
    """Generate a file of `rows` leads in `folder` and import it into a fresh SQLite file there, as
    `funnel import` does; returns the figures."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "leads.csv"
    generate(csv_path, rows)
    url = f"sqlite:///{folder / 'funnel.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    result = importer.ImportResult()
    options = importer.ImportOptions(
        source="import leads.csv", funnel="bench" if funnel else None, now=datetime.now(UTC)
    )
    started = time.perf_counter()
    with importer.Parsed() as parsed:
        importer.check_file(csv_path, result, keep=parsed)
        checked = time.perf_counter()
        importer.import_parsed(engine, parsed, options, result)
    elapsed = time.perf_counter() - started
    engine.dispose()
    assert result.bad_total == 0 and result.imported == rows, result
    return {
        "import_rows_per_s": round(rows / elapsed),
        "rows": rows,
        "megabytes": round(csv_path.stat().st_size / 1e6, 1),
        "seconds": round(elapsed, 2),
        "check_s": round(checked - started, 2),
        "events": result.events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--funnel", action="store_true", help="Also record a lead_imported event per lead.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory.")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="funnel-import-bench-"))
    try:
        r = run(args.rows, folder, args.funnel)
        print(
            f"{r['rows']} rows ({r['megabytes']:.1f} MB) in {r['seconds']:.2f} s: "
            f"check pass {r['check_s']:.2f} s, write pass {r['seconds'] - r['check_s']:.2f} s"
        )
        print(f"{r['import_rows_per_s']:,} rows/s; events recorded {r['events']}; peak RSS {peak_rss_mb():.0f} MB")
        print(
            json.dumps(
                {
                    "import_rows_per_s": r["import_rows_per_s"],
                    "rows": r["rows"],
                    "events": r["events"],
                    "peak_rss_mb": round(peak_rss_mb(), 1),
                }
            )
        )
    finally:
        if args.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
