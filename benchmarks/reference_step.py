"""Worker that times the published cryoSPHERE (PyPI ``cryosphere==0.6.1``) one training step at a time.

Runs inside the reference's own virtual environment, never in cryodomain's: ``train_step.py
--reference`` starts it with ``--reference-python`` and drives it over stdin/stdout (one JSON
object per line), alternating with cryodomain's worker. It only *calls* the reference's public
model functions, in the order of the loop body of its ``cryosphere_train.py`` (translate images,
encode, sample segmentation, decode, deform, pose, project, CTF, ``compute_loss``, backward, Adam
step), because its training entry point needs CUDA and NCCL.

Commands (stdin, one JSON per line):
    {"cmd": "steps", "n": k}   -> {"ms": [...], "loss": float, "rss_peak_mb": float}
    {"cmd": "check", "state": path}  -> the loss terms on the inputs, weights and noise in ``path``
    {"cmd": "quit"}

Usage (normally via train_step.py):
    /tmp/cryosphere-ref-venv/bin/python benchmarks/reference_step.py --inputs INPUTS.npz \
        --batch 32 --segments 20 --clash light
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import types


def _torchvision_stand_in() -> None:
    """The reference imports ``torchvision.transforms.functional`` (only ``resize``, for
    downsampling, unused here) without declaring torchvision; the PyPI wheel does not load beside
    the CPU torch, so give the import a module that refuses to be used."""

    def resize(*args, **kwargs):
        raise NotImplementedError("torchvision stand-in: downsampling is not used by the benchmark")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize = resize
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    sys.modules.setdefault("torchvision", torchvision)
    sys.modules.setdefault("torchvision.transforms", transforms)
    sys.modules.setdefault("torchvision.transforms.functional", functional)


_torchvision_stand_in()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from cryosphere.model import renderer  # noqa: E402
from cryosphere.model import utils as ref_utils  # noqa: E402
from cryosphere.model.ctf import CTF  # noqa: E402
from cryosphere.model.gmm import EMAN2Grid, Gaussian  # noqa: E402
from cryosphere.model.loss import (  # noqa: E402
    calc_clash_loss,
    calc_cor_loss,
    calc_dist_by_pair_indices,
    calc_pair_dist_loss,
    compute_clashing_distances,
    compute_KL_prior_latent,
    compute_KL_prior_segments,
    compute_l2_pen,
    compute_loss,
    find_range_cutoff_pairs,
    remove_duplicate_pairs,
)
from cryosphere.model.mlp import MLP  # noqa: E402
from cryosphere.model.segmentation import Segmentation  # noqa: E402
from cryosphere.model.vae import VAE  # noqa: E402

LATENT_DIM = 8
ENCODER_HIDDEN = [512, 256, 64, 64]
DECODER_HIDDEN = [512, 512]
SIGMA_A = 2.0


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class ReferenceStep:
    """The reference's model pieces built once, as its ``parse_yaml`` builds them."""

    def __init__(self, inputs: dict, batch: int, n_segments: int, clash: str, betas: dict) -> None:
        device = "cpu"
        coords = inputs["coords"].astype(np.float32)
        n_residues = coords.shape[0]
        box = int(inputs["box"])
        apix = float(inputs["pixel_size_A"])
        self.box, self.batch = box, batch
        self.images = torch.as_tensor(inputs["images"][:batch], dtype=torch.float32)
        self.rotations = torch.as_tensor(inputs["rotations"][:batch], dtype=torch.float32)
        self.shifts = torch.as_tensor(inputs["shifts_A"][:batch], dtype=torch.float32)
        self.indexes = torch.arange(batch)

        self.segmentation_config = {"part1": {"N_segm": n_segments, "all_protein": True}}
        encoder = MLP(box * box, LATENT_DIM * 2, ENCODER_HIDDEN, network_type="encoder", device=device)
        decoder = MLP(LATENT_DIM, n_segments * 6, DECODER_HIDDEN, network_type="decoder", device=device)
        self.vae = VAE(encoder, decoder, device, self.segmentation_config, latent_dim=LATENT_DIM, N_images=batch, amortized=True)
        self.segmenter = Segmentation(self.segmentation_config, np.arange(n_residues), inputs["chain_index"], device=device, tau_segmentation=0.05)
        self.grid = EMAN2Grid(box, apix, device=device)
        self.gmm = Gaussian(
            torch.as_tensor(coords),
            torch.ones((n_residues, 1), dtype=torch.float32) * SIGMA_A,
            torch.as_tensor(inputs["amplitudes"], dtype=torch.float32)[:, None],
        )
        n = batch
        self.ctf = CTF(
            np.full(n, box),
            np.full(n, apix),
            inputs["defocus_u_A"][:n].astype(np.float64),
            inputs["defocus_v_A"][:n].astype(np.float64),
            np.degrees(inputs["defocus_angle_rad"][:n]).astype(np.float64),
            np.full(n, 300.0),
            np.full(n, 2.7),
            np.full(n, 0.1),
            phaseShift=np.zeros(n),
            bfactor=np.zeros(n),
            device=device,
        )
        self.translator = ref_utils.SpatialGridTranslate(box, device=device)
        self.lp_mask2d = torch.from_numpy(ref_utils.low_pass_mask2d(box, apix, None)).float()
        # Its dataset divides the model images by the std of the data's Fourier coefficients; the
        # inputs are already scaled, so 1 (the correlation is scale-free).
        self.f_std = 1.0

        connect = inputs["continuity_pairs"].astype(np.int64)
        self.structural = {
            "connect_pairs": torch.as_tensor(connect),
            "connect_distances": torch.as_tensor(calc_dist_by_pair_indices(coords, connect), dtype=torch.float32),
            "clash_pairs": None,
        }
        if clash == "light":
            pairs = remove_duplicate_pairs(find_range_cutoff_pairs(coords, 4.0, 10.0), connect)
            self.structural["clash_pairs"] = torch.as_tensor(pairs, dtype=torch.long)
        self.settings = {
            "epsilon_kl": "1e-8",
            "segmentation_prior": self.segmenter.segmentation_prior,
            "N_epochs": 300,
            "loss": {
                "KL_prior_latent": {"schedule": "constant", "beta": betas["latent_kl"]},
                "KL_prior_segmentation_mean": {"schedule": "constant", "beta": betas["centres_kl"]},
                "KL_prior_segmentation_std": {"schedule": "constant", "beta": betas["widths_kl"]},
                "KL_prior_segmentation_proportions": {"schedule": "constant", "beta": betas["proportions_kl"]},
                "l2_pen": {"schedule": "constant", "beta": betas["l2"]},
                "continuity_loss": {"schedule": "constant", "beta": betas["continuity"]},
                "clashing_loss": {"schedule": "constant", "beta": betas["clash"], "clashing_cutoff": 4.0},
            },
        }
        params = [{"params": p, "lr": 3e-4} for p in self.segmenter.parameters()]
        params.append({"params": self.vae.encoder.parameters(), "lr": 3e-5})
        params.append({"params": self.vae.decoder.parameters(), "lr": 3e-5})
        self.optimizer = torch.optim.Adam(params)

    def forward(self):
        """The reference loop body up to the loss (cryosphere_train.py), returning the pieces."""
        images = self.images
        translated = self.translator.transform(images, self.shifts[:, None, :])
        lp_translated = ref_utils.low_pass_images(translated, self.lp_mask2d)
        latent, latent_mean, latent_std = self.vae.sample_latent(images.flatten(start_dim=-2))
        segmentation = self.segmenter.sample_segments(images.shape[0])
        quaternions, translations = self.vae.decode(latent)
        per_residue = ref_utils.compute_translations_per_residue(translations, segmentation, self.gmm.mus.shape[0], self.batch, "cpu")
        structures = ref_utils.deform_structure(self.gmm.mus, per_residue, quaternions, segmentation, "cpu")
        posed = renderer.rotate_structure(structures, self.rotations)
        projected = renderer.project(posed, self.gmm.sigmas, self.gmm.amplitudes, self.grid)
        predicted = renderer.apply_ctf(projected, self.ctf, self.indexes) / self.f_std
        return predicted, lp_translated, latent_mean, latent_std, structures

    def step(self) -> float:
        predicted, target, latent_mean, latent_std, structures = self.forward()
        tracking = {
            k: []
            for k in (
                "correlation_loss",
                "kl_prior_latent",
                "kl_prior_segmentation_mean",
                "kl_prior_segmentation_std",
                "kl_prior_segmentation_proportions",
                "l2_pen",
                "continuity_loss",
                "clashing_loss",
            )
        }
        loss = compute_loss(
            predicted,
            target,
            None,
            latent_mean,
            latent_std,
            self.vae,
            self.segmenter,
            self.settings,
            tracking,
            structural_loss_parameters=self.structural,
            epoch=0,
            predicted_structures=structures,
            device="cpu",
        )
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return float(loss.detach())

    def load_state(self, state: dict) -> None:
        """cryodomain's encoder, decoder and segmentation parameters, mapped onto the reference's."""
        with torch.no_grad():
            for prefix, mlp in (("encoder", self.vae.encoder), ("decoder", self.vae.decoder)):
                layers = [mlp.input_layer[0], *(block[0] for block in mlp.linear_relu_stack), mlp.output_layer[0]]
                for i, layer in enumerate(layers):
                    layer.weight.copy_(torch.as_tensor(state[f"{prefix}_w{i}"]))
                    layer.bias.copy_(torch.as_tensor(state[f"{prefix}_b{i}"]))
            seg = self.segmenter
            for ref_name, ours in (
                ("segments_means_means", "centre_mean"),
                ("segments_means_stds", "centre_std"),
                ("segments_stds_means", "width_mean"),
                ("segments_stds_stds", "width_std"),
                ("segments_proportions_means", "proportion_mean"),
                ("segments_proportions_stds", "proportion_std"),
            ):
                getattr(seg, ref_name)["part1"].copy_(torch.as_tensor(state[ours])[None, :])

    def check(self, state: dict) -> dict:
        """Loss terms with the given weights and the given random draws (latent, then segmentation)."""
        self.load_state(state)
        self.images = torch.as_tensor(state["images"], dtype=torch.float32)
        self.shifts = torch.zeros_like(self.shifts)
        noise_z = torch.as_tensor(state["noise_latent"])
        noise_seg = torch.as_tensor(state["noise_segmentation"])  # (3, B, K): centres, widths, logits
        # Its sample_segmentation draws proportions, then centres, then widths.
        draws = iter([noise_seg[2], noise_seg[0], noise_seg[1]])
        real_randn, real_randn_like = torch.randn, torch.randn_like
        # Zero shifts: its bilinear grid translation would wrap the last row and column onto the
        # first (it maps the coordinate +1 to -1), so the check compares the unshifted images.
        self.translator.transform = lambda images, shifts: images
        torch.randn = lambda *args, **kwargs: next(draws).clone()
        torch.randn_like = lambda *args, **kwargs: noise_z.clone()
        try:
            with torch.no_grad():
                predicted, target, latent_mean, latent_std, structures = self.forward()
                n_pixels = predicted.shape[-1] * predicted.shape[-2]
                terms = {
                    "correlation": calc_cor_loss(predicted, target),
                    "latent_kl": compute_KL_prior_latent(latent_mean, latent_std, "1e-8"),
                    "centres_kl": compute_KL_prior_segments(self.segmenter, self.segmenter.segmentation_prior, "means", "0.0"),
                    "widths_kl": compute_KL_prior_segments(self.segmenter, self.segmenter.segmentation_prior, "stds", "0.0"),
                    "proportions_kl": compute_KL_prior_segments(self.segmenter, self.segmenter.segmentation_prior, "proportions", "0.0"),
                    "continuity": calc_pair_dist_loss(structures, self.structural["connect_pairs"], self.structural["connect_distances"]),
                    "clash_full": compute_clashing_distances(structures, "cpu", cutoff=4.0),
                    "clash_our_pairs_batch_mean": calc_clash_loss(structures, torch.as_tensor(state["clash_pairs"]), clash_cutoff=4.0),
                    "l2": compute_l2_pen(self.vae),
                }
        finally:
            torch.randn, torch.randn_like = real_randn, real_randn_like
        out = {name: float(value) for name, value in terms.items()}
        out["n_pixels"] = n_pixels
        np.save(state["coords_out"], structures.numpy())
        np.save(state["coords_out"].replace(".npy", "_images.npy"), np.stack([predicted.numpy(), target.numpy()]))
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--segments", type=int, required=True)
    parser.add_argument("--clash", choices=["light", "full"], default="light")
    parser.add_argument("--betas", required=True, help="JSON dict of the loss weights")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    inputs = dict(np.load(args.inputs, allow_pickle=False))
    worker = ReferenceStep(inputs, args.batch, args.segments, args.clash, json.loads(args.betas))
    print(json.dumps({"ready": True, "rss_peak_mb": rss_peak_mb()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "quit":
            break
        if request["cmd"] == "steps":
            times, loss = [], float("nan")
            for _ in range(request["n"]):
                start = time.perf_counter()
                loss = worker.step()
                times.append((time.perf_counter() - start) * 1e3)
            print(json.dumps({"ms": times, "loss": loss, "rss_peak_mb": rss_peak_mb()}), flush=True)
        elif request["cmd"] == "check":
            state = dict(np.load(request["state"], allow_pickle=False))
            state["coords_out"] = request["coords_out"]
            print(json.dumps(worker.check(state)), flush=True)


if __name__ == "__main__":
    main()
