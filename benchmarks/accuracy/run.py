"""Accuracy benchmark: simulate, train and evaluate on conformation series, one JSON line per run.

For each dataset x SNR x seed, in OUT/DATASET/snr_S/seed_N:

    cryodomain simulate CONF/DATASET.pdb -o D/sim --n-images N --box B --apix A --snr S --atoms all --seed SEED
    cryodomain train D/sim/particles.star --structure CONF/DATASET_state0.pdb -o D/run [--config CFG] [--epochs E] --seed SEED --force
    cryodomain evaluate D/run --truth D/sim/truth.npz -o D/eval

then the run's median per-image CA RMSD, the references' (baseline, best single structure,
piecewise-rigid limit) and the wall time of training are appended to the results file as one JSON
line, with the machine, the versions, the commit and the commands. ``--table`` prints the Markdown
table of RESULTS.md (medians over seeds) from that file.

Examples (from the repository root):

    .venv/bin/python benchmarks/accuracy/run.py --build                 # build the data, run everything
    .venv/bin/python benchmarks/accuracy/run.py --quick                 # pipeline check, a few minutes
    .venv/bin/python benchmarks/accuracy/run.py --datasets anm --snr 0.1 --seeds 0 --config src/cryodomain/data/demo.yaml
    .venv/bin/python benchmarks/accuracy/run.py --table                 # Markdown table of results.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_conformations  # noqa: E402  (the sibling script: file names and the builder)

logger = logging.getLogger("accuracy")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ROOT = Path("/tmp/cryodomain_accuracy")
RESULTS = HERE / "results.jsonl"
DATASETS = make_conformations.SERIES
# Pixel size per dataset (Å) at the default box of 64: 128 Å holds both proteins (atoms within
# 42 Å of the centre in every state, see the series' JSON), checked at run time by check_box.
APIX_A = {"hinge": 2.0, "anm": 2.0, "two_state": 2.0}
# Room the box needs beyond the structure's diameter: simulate's shifts (±4 Å) and the Gaussian
# tails (3 sigma of 2 Å), on both sides.
BOX_MARGIN_A = 2 * (4.0 + 3 * 2.0)
# --quick: the pipeline end to end in a few minutes on 2 CPU cores.
QUICK = {"datasets": ["hinge"], "n_images": 500, "snr": ["0.1"], "seeds": [0], "epochs": 3}
# The ratio run/limit is not shown below this limit (a rigid motion the segments can follow exactly).
MIN_LIMIT_A = 0.01


@dataclass(frozen=True)
class RunSpec:
    """One benchmark run: a dataset at one SNR and seed, with the simulation and training settings."""

    dataset: str
    snr: str
    seed: int
    n_images: int
    box: int
    apix: float
    epochs: int | None
    config: str | None

    def folder(self, out: Path) -> Path:
        """``OUT/DATASET/snr_S/seed_N``."""
        return out / self.dataset / f"snr_{self.snr}" / f"seed_{self.seed}"


def cryodomain_command() -> list[str]:
    """The ``cryodomain`` executable beside this Python, else ``python -m cryodomain``."""
    script = Path(sys.executable).parent / "cryodomain"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cryodomain"]


def commands(spec: RunSpec, conformations: Path, out: Path) -> dict[str, list[str]]:
    """The simulate, train and evaluate command lines of one run."""
    cli, folder = cryodomain_command(), spec.folder(out)
    paths = make_conformations.series_paths(conformations, spec.dataset)
    simulate = cli + [
        "simulate",
        str(paths["states"]),
        "-o",
        str(folder / "sim"),
        "--n-images",
        str(spec.n_images),
        "--box",
        str(spec.box),
        "--apix",
        str(spec.apix),
        "--snr",
        spec.snr,
        "--atoms",
        "all",
        "--seed",
        str(spec.seed),
    ]
    train = cli + ["train", str(folder / "sim" / "particles.star"), "--structure", str(paths["state0"]), "-o", str(folder / "run")]
    if spec.config is not None:
        train += ["--config", spec.config]
    if spec.epochs is not None:
        train += ["--epochs", str(spec.epochs)]
    train += ["--seed", str(spec.seed), "--force"]
    evaluate = cli + ["evaluate", str(folder / "run"), "--truth", str(folder / "sim" / "truth.npz"), "-o", str(folder / "eval")]
    return {"simulate": simulate, "train": train, "evaluate": evaluate}


def ensure_conformations(conformations: Path, datasets: list[str], rebuild: bool) -> dict[str, dict]:
    """The series' JSON records; builds the series that are missing (all of them with ``rebuild``)."""
    missing = [name for name in datasets if rebuild or not all(p.is_file() for p in make_conformations.series_paths(conformations, name).values())]
    if missing:
        logger.info("building %s in %s", ", ".join(missing), conformations)
        make_conformations.build(conformations, missing)
    return {name: json.loads(make_conformations.series_paths(conformations, name)["info"].read_text()) for name in datasets}


