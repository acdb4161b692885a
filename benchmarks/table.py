"""Print the Markdown table of RESULTS.md from the JSON lines that ``train_step.py --json`` wrote.

Example:
    python benchmarks/table.py results.jsonl [more.jsonl ...]
"""

from __future__ import annotations

import json
import sys

COLUMNS = (
    "model",
    "residues",
    "box",
    "batch",
    "segments",
    "ours ms/step",
    "ours img/s",
    "ref ms/step",
    "ref img/s",
    "ref/ours",
    "projection ms",
    "step/projection",
    "peak RSS ours / ref (MB)",
    "load before",
)


def row_cells(row: dict) -> list[str]:
    """The table cells of one configuration (``-`` where a value was not measured)."""
    if "skipped" in row:
        return [row["model"], str(row["residues"]), str(row["box"]), str(row["batch"]), str(row["segments"]), f"skipped: {row['skipped']}"] + [""] * (
            len(COLUMNS) - 6
        )

    def number(key: str, digits: int = 0) -> str:
        return f"{row[key]:.{digits}f}" if key in row else "-"

    rss = f"{row['rss_peak_mb']:.0f} / {row['ref_rss_peak_mb']:.0f}" if "ref_rss_peak_mb" in row else f"{row['rss_peak_mb']:.0f}"
    return [
        row["model"],
        str(row["residues"]),
        str(row["box"]),
        str(row["batch"]),
        str(row["segments"]),
        number("ms"),
        number("images_per_s", 1),
        number("ref_ms"),
        number("ref_images_per_s", 1),
        number("ratio_ref_over_ours", 2),
        number("projection_ms", 1),
        number("step_over_projection", 1),
        rss,
        row["load_before"],
    ]


def main(paths: list[str]) -> None:
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for path in paths:
        with open(path) as handle:
            for line in handle:
                row = json.loads(line)
                if "model" in row and ("ms" in row or "skipped" in row):
                    print("| " + " | ".join(row_cells(row)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
