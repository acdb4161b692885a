"""Regenerate docs/report.png: a report opened in headless Chromium, from one section to another.

Uses the browser test's driver (tests/commands/headless_chromium.py: Chromium and websocket-client).

Example (the demo's report, as in the README):
    make demo
    .venv/bin/python tools/report_screenshot.py demo_output/analysis/report.html -o docs/report.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "commands"))

from headless_chromium import Chromium, find_chromium  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="report.html")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/report.png"))
    parser.add_argument("--first", default="latent", help="id of the first section shown (default %(default)s)")
    parser.add_argument("--last", default="trajectories", help="id of the last section shown (default %(default)s)")
    parser.add_argument("--width", type=int, default=1400, help="window width, CSS pixels (default %(default)s)")
    args = parser.parse_args()
    program = find_chromium()
    if program is None:
        sys.exit("no chromium on the PATH (Debian: apt-get install chromium)")
    with Chromium(program, width=args.width) as browser:
        browser.open(args.report)
        browser.wait_until("Array.from(document.querySelectorAll('.plotly-graph-div')).every(d => d._fullLayout)")
        time.sleep(1.0)  # WebGL scenes draw on the next frames
        errors = browser.errors()
        if errors:
            sys.exit("the page reported errors:\n" + "\n".join(errors))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_bytes(browser.sections_screenshot(args.first, args.last))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