def check_box(dataset: str, info: dict, box: int, apix: float) -> None:
    """Refuse a box that does not hold every state of the series with ``BOX_MARGIN_A`` to spare."""
    needed = 2 * info["max_atom_distance_from_origin_A"] + BOX_MARGIN_A
    if box * apix <= needed:
        raise SystemExit(f"{dataset}: box {box} x {apix} A = {box * apix:.0f} A does not hold the series (needs > {needed:.0f} A); raise --box")


def run_logged(command: list[str], log: Path) -> float:
    """Run ``command`` with its output in ``log``; its wall time in seconds. Raises on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO).returncode
    elapsed = time.perf_counter() - start
    if status != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"exit status {status}: {shlex.join(command)}\n(last lines of {log})\n{tail}")
    return elapsed


def results_from_summary(summary: dict) -> dict:
    """Run and reference RMSD statistics (median, mean, p90, Å) from an evaluate ``summary.json``."""
    references = summary["references"]
    results = {"run": summary["rmsd_A"]} | {name: references[name]["rmsd_A"] for name in ("baseline", "best_single", "rigid_limit")}
    results["rigid_limit_segments"] = references["rigid_limit"]["n_segments"]
    results["rigid_limit_exact"] = references["rigid_limit"]["exact"]
    results["estimate"] = summary.get("estimate", "expected")  # summaries before f1d39e6 had only that one
    return results


def _git(*args: str) -> subprocess.CompletedProcess:
    """A read-only git command in the repository, its output captured."""
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def environment() -> dict:
    """Machine, versions and commit, recorded with every run."""
    return {
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "cryodomain": version("cryodomain"),
        "commit": _git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown",
        # Tracked files differ from the commit (exit status 1); untracked files are not counted.
        "uncommitted_changes": _git("diff", "--quiet", "HEAD").returncode == 1,
    }


def config_digest(config: str | None) -> str | None:
    """SHA-256 of the configuration file's content (None without one)."""
    return hashlib.sha256(Path(config).read_bytes()).hexdigest() if config else None


def execute(spec: RunSpec, conformations: Path, out: Path, info: dict, context: dict) -> dict:
    """Simulate, train and evaluate one run; returns its JSON record."""
    folder, lines = spec.folder(out), commands(spec, conformations, out)
    logger.info("%s snr %s seed %d: simulating, training, evaluating in %s", spec.dataset, spec.snr, spec.seed, folder)
    wall = {name: run_logged(command, folder / f"{name}.log") for name, command in lines.items()}
    summary = json.loads((folder / "eval" / "summary.json").read_text())
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **context,
        **asdict(spec),
        "config_sha256": config_digest(spec.config),
        "n_conformations": info["n_states"],
        "ca_rmsd_last_to_first_A": info["ca_rmsd_last_to_first_A"],
        "folder": str(folder),
        "commands": {name: shlex.join(command) for name, command in lines.items()},
        "wall_s": wall,
        "train_wall_s": wall["train"],
        "results": results_from_summary(summary),
    }


def plan(args: argparse.Namespace) -> list[RunSpec]:
    """Every dataset x SNR x seed of the arguments."""
    config = str(Path(args.config).resolve()) if args.config else None
    return [
        RunSpec(dataset, snr, seed, args.n_images, args.box, args.apix or APIX_A[dataset], args.epochs, config)
        for dataset in args.datasets
        for snr in args.snr
        for seed in args.seeds
    ]


def run_all(args: argparse.Namespace) -> list[dict]:
    """Build what is missing, run every planned run (``--jobs`` at a time), append each record."""
    infos = ensure_conformations(args.conformations, args.datasets, args.build)
    specs = plan(args)
    for spec in specs:
        check_box(spec.dataset, infos[spec.dataset], spec.box, spec.apix)
    context = environment() | {"benchmark_command": shlex.join([sys.executable, *sys.argv]), "quick": args.quick}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def one(spec: RunSpec) -> dict:
        record = execute(spec, args.conformations, args.out, infos[spec.dataset], context)
        with lock, args.results.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        return record

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        return list(pool.map(one, specs))


