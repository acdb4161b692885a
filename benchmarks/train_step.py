"""Time one training step (forward + backward + Adam step of the full loss) over a grid of sizes.

cryodomain's step is timed through ``cryodomain.workflows.train.compute_losses`` with the model,
optimizer and step constants built as ``train()`` builds them, on synthetic particles held in
memory (images, poses, shifts, CTF). Each configuration runs in its own worker process, so the
peak RSS is that configuration's. With ``--reference`` the published cryoSPHERE
(``cryosphere==0.6.1``) is timed on the same inputs by ``reference_step.py`` running in its own
virtual environment, alternating step by step with cryodomain so that load on the machine hits
both alike, and the loss terms of both are compared on equal inputs, weights and random draws.

Models: ``example`` (the bundled example, 352 residues), the first 1000 or 5000 residues of
``../shared/data/6zu5.cif.gz``, the whole of it (``6zu5``, 14,000 residues with RNA) and
``20000`` (6zu5 plus a copy of its first 6,000 residues, 60 Å away along z).

Examples:
    .venv/bin/python benchmarks/train_step.py --quick
    .venv/bin/python benchmarks/train_step.py --models example 1000 --boxes 64 128 --batches 32 \
        --segments 10 20 --reference --reference-python /tmp/cryosphere-ref-venv/bin/python
    .venv/bin/python benchmarks/train_step.py --check --reference-python /tmp/cryosphere-ref-venv/bin/python
    git worktree add /tmp/before 914622f && .venv/bin/python benchmarks/train_step.py --quick --before /tmp/before
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cryodomain.allocator import keep_freed_memory
from cryodomain.io.particles import ParticleTable
from cryodomain.io.structure import AtomicModel, read_atomic_model
from cryodomain.physics.ctf import compute_ctf
from cryodomain.physics.imaging import form_images
from cryodomain.workflows.config import RunConfig
from cryodomain.workflows.data import ctf_parameters
from cryodomain.workflows.inputs import TrainingData
from cryodomain.workflows.objective import LOGGED_VALUES, betas_at, compute_losses
from cryodomain.workflows.optimization import set_l2_weight
from cryodomain.workflows.train import Trainer, train_step

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "src" / "cryodomain" / "data" / "example_state_a.pdb"
RIBOSOME = REPO.parent / "shared" / "data" / "6zu5.cif.gz"
# A step of the full loss at epoch 150 of 300: every schedule has a nonzero weight.
BENCH_EPOCH = 150


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _subset(model: AtomicModel, keep: np.ndarray) -> AtomicModel:
    """Residues ``keep`` of a model (atom arrays dropped: the step uses residues only)."""
    residue_fields = ("coords", "amplitudes", "chain_ids", "residue_numbers", "insertion_codes", "residue_names", "is_nucleotide")
    changes = {name: getattr(model, name)[keep] for name in residue_fields}
    changes.update(
        atom_coords=changes["coords"].copy(),
        atom_names=np.full(keep.size, "CA"),
        atom_elements=np.full(keep.size, "C"),
        atom_electrons=np.full(keep.size, 6.0),
        atom_residue_index=np.arange(keep.size),
    )
    return dataclasses.replace(model, **changes)


def load_structure(name: str) -> AtomicModel:
    """The benchmark model ``name`` (see the module docstring), centred on its residue centroid."""
    if name == "example":
        model = read_atomic_model(EXAMPLE)
    else:
        ribosome = read_atomic_model(RIBOSOME)
        if name == "6zu5":
            model = _subset(ribosome, np.arange(ribosome.n_residues))
        elif name == "20000":
            copy = _subset(ribosome, np.arange(6000))
            model = _subset(ribosome, np.arange(ribosome.n_residues))
            fields = ("coords", "amplitudes", "chain_ids", "residue_numbers", "insertion_codes", "residue_names", "is_nucleotide")
            joined = {f: np.concatenate([getattr(model, f), getattr(copy, f)]) for f in fields}
            joined["coords"][ribosome.n_residues :] += np.array([0.0, 0.0, 60.0])
            joined["chain_ids"][ribosome.n_residues :] = np.char.add("copy_", copy.chain_ids.astype(str))
            model = dataclasses.replace(model, **joined)
            model = _subset(model, np.arange(model.n_residues))
        else:
            model = _subset(ribosome, np.arange(int(name)))
    shift = model.coords.mean(axis=0)
    return dataclasses.replace(model, coords=model.coords - shift, atom_coords=model.atom_coords - shift)


def synthetic_inputs(structure: AtomicModel, box: int, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Particles for one step: noise images, uniform poses, small shifts, RELION-like CTF.

    The pixel size makes the box hold the model (10 Å margin), as a real dataset's box would.
    """
    rng = np.random.default_rng(seed)
    radius = float(np.linalg.norm(structure.coords, axis=1).max())
    apix = 2.0 * (radius + 10.0) / box
    quaternions = rng.normal(size=(batch, 4))
    quaternions /= np.linalg.norm(quaternions, axis=1, keepdims=True)
    x, y, z, w = quaternions.T
    rotations = np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )
    chains = {name: i for i, name in enumerate(dict.fromkeys(structure.chain_ids.tolist()))}
    defocus = rng.uniform(10000.0, 25000.0, batch)
    return {
        "coords": structure.coords.astype(np.float32),
        "amplitudes": structure.amplitudes.astype(np.float32),
        "chain_index": np.array([chains[c] for c in structure.chain_ids], dtype=np.int64),
        "continuity_pairs": structure.consecutive_pairs(),
        "box": np.array(box),
        "pixel_size_A": np.array(apix),
        "images": rng.normal(size=(batch, box, box)).astype(np.float32),
        "rotations": rotations.astype(np.float64),
        "shifts_A": rng.uniform(-3.0, 3.0, size=(batch, 2)) * apix,
        "defocus_u_A": defocus,
        "defocus_v_A": defocus - rng.uniform(0.0, 500.0, batch),
        "defocus_angle_rad": rng.uniform(0.0, np.pi, batch),
    }


