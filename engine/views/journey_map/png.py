"""The customer journey map as a PNG, for a slide or a pull request: the HTML page photographed by a
headless Chromium through its command line (no Python dependency, no browser download).

The command line takes a screenshot of a window of a given size, so the page is first opened once with
a one-line script that writes its height into the DOM (`--dump-dom`), then photographed at that height.
The PNG's page itself has no script.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL_HINT = "install Chromium (Debian/Ubuntu: apt-get install chromium) or Google Chrome"
MAX_HEIGHT = 16_000  # Chromium's screenshots stop being reliable past about 16k pixels
TIMEOUT_S = 60.0
_MEASURE = (
    "<script>document.documentElement.setAttribute('data-height',"
    " String(Math.ceil(document.documentElement.scrollHeight)))</script>"
)


class BrowserError(RuntimeError):
    """No browser to render with, or the browser failed; the message says what to do."""


def find_browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def page_width(columns: int) -> int:
    """Wide enough for every stage column to stay readable."""
    return max(1280, 140 + 290 * columns)


def render(html: str, out: Path, width: int, browser: str | None = None) -> tuple[int, int]:
    """Write `html` as a PNG of `width` pixels and the page's full height to `out`; its size back."""
    executable = browser or find_browser()
    if executable is None:
        raise BrowserError(f"no Chromium or Chrome found (looked for {', '.join(BROWSERS)}): {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="funnel-map-") as tmp:
        folder = Path(tmp)
        measure = folder / "measure.html"
        measure.write_text(html.replace("</body>", _MEASURE + "</body>", 1), encoding="utf-8")
        dom = _run(executable, folder, width, 800, "--dump-dom", measure.as_uri())
        found = re.search(r'data-height="(\d+)"', dom)
        if found is None:
            raise BrowserError(f"{executable} opened the page but did not report its height")
        height = min(max(int(found.group(1)), 200), MAX_HEIGHT)
        page = folder / "map.html"
        page.write_text(html, encoding="utf-8")
        shot = folder / "map.png"
        _run(executable, folder, width, height, f"--screenshot={shot}", page.as_uri())
        if not shot.is_file():
            raise BrowserError(f"{executable} wrote no screenshot")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, out)
    return png_size(out.read_bytes())


def _run(executable: str, folder: Path, width: int, height: int, *args: str) -> str:
    command = [
        executable,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--no-default-browser-check",
        "--force-device-scale-factor=1",
        f"--user-data-dir={folder / 'profile'}",
        f"--window-size={width},{height}",
        *args,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to start its sandbox as root
    try:
        # The command is ours: a browser found on PATH, our flags, and a file we just wrote.
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)  # noqa: S603
    except subprocess.TimeoutExpired:
        raise BrowserError(f"{executable} did not finish within {TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise BrowserError(f"cannot run {executable}: {exc}") from None
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])
        raise BrowserError(f"{executable} failed (exit {done.returncode}): {tail}")
    return done.stdout


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header; ValueError if it is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


__all__ = ["BrowserError", "find_browser", "page_width", "png_size", "render"]
