"""Render a run's HTML report and photograph it in headless Chromium (Debian's `chromium` package).

    python benchmarks/report_screenshot.py RUN_DIR [--out report.png] [--width 1280] [--height 4000]

Writes RUN_DIR/report.html (`dermabench report`), then opens it from disk with networking
disabled (`--no-proxy-server`, a proxy pointing nowhere) so a report that needed the network would
show broken images, and saves the screenshot. Exit status 2 when Chromium is not installed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from dermabench.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 4000, browser: str | None = None) -> Path:
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError(f"no headless browser found (tried {', '.join(BROWSERS)}); apt-get install chromium")
    png = png.resolve()
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
            f"--window-size={width},{height}", f"--screenshot={png}", html.resolve().as_uri(),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    if not png.is_file():
        raise RuntimeError(f"{browser} wrote no screenshot to {png}")
    return png


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default RUN_DIR/report_screenshot.png)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=4000)
    args = parser.parse_args()
    html = write_report(args.run_dir)
    try:
        png = screenshot(html, args.out or args.run_dir / "report_screenshot.png", args.width, args.height)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {html}\nscreenshot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