def particle_table(inputs: dict[str, np.ndarray]) -> ParticleTable:
    n = len(inputs["images"])
    return ParticleTable(
        image_paths=np.full(n, "synthetic.mrcs"),
        image_indices=np.arange(n),
        rotations=inputs["rotations"],
        shifts_A=inputs["shifts_A"],
        defocus_u_A=inputs["defocus_u_A"],
        defocus_v_A=inputs["defocus_v_A"],
        defocus_angle_rad=inputs["defocus_angle_rad"],
        voltage_kv=np.full(n, 300.0),
        spherical_aberration_mm=np.full(n, 2.7),
        amplitude_contrast=np.full(n, 0.1),
        phase_shift_rad=np.zeros(n),
        bfactor_A2=np.zeros(n),
        pixel_size_A=np.full(n, float(inputs["pixel_size_A"])),
        image_size=np.full(n, int(inputs["box"])),
        optics_group=np.ones(n, dtype=np.int64),
        optics_group_names={1: "opticsGroup1"},
        source="synthetic",
    )


# ---------------------------------------------------------------------------------------------
# cryodomain's worker (one process per configuration)
# ---------------------------------------------------------------------------------------------


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class OurStep:
    """Model, optimizer and context built as ``train()`` builds them (:class:`Trainer`); one step is
    :func:`train_step`, the loop's own."""

    def __init__(self, structure: AtomicModel, inputs: dict, segments: int, clash: str, device: torch.device, model_options: dict | None = None) -> None:
        self.table = particle_table(inputs)
        box = int(inputs["box"])
        self.config = RunConfig.model_validate(
            {
                "model": {"n_segments": segments, **(model_options or {})},
                "loss": {"clash_mode": clash},
                "optim": {"batch_size": len(self.table), "device": device.type, "epochs": 2 * BENCH_EPOCH},
            }
        )
        data = TrainingData(self.table, structure, box, float(inputs["pixel_size_A"]), dataset=None)
        self.trainer = Trainer.build(data, self.config, 1.0, device)
        self.model, self.optimizer, self.context = self.trainer.model, self.trainer.optimizer, self.trainer.context
        self.betas = betas_at(self.config, BENCH_EPOCH)
        set_l2_weight(self.optimizer, self.betas["l2"])  # as train_epoch() does
        images = torch.as_tensor(inputs["images"])
        low, high = torch.aminmax(images.flatten(start_dim=1), dim=1)
        self.batch = {
            "index": torch.arange(len(self.table)),
            "images": images,
            "pixel_range": torch.stack([low, high], dim=1),
            "rotations": torch.as_tensor(inputs["rotations"]).float(),
            "shifts_A": torch.as_tensor(inputs["shifts_A"]).float(),
        }
        self.device = device

    def step(self) -> float:
        values, _, _ = train_step(self.trainer, self.batch, BENCH_EPOCH, 0, self.betas)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return values[LOGGED_VALUES[0]]

    def check_state(self, path: str, seed: int = 1234) -> dict[str, float]:
        """Loss terms on the inputs with fixed random draws; writes weights and draws to ``path``.

        The translation rows of the decoder's last layer are scaled up (x100, bias ~ 1 Å) first so
        that segments move by Å and some residue pairs clash: every term is then exercised. The
        rotation rows keep their small start values: the reference turns the quaternion ``(1, o)``
        into a rotation vector with ``roma.unitquat_to_rotvec`` without normalising it, which
        gives the angle ``2 atan|o| * sqrt(1 + |o|^2)`` instead of ``2 atan|o|`` (the published method, docs/method.md 6.2), equal
        only to second order in ``|o|``.
        """
        with torch.no_grad():
            last = self.model.decoder.network[-1]
            translation_rows = torch.arange(last.weight.shape[0]) % 6 >= 3
            last.weight[translation_rows] *= 100.0
            last.bias[translation_rows] = torch.randn(int(translation_rows.sum()))
            # Move the segmentation off its prior so that its three KL terms are not 0.
            seg = self.model.segmentation
            for mean in (seg.centre_mean, seg.width_mean, seg.proportion_mean):
                mean.add_(torch.randn_like(mean))
            for raw in (seg.centre_std_raw, seg.width_std_raw, seg.proportion_std_raw):
                raw.mul_(1.5)
            # Images of the base structure plus noise (SNR 1), so that the correlation is far from 0.
            n = len(self.table)
            ctf = compute_ctf(self.context.frame.freqs, ctf_parameters(self.table, np.arange(n)))
            base = self.model.base_coords.expand(n, -1, -1)
            clean = form_images(base, self.model.amplitudes, self.batch["rotations"], self.context.sigma_A, self.context.frame, ctf)
            generator = torch.Generator().manual_seed(seed)
            images = clean + clean.std() * torch.randn(clean.shape, generator=generator)
            self.batch["images"] = images
            torch.manual_seed(seed)
            batch = dict(self.batch, shifts_A=torch.zeros_like(self.batch["shifts_A"]))
            terms = compute_losses(self.model, batch, self.table, self.context, self.betas)
            torch.manual_seed(seed)
            mean = torch.zeros(len(self.table), self.config.model.latent_dim)
            noise_latent = torch.randn_like(mean)
            noise_segmentation = torch.randn((3, len(self.table), self.model.segmentation.n_segments))
        state = {"images": self.batch["images"].numpy(), "noise_latent": noise_latent.numpy(), "noise_segmentation": noise_segmentation.numpy()}
        for prefix, module in (("encoder", self.model.encoder.network), ("decoder", self.model.decoder.network)):
            linears = [layer for layer in module if isinstance(layer, torch.nn.Linear)]
            for i, layer in enumerate(linears):
                weight, bias = layer.weight.detach().numpy(), layer.bias.detach().numpy()
                if prefix == "decoder" and i == len(linears) - 1:
                    # cryodomain: (o, t) per segment; the reference: (t, o).
                    k = weight.shape[0] // 6
                    order = np.concatenate([[6 * s + 3, 6 * s + 4, 6 * s + 5, 6 * s, 6 * s + 1, 6 * s + 2] for s in range(k)])
                    weight, bias = weight[order], bias[order]
                state[f"{prefix}_w{i}"], state[f"{prefix}_b{i}"] = weight, bias
        seg = self.model.segmentation
        for name in ("centre_mean", "centre_std", "width_mean", "width_std", "proportion_mean", "proportion_std"):
            state[name] = getattr(seg, name).detach().numpy()
        state["clash_pairs"] = self.context.clash_pairs.numpy() if self.context.clash_pairs is not None else np.zeros((0, 2), np.int64)
        np.savez(path, **state)
        return {name: float(value) for name, value in terms.items()}