def load_records(path: Path, commit: str | None) -> list[dict]:
    """Records of ``path``; of ``commit`` only (default: the commit of the last record; 'all': every one)."""
    if not path.is_file():
        raise SystemExit(f"{path}: no results yet (run the benchmark first, or pass --results)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if commit is None and records:
        commit = records[-1]["commit"]
    return records if commit == "all" else [r for r in records if r["commit"] == commit]


def _cell(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table(records: list[dict]) -> str:
    """Markdown table, one row per dataset x SNR x images x epochs x config, medians over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        key = (record["dataset"], record["snr"], record["n_images"], record["box"], record["apix"], record["epochs"], record["config"])
        groups.setdefault(key, []).append(record)

    def median(rows: list[dict], name: str) -> float:
        return statistics.median(row["results"][name]["median"] for row in rows)

    lines = [
        "| dataset | SNR | images | box x Å | epochs | config | seeds | run median RMSD (Å) | rigid limit (Å) | best single (Å) | baseline (Å) | run/limit | run/best single | train (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, snr, n_images, box, apix, epochs, config), rows in groups.items():
        run, limit, single, baseline = (median(rows, name) for name in ("run", "rigid_limit", "best_single", "baseline"))
        ratio_limit = run / limit if limit >= MIN_LIMIT_A else None
        cells = [
            dataset,
            snr,
            str(n_images),
            f"{box} x {apix:g}",
            "default" if epochs is None else str(epochs),
            Path(config).name if config else "default",
            str(len(rows)),
            _cell(run),
            _cell(limit),
            _cell(single),
            _cell(baseline),
            _cell(ratio_limit),
            _cell(run / single),
            _cell(statistics.median(row["train_wall_s"] for row in rows) / 60, 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    machines = sorted({f"{r['machine']}, {r['cpu_count']} CPUs, torch {r['torch']}" for r in records})
    commits = sorted({r["commit"] + (" (with uncommitted changes)" if r.get("uncommitted_changes") else "") for r in records})
    header = [f"- machine: {'; '.join(machines)}", f"- commit: {', '.join(commits)}"]
    header += [f"- command: `{command}`" for command in sorted({r["benchmark_command"] for r in records})]
    footer = [f"run/limit is not shown where the limit is below {MIN_LIMIT_A} Å (a motion the segments follow exactly)."]
    return "\n".join(header + [""] + lines + [""] + footer)


def snr_value(text: str) -> str:
    """An SNR as given on the command line (a positive number or 'inf'), kept as text for folder names."""
    try:
        valid = float(text) > 0
    except ValueError:
        valid = False
    if not valid:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number or 'inf'")
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with ``--quick``'s settings applied."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:])
    )
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), help="default: all")
    parser.add_argument(
        "--snr", nargs="+", type=snr_value, default=["inf", "0.1", "0.01"], help="signal/noise variance ratios, 'inf' for noise-free (default: %(default)s)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="simulation and training seeds (default: %(default)s)")
    parser.add_argument("--n-images", type=int, default=5000, help="default: %(default)s")
    parser.add_argument("--box", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--apix", type=float, help=f"pixel size in Å (default per dataset: {APIX_A})")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the train default)")
    parser.add_argument("--config", help="training YAML (default: the train defaults)")
    parser.add_argument("--out", type=Path, help=f"run folders (default {ROOT}/runs, with --quick {ROOT}/quick)")
    parser.add_argument("--conformations", type=Path, default=make_conformations.DEFAULT_OUT, help="series folder (default: %(default)s)")
    parser.add_argument("--results", type=Path, help=f"JSON lines file (default {RESULTS.relative_to(REPO)}, with --quick OUT/results.jsonl)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default: %(default)s)")
    parser.add_argument("--build", action="store_true", help="(re)build the conformation series first (missing ones are always built)")
    parser.add_argument("--quick", action="store_true", help=f"pipeline check: {QUICK}")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of the results file and exit")
    parser.add_argument("--commit", help="with --table: records of this commit ('all': every one; default: the last record's)")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    args.conformations = args.conformations.resolve()
    args.out = (args.out or ROOT / ("quick" if args.quick else "runs")).resolve()
    args.results = args.results or (args.out / "results.jsonl" if args.quick else RESULTS)
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or print the table) as the command line asks."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s  %(message)s", datefmt="%H:%M:%S")
    if args.table:
        print(table(load_records(args.results, args.commit)))
        return
    records = run_all(args)
    logger.info("appended %d records to %s", len(records), args.results)
    print(table(records))


if __name__ == "__main__":
    main()