def worker_main(args: argparse.Namespace) -> None:
    if not args.system_allocator:
        keep_freed_memory()  # as train() does
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    inputs = dict(np.load(args.inputs, allow_pickle=False))
    structure = load_structure(args.model)
    device = torch.device(args.device)
    worker = OurStep(structure, inputs, args.segments, args.clash, device, json.loads(args.model_options))
    print(json.dumps({"ready": True, "rss_peak_mb": rss_peak_mb()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "quit":
            break
        if request["cmd"] == "steps":
            times, loss = [], math.nan
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for _ in range(request["n"]):
                start = time.perf_counter()
                loss = worker.step()
                times.append((time.perf_counter() - start) * 1e3)
            reply = {"ms": times, "loss": loss, "rss_peak_mb": rss_peak_mb()}
            if device.type == "cuda":
                reply["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            print(json.dumps(reply), flush=True)
        elif request["cmd"] == "check":
            terms = worker.check_state(request["state"])
            print(json.dumps(terms), flush=True)
        elif request["cmd"] == "projection":
            print(json.dumps(time_projection(worker, request["n"])), flush=True)


def time_projection(worker: OurStep, n: int) -> dict:
    """The dominant operation alone: the batched ``(N x R) @ (R x N)`` product, forward + backward."""
    batch, box = len(worker.table), worker.context.n_pixels
    box = int(round(math.sqrt(box)))
    n_residues = worker.model.base_coords.shape[0]
    left = torch.randn(batch, box, n_residues, requires_grad=True)
    right = torch.randn(batch, n_residues, box, requires_grad=True)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        out = torch.matmul(left, right)
        out.backward(torch.ones_like(out))
        times.append((time.perf_counter() - start) * 1e3)
        left.grad = right.grad = None
    return {"ms": times}


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


class Worker:
    """A worker subprocess answering one JSON line per request."""

    def __init__(self, command: list[str], env: dict | None = None) -> None:
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"worker {self.process.args[:3]} exited with status {code}")
        return json.loads(line)

    def ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write('{"cmd": "quit"}\n')
                self.process.stdin.flush()
            except BrokenPipeError:
                pass
            self.process.wait(timeout=60)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_config(args, model: str, box: int, batch: int, segments: int, device: str, inputs_path: Path) -> dict:
    """Time one configuration: warm-up, then ``--rounds`` rounds of ``--steps`` steps, alternating."""
    ours_cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--inputs",
        str(inputs_path),
        "--model",
        model,
        "--segments",
        str(segments),
        "--clash",
        args.clash,
        "--device",
        device,
        "--threads",
        str(args.threads),
        "--model-options",
        args.model_options,
    ] + (["--system-allocator"] if args.system_allocator else [])
    row = {"model": model, "box": box, "batch": batch, "segments": segments, "device": device, "load_before": _load()}
    ours = Worker(ours_cmd)
    row["residues"] = int(np.load(inputs_path)["coords"].shape[0])
    ref = before = None
    try:
        ours.ask({"cmd": "steps", "n": 1})  # warm-up (allocator, thread pools)
        if args.before:
            # The same worker from another source tree (its defaults, its code), e.g. a git worktree
            # of the commit to compare with: model options apply to ours only.
            tree = Path(args.before).resolve()
            before_cmd = [ours_cmd[0], str(tree / "benchmarks" / "train_step.py"), *ours_cmd[2 : ours_cmd.index("--model-options")]]
            before = Worker(before_cmd + (["--system-allocator"] if args.system_allocator else []), env=dict(os.environ, PYTHONPATH=str(tree / "src")))
            before.ask({"cmd": "steps", "n": 1})
        if args.reference and device == "cpu":
            betas = json.dumps(betas_at(RunConfig(), BENCH_EPOCH))
            ref_cmd = [
                args.reference_python,
                str(Path(__file__).resolve().with_name("reference_step.py")),
                "--inputs",
                str(inputs_path),
                "--batch",
                str(batch),
                "--segments",
                str(segments),
                "--clash",
                args.clash,
                "--betas",
                betas,
                "--threads",
                str(args.threads),
            ]
            ref = Worker(ref_cmd)
            ref.ask({"cmd": "steps", "n": 1})
        ours_ms, ref_ms, before_ms = [], [], []
        for _ in range(args.rounds):
            reply = ours.ask({"cmd": "steps", "n": args.steps})
            ours_ms += reply["ms"]
            row["loss"] = reply["loss"]
            row["rss_peak_mb"] = reply["rss_peak_mb"]
            if "cuda_max_allocated_mb" in reply:
                row["cuda_max_allocated_mb"] = reply["cuda_max_allocated_mb"]
            if ref is not None:
                reply = ref.ask({"cmd": "steps", "n": args.steps})
                ref_ms += reply["ms"]
                row["ref_rss_peak_mb"] = reply["rss_peak_mb"]
            if before is not None:
                before_ms += before.ask({"cmd": "steps", "n": args.steps})["ms"]
        row["ms"] = float(np.median(ours_ms))
        if before is not None:
            row["before_ms"] = float(np.median(before_ms))
            row["ours_over_before"] = row["ms"] / row["before_ms"]
        row["images_per_s"] = batch / row["ms"] * 1e3
        if ref is not None:
            row["ref_ms"] = float(np.median(ref_ms))
            row["ref_images_per_s"] = batch / row["ref_ms"] * 1e3
            row["ratio_ref_over_ours"] = row["ref_ms"] / row["ms"]
        if args.projection:
            row["projection_ms"] = float(np.median(ours.ask({"cmd": "projection", "n": max(2, args.steps)})["ms"]))
            row["step_over_projection"] = row["ms"] / row["projection_ms"]
    finally:
        for worker in (ours, ref, before):
            if worker is not None:
                worker.close()
    row["load_after"] = _load()
    return row


def run_check(args, tmp: Path) -> dict:
    """Loss terms of both implementations on equal inputs, weights and random draws."""
    structure = load_structure(args.check_model)
    inputs = synthetic_inputs(structure, args.check_box, args.check_batch, seed=1)
    inputs_path = tmp / "check_inputs.npz"
    np.savez(inputs_path, **inputs)
    ours = Worker(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "--inputs",
            str(inputs_path),
            "--model",
            args.check_model,
            "--segments",
            "10",
            "--clash",
            "full",
            "--device",
            "cpu",
        ]
    )
    try:
        state_path = tmp / "check_state.npz"
        our_terms = ours.ask({"cmd": "check", "state": str(state_path)})
    finally:
        ours.close()
    betas = json.dumps(betas_at(RunConfig(), BENCH_EPOCH))
    ref = Worker(
        [
            args.reference_python,
            str(Path(__file__).resolve().with_name("reference_step.py")),
            "--inputs",
            str(inputs_path),
            "--batch",
            str(args.check_batch),
            "--segments",
            "10",
            "--clash",
            "full",
            "--betas",
            betas,
        ]
    )
    try:
        ref_terms = ref.ask({"cmd": "check", "state": str(state_path), "coords_out": str(tmp / "ref_coords.npy")})
    finally:
        ref.close()
    n_pixels = ref_terms["n_pixels"]
    pairs = {
        "correlation": ("correlation", "correlation"),
        "latent_kl": ("latent_kl", "latent_kl"),
        "centres_kl": ("centres_kl", "centres_kl"),
        "widths_kl": ("widths_kl", "widths_kl"),
        "proportions_kl": ("proportions_kl", "proportions_kl"),
        "continuity": ("continuity", "continuity"),
        "clash (full)": ("clash", "clash_full"),
        "l2": ("l2", "l2"),
    }
    rows = []
    for label, (ours_name, ref_name) in pairs.items():
        a, b = our_terms[ours_name], ref_terms[ref_name]
        row = {"term": label, "ours": a, "reference": b, "rel_diff": abs(a - b) / max(abs(a), abs(b), 1e-30)}
        if label == "correlation":
            # The reference's std is the sample std (N - 1), the published method's the population std.
            corrected = b * n_pixels / (n_pixels - 1)
            row["reference_population_std"] = corrected
            row["rel_diff_population_std"] = abs(a - corrected) / max(abs(a), 1e-30)
        rows.append(row)
    return {
        "model": args.check_model,
        "box": args.check_box,
        "batch": args.check_batch,
        "segments": 10,
        "terms": rows,
        "reference_light_clash_batch_mean": ref_terms["clash_our_pairs_batch_mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["example", "1000", "5000", "6zu5", "20000"])
    parser.add_argument("--boxes", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--segments", nargs="+", type=int, default=[10, 20])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--clash", choices=["light", "full", "off"], default="light")
    parser.add_argument("--steps", type=int, default=1, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (ours, reference) per configuration")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--max-elements", type=float, default=2.0e8, help="skip configurations with batch*residues*box above this (memory, > 30 s/step on 2 cores)"
    )
    parser.add_argument("--projection", action="store_true", help="also time the batched projection product alone")
    parser.add_argument("--reference", action="store_true", help="also time the published cryoSPHERE")
    parser.add_argument("--reference-python", default="/tmp/cryosphere-ref-venv/bin/python")
    parser.add_argument("--check", action="store_true", help="compare the loss terms of both implementations on equal inputs")
    parser.add_argument("--check-model", default="example")
    parser.add_argument("--check-box", type=int, default=128)
    parser.add_argument("--check-batch", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="example model, box 64, batch 32, 20 segments")
    parser.add_argument("--system-allocator", action="store_true", help="time cryodomain without keep_freed_memory() (glibc defaults)")
    parser.add_argument("--model-options", default="{}", help='JSON merged into the "model" config section, e.g. \'{"gaussian_at": "split"}\'')
    parser.add_argument(
        "--before", default=None, help="also time the step of another source tree (e.g. a git worktree of an older commit), alternating with ours"
    )
    parser.add_argument("--json", default=None, help="append result rows (JSON lines) to this file")
    # Worker mode (internal).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.segments = args.segments[0] if isinstance(args.segments, list) else args.segments
        worker_main(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.models, args.boxes, args.batches, args.segments = ["example"], [64], [32], [20]
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    out = open(args.json, "a") if args.json else None
    header = {
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
        "load": _load(),
    }
    print(json.dumps(header), flush=True)
    if out:
        out.write(json.dumps(header) + "\n")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.check:
            result = run_check(args, tmp)
            print(json.dumps(result), flush=True)
            if out:
                out.write(json.dumps({"check": result}) + "\n")
        structures: dict[str, AtomicModel] = {}
        for model in [] if args.check and not args.reference and args.models == parser.get_default("models") else args.models:
            structures.setdefault(model, load_structure(model))
            for box in args.boxes:
                for batch in args.batches:
                    elements = batch * structures[model].n_residues * box
                    inputs_path = tmp / f"{model}_{box}_{batch}.npz"
                    if elements <= args.max_elements:
                        np.savez(inputs_path, **synthetic_inputs(structures[model], box, batch))
                    for segments in args.segments:
                        for device in devices:
                            if elements > args.max_elements:
                                row = {
                                    "model": model,
                                    "residues": structures[model].n_residues,
                                    "box": box,
                                    "batch": batch,
                                    "segments": segments,
                                    "device": device,
                                    "skipped": f"batch*residues*box = {elements:.2e} > {args.max_elements:.2g}",
                                }
                            else:
                                row = run_config(args, model, box, batch, segments, device, inputs_path)
                            print(json.dumps(row), flush=True)
                            if out:
                                out.write(json.dumps(row) + "\n")
                                out.flush()
    if out:
        out.close()


if __name__ == "__main__":
    main()
