"""`cryodomain analyze` on a small trained run: every output readable by the field's tools."""

import contextlib
import dataclasses
import io
import sys
import types
from pathlib import Path
from typing import ClassVar

import gemmi
import matplotlib.pyplot as plt
import mrcfile
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import starfile
import torch

from cryodomain import plots
from cryodomain.commands.main import main
from cryodomain.errors import InputError
from cryodomain.examples import STATE_A
from cryodomain.io.maps import write_map
from cryodomain.io.star import read_star
from cryodomain.io.structure import read_atomic_model
from cryodomain.io.structure_writer import write_structure
from cryodomain.workflows.analyze import (
    AnalysisSettings,
    analyze_run,
    metric_curves,
    observed_and_model_images,
    structure_suffix,
)
from cryodomain.workflows.config import load_config
from cryodomain.workflows.data import ParticleBatches
from cryodomain.workflows.fit_report import example_rows
from cryodomain.workflows.latent import kmeans_latents, latent_pca, nearest_latents, pc_traversal, umap_embedding
from cryodomain.workflows.structures import decode_batches
from cryodomain.workflows.train import train
from cryodomain.workflows.trained_run import TrainedRun

N_IMAGES, N_RESIDUES, N_ATOMS, LATENT_DIM, BOX, APIX = 48, 352, 3115, 2, 32, 4.0
N_POINTS, N_CLUSTERS = 6, 10


class FakeUMAP:
    """Stands in for umap-learn's UMAP in the fast tests (its first call compiles for a minute): a
    fixed linear embedding. The real library is tested in test_umap_learn_embeds_the_latents."""

    calls: ClassVar[list[dict]] = []

    def __init__(self, **kwargs):
        FakeUMAP.calls.append(kwargs)

    def fit_transform(self, z):
        return np.asarray(z)[:, :2] * 10.0 + 1.0


# Columns of the user's own that the cluster star files must carry along.
EXTRA_COLUMNS = ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnClassNumber", "rlnRandomSubset", "rlnAutopickFigureOfMerit")


def star_with_extra_columns(star, path):
    """A copy of ``star`` (image paths made absolute) with per-particle columns that cryodomain does not use."""
    blocks = starfile.read(star, always_dict=True)
    particles = blocks["particles"].copy()
    n = len(particles)
    stack_dir = star.parent.absolute()
    particles["rlnImageName"] = [f"{name.split('@')[0]}@{stack_dir / name.split('@')[1]}" for name in particles["rlnImageName"]]
    particles["rlnMicrographName"] = [f"Micrographs/mic_{i // 8:03d}.mrc" for i in range(n)]
    particles["rlnCoordinateX"] = np.arange(n) * 11.5 + 3.25
    particles["rlnCoordinateY"] = np.arange(n)[::-1] * 7.0 + 0.5
    particles["rlnClassNumber"] = np.arange(n) % 3 + 1
    particles["rlnRandomSubset"] = np.arange(n) % 2 + 1
    particles["rlnAutopickFigureOfMerit"] = np.linspace(0.1, 0.9, n)
    starfile.write({"optics": blocks["optics"], "particles": particles}, path)
    return path


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, tiny_simulation, tiny_config_overrides):
    """A trained tiny run analysed from the command line with every option, each picture's figure kept."""
    root = tmp_path_factory.mktemp("analyze")
    star = star_with_extra_columns(tiny_simulation["star"], root / "particles.star")
    config = load_config(None, tiny_config_overrides)
    train(star, STATE_A, root / "run", config, progress=False)
    out = root / "analysis"
    summary = io.StringIO()
    figures = {}
    save = plots._save

    def keep_figure(fig, path):
        figures[Path(path).name] = fig
        save(fig, path)

    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(summary):
        patch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
        patch.setattr(plots, "_save", keep_figure)
        status = main(["analyze", str(root / "run"), "-o", str(out), "--points", str(N_POINTS), "--full-atom", "--volumes", "--umap", "--device", "cpu"])
    assert status == 0
    run = TrainedRun.load(root / "run")
    model, data = run.model, run.data
    z = run.latent_means(progress=False)
    return types.SimpleNamespace(run_dir=root / "run", run=run, out=out, summary=summary.getvalue(), model=model, data=data, z=z, star=star, figures=figures)


def test_latent_means_and_pca_spectrum(analysed):
    z = np.load(analysed.out / "z.npy")
    assert z.shape == (N_IMAGES, LATENT_DIM)
    np.testing.assert_allclose(z, analysed.z, atol=1e-6)
    spectrum = pd.read_csv(analysed.out / "pca_explained_variance.csv")
    assert list(spectrum.columns) == ["pc", "explained_variance", "explained_variance_ratio"]
    assert spectrum["pc"].tolist() == [1, 2]
    assert spectrum["explained_variance_ratio"].sum() == pytest.approx(1.0)
    assert (np.diff(spectrum["explained_variance"]) <= 0).all()
    assert np.load(analysed.out / "pca_projections.npy").shape == (N_IMAGES, LATENT_DIM)


def test_traversals_are_real_particles_ordered_along_their_pc_and_decoded(analysed):
    pca = latent_pca(analysed.z)
    # Three PCs were asked for, but the latent space has two dimensions.
    assert not (analysed.out / "pc3").exists()
    for pc in (0, 1):
        directory = analysed.out / f"pc{pc + 1}"
        indices = np.loadtxt(directory / "indices.txt", dtype=np.int64)
        assert indices.shape == (N_POINTS,) and indices.min() >= 0 and indices.max() < N_IMAGES
        np.testing.assert_allclose(np.load(directory / "z.npy"), analysed.z[indices], atol=1e-6)
        coordinate = pca.projections[indices, pc]
        assert (np.diff(coordinate) >= -1e-9).all() and coordinate[-1] > coordinate[0]
        trajectory = gemmi.read_structure(str(directory / "trajectory.pdb"))
        assert len(trajectory) == N_POINTS and trajectory[0].count_atom_sites() == N_ATOMS
        # The last model is the structure decoded at the last traversal point (every atom moved).
        ((_, expected),) = decode_batches(analysed.model, analysed.z[indices[-1:]], atoms_of=analysed.data.structure, progress=False)
        written = np.array([atom.pos.tolist() for chain in trajectory[N_POINTS - 1] for residue in chain for atom in residue])
        # Files list atoms residue by residue.
        in_file_order = expected[0][np.argsort(analysed.data.structure.atom_residue_index, kind="stable")]
        np.testing.assert_allclose(written, in_file_order, atol=2e-3)


def test_kmeans_labels_centres_and_star_files_partition_the_particles(analysed):
    kmeans = analysed.out / "kmeans"
    labels = np.load(kmeans / "labels.npy")
    assert labels.shape == (N_IMAGES,) and set(labels.tolist()) <= set(range(N_CLUSTERS))
    centres = np.loadtxt(kmeans / "centers_indices.txt", dtype=np.int64)
    assert centres.shape == (N_CLUSTERS,)
    np.testing.assert_allclose(np.load(kmeans / "centers_z.npy"), analysed.z[centres], atol=1e-6)
    assert len(gemmi.read_structure(str(kmeans / "centers.pdb"))) == N_CLUSTERS

    original = read_star(analysed.star)
    original_rows = starfile.read(analysed.star)["particles"]
    original_names = original_rows["rlnImageName"]
    seen = []
    for cluster in range(N_CLUSTERS):
        path = kmeans / f"cluster_{cluster:02d}.star"
        members = np.flatnonzero(labels == cluster)
        assert path.exists() == (members.size > 0)
        if not members.size:
            continue
        # Read back from the new folder: every image must still be found.
        subset = read_star(path)
        assert subset.image_paths.tolist() == original.image_paths[members].tolist()
        assert subset.image_indices.tolist() == original.image_indices[members].tolist()
        names = starfile.read(path)["particles"]["rlnImageName"]
        assert [name.split("@")[0] for name in names] == [original_names[i].split("@")[0] for i in members]
        np.testing.assert_allclose(subset.rotations, original.rotations[members], atol=1e-6)
        # Shifts and every CTF value of each member, as read back.
        for field in ("shifts_A", "defocus_u_A", "defocus_v_A", "defocus_angle_rad", "voltage_kv", "spherical_aberration_mm"):
            np.testing.assert_allclose(getattr(subset, field), getattr(original, field)[members], rtol=1e-6, atol=1e-6, err_msg=field)
        for field in ("amplitude_contrast", "phase_shift_rad", "bfactor_A2", "pixel_size_A"):
            np.testing.assert_allclose(getattr(subset, field), getattr(original, field)[members], rtol=1e-6, atol=1e-6, err_msg=field)
        assert subset.image_size.tolist() == original.image_size[members].tolist()
        # The user's own columns travel with their particles.
        rows = starfile.read(path)["particles"]
        for column in EXTRA_COLUMNS:
            assert rows[column].tolist() == original_rows[column].iloc[members].tolist(), column
        seen += members.tolist()
    assert sorted(seen) == list(range(N_IMAGES))


def test_segments_table_and_bfactor_model(analysed):
    segment, probability = analysed.model.segmentation.hard_assignment()
    table = pd.read_csv(analysed.out / "segments.csv", keep_default_na=False)
    assert list(table.columns) == ["chain", "residue_number", "insertion_code", "residue_name", "segment", "probability"]
    assert len(table) == N_RESIDUES
    assert table["segment"].tolist() == segment.tolist()
    np.testing.assert_allclose(table["probability"], probability, atol=1e-6)
    structure = analysed.data.structure
    assert table["residue_number"].tolist() == structure.residue_numbers.tolist()
    assert table["chain"].astype(str).tolist() == structure.chain_ids.tolist()

    written = gemmi.read_structure(str(analysed.out / "segments.pdb"))
    assert len(written) == 1 and written[0].count_atom_sites() == N_ATOMS
    bfactors = [residue[0].b_iso for chain in written[0] for residue in chain]
    np.testing.assert_allclose(bfactors, segment + 1.0)


def test_volumes_are_on_the_data_grid_centred_on_the_model(analysed):
    maps = sorted(analysed.out.glob("kmeans/center_*.mrc")) + sorted(analysed.out.glob("pc*/point_*.mrc"))
    # Every traversal point has its map (a volume series), not only the end points.
    assert len(maps) == N_CLUSTERS + 2 * N_POINTS
    assert {path.name for path in analysed.out.glob("pc1/*.mrc")} == {f"point_{i:02d}.mrc" for i in range(1, N_POINTS + 1)}
    centres = np.loadtxt(analysed.out / "kmeans" / "centers_indices.txt", dtype=np.int64)
    ((_, residues),) = decode_batches(analysed.model, analysed.z[centres[:1]], progress=False)
    amplitudes = analysed.data.structure.amplitudes
    with mrcfile.open(analysed.out / "kmeans" / "center_00.mrc") as mrc:
        assert mrc.data.shape == (BOX, BOX, BOX)
        assert mrc.voxel_size.x == pytest.approx(APIX)
        origin = np.array([mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z])
        np.testing.assert_allclose(origin, -(BOX // 2) * APIX)
        density = np.asarray(mrc.data, dtype=np.float64)
    # The map's centre of mass, in the header's frame, is the amplitude-weighted residue centroid.
    axis = origin[0] + np.arange(BOX) * APIX
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    centre_of_mass = np.array([(density * c).sum() for c in (xx, yy, zz)]) / density.sum()
    expected = (residues[0] * amplitudes[:, None]).sum(0) / amplitudes.sum()
    np.testing.assert_allclose(centre_of_mass, expected, atol=0.5)
    # Integral as in the projections: each residue contributes its amplitude times 2 pi sigma^2.
    sigma = analysed.run.config.model.sigma_A
    assert density.sum() * APIX**3 == pytest.approx(amplitudes.sum() * 2 * np.pi * sigma**2, rel=0.05)


def drawn(fig, kind):
    """The artists of one kind drawn on the figure's axes, in drawing order."""
    return [artist for ax in fig.axes for artist in getattr(ax, kind)]


def test_pictures_are_written_and_show_the_data(analysed):
    names = [
        "latent_pca.png", "latent_umap.png", "pca_explained_variance.png", "segments.png",
        "training_curves.png", "images.png", "motions.png", "motions_vs_pc.png",
    ]  # fmt: skip
    assert set(analysed.figures) == set(names)
    for name in names:
        pixels = plt.imread(analysed.out / name)
        assert pixels.ndim == 3 and pixels.shape[0] > 100, name
    figures = analysed.figures
    pca = latent_pca(analysed.z)
    # Latent densities: every particle is counted in a hexbin, the traversals are drawn on top.
    for name, coords in (("latent_pca.png", pca.projections[:, :2]), ("latent_umap.png", np.load(analysed.out / "umap.npy"))):
        (hexbin,) = [artist for artist in figures[name].axes[0].collections if artist.get_array() is not None]
        assert hexbin.get_array().sum() == N_IMAGES, name
        lines = drawn(figures[name], "lines")
        indices = np.loadtxt(analysed.out / "pc1" / "indices.txt", dtype=np.int64)
        np.testing.assert_allclose(lines[0].get_xydata(), coords[indices], atol=1e-5, err_msg=name)
    # Explained variance: one bar per PC, as high as its ratio.
    ratio = pd.read_csv(analysed.out / "pca_explained_variance.csv")["explained_variance_ratio"]
    np.testing.assert_allclose([bar.get_height() for bar in drawn(figures["pca_explained_variance.png"], "patches")], ratio, atol=1e-9)
    # Segments: one bar per residue, as high as its membership.
    segments = pd.read_csv(analysed.out / "segments.csv", keep_default_na=False)
    bars = drawn(figures["segments.png"], "patches")
    assert len(bars) == N_RESIDUES
    by_residue = sorted((bar.get_x() + bar.get_width() / 2, bar.get_height()) for bar in bars)
    np.testing.assert_allclose([height for _, height in by_residue], segments["probability"], atol=1e-6)
    # Training curves: the epochs' losses.
    metrics = pd.read_csv(analysed.run_dir / "metrics.csv")
    total = next(line for line in drawn(figures["training_curves.png"], "lines") if line.get_label() == "total")
    np.testing.assert_allclose(total.get_ydata(), metrics["total"])
    # Images: the observed images and the model's, pixel for pixel.
    images = [np.asarray(image.get_array()) for image in drawn(figures["images.png"], "images")]
    rows = example_rows(N_IMAGES, AnalysisSettings().n_example_images)
    observed, predicted, _ = observed_and_model_images(analysed.run, rows)
    np.testing.assert_allclose(np.stack(images), np.concatenate([observed, predicted]), atol=1e-6)
    # Motions: one box per segment and quantity, with a line at the particles' median.
    medians = pd.read_csv(analysed.out / "motions.csv").groupby("segment")[["angle_deg", "displacement_A"]].median()
    for ax, quantity in zip(figures["motions.png"].axes, ("angle_deg", "displacement_A")):
        assert len(ax.patches) == N_SEGMENTS, quantity
        heights = [line.get_ydata()[0] for line in ax.lines]
        assert all(min(abs(height - median) for height in heights) < 1e-6 for median in medians[quantity]), quantity
    # Motion against PC correlations: the heat maps hold the table's values.
    heat = [np.asarray(image.get_array()) for image in drawn(figures["motions_vs_pc.png"], "images")]
    correlation = pd.read_csv(analysed.out / "motions_vs_pc.csv")
    spearman = correlation[correlation["quantity"] == "angle_deg"].pivot(index="segment", columns="pc", values="spearman").to_numpy()
    np.testing.assert_allclose(heat[0], spearman, atol=1e-6)


def test_umap_embedding_is_saved(analysed):
    embedding = np.load(analysed.out / "umap.npy")
    assert embedding.shape == (N_IMAGES, 2)
    np.testing.assert_allclose(embedding, analysed.z * 10.0 + 1.0, atol=1e-4)
    assert FakeUMAP.calls[-1]["n_neighbors"] < N_IMAGES


@pytest.mark.slow  # umap-learn compiles its functions on first use: half a minute
@pytest.mark.filterwarnings("ignore:n_jobs value 1 overridden")  # the seed makes UMAP single-threaded
def test_umap_learn_embeds_the_latents(analysed, tmp_path):
    pytest.importorskip("umap")
    settings = AnalysisSettings(n_pcs=1, n_points=3, n_clusters=2, umap=True, progress=False)
    written = analyze_run(analysed.run_dir, tmp_path / "out", settings, device="cpu")
    embedding = np.load(tmp_path / "out" / "umap.npy")
    assert embedding.shape == (N_IMAGES, 2) and embedding.dtype == np.float32 and np.isfinite(embedding).all()
    assert tmp_path / "out" / "latent_umap.png" in written.pictures
    # The run's seed fixes the embedding.
    np.testing.assert_array_equal(umap_embedding(analysed.z, analysed.run.config.optim.seed), embedding)
    # Two groups of latents stay two groups: each point's nearest neighbours are of its own group.
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(size=(30, 4)), rng.normal(size=(30, 4)) + 6.0]).astype(np.float32)
    group = np.repeat([0, 1], 30)
    embedded = umap_embedding(z, 3)
    distances = np.linalg.norm(embedded[:, None] - embedded[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert (group[np.argsort(distances, axis=1)[:, :5]] == group[:, None]).all()


def test_summary_says_where_to_look(analysed):
    assert str(analysed.out / "pc1" / "trajectory.pdb") in analysed.summary
    assert str(analysed.out / "images.png") in analysed.summary
    assert str(analysed.out / "kmeans" / "centers.pdb") in analysed.summary


def with_negated_shifts(run):
    """The same trained run reading every particle's shift with the opposite sign."""
    table = dataclasses.replace(run.data.table, shifts_A=-run.data.table.shifts_A)
    data = dataclasses.replace(run.data, table=table, dataset=ParticleBatches(table, run.data.dataset.box))
    return dataclasses.replace(run, data=data)


def test_model_images_match_the_observed_ones_only_with_the_right_shift_sign(analysed):
    # The particles shifted most (up to a pixel): where the shift convention matters most.
    rows = np.argsort(-np.linalg.norm(analysed.data.table.shifts_A, axis=1))[:8]
    observed, predicted, correlation = observed_and_model_images(analysed.run, rows)
    assert observed.shape == predicted.shape == (8, BOX, BOX)
    _, _, flipped = observed_and_model_images(with_negated_shifts(analysed.run), rows)
    # Every image fits better with the shifts as RELION means them than with the opposite sign.
    assert (correlation > flipped + 0.1).all(), (correlation, flipped)
    # A bar the opposite sign does not reach on these images (0.11-0.48 against 0.72-0.88).
    assert (correlation > 0.6).all(), correlation


def test_training_curves_hold_the_weighted_regularisers(analysed):
    epochs, losses, regularisers = metric_curves(analysed.run_dir / "metrics.csv", BOX * BOX)
    metrics = pd.read_csv(analysed.run_dir / "metrics.csv")
    assert epochs.tolist() == [1, 2]
    np.testing.assert_allclose(losses["total"], metrics["total"])
    np.testing.assert_allclose(regularisers["continuity"], metrics["beta_continuity"] * metrics["continuity"])
    np.testing.assert_allclose(regularisers["latent_kl"], metrics["beta_latent_kl"] * metrics["latent_kl"] / (BOX * BOX))


def test_a_second_analysis_into_the_same_folder_leaves_no_stale_clusters(analysed, tmp_path):
    out = tmp_path / "again"
    (out / "kmeans").mkdir(parents=True)
    for stale in ("cluster_07.star", "center_07.mrc"):
        (out / "kmeans" / stale).write_text("from an earlier analysis")
    settings = AnalysisSettings(n_pcs=1, n_points=3, n_clusters=2, progress=False)
    written = analyze_run(analysed.run_dir, out, settings, device="cpu")
    assert sorted(path.name for path in (out / "kmeans").glob("cluster_*.star")) == ["cluster_00.star", "cluster_01.star"]
    assert written.cluster_stars == [out / "kmeans" / "cluster_00.star", out / "kmeans" / "cluster_01.star"]
    assert not list((out / "kmeans").glob("*.mrc")) and written.volumes == []
    assert len(gemmi.read_structure(str(out / "pc1" / "trajectory.pdb"))) == 3
    # CA-only structures without --full-atom.
    assert gemmi.read_structure(str(out / "kmeans" / "centers.pdb"))[0].count_atom_sites() == N_RESIDUES


def test_missing_umap_is_an_input_error_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` fail
    with pytest.raises(InputError, match="pip install umap-learn"):
        analyze_run(tmp_path / "no_run", tmp_path / "out", AnalysisSettings(umap=True))


@pytest.mark.parametrize("changes, flag", [({"n_points": 1}, "--points"), ({"n_pcs": 0}, "--pcs"), ({"volume_pixel_size_A": -1.0}, "--apix")])
def test_bad_settings_name_their_flag(tmp_path, changes, flag):
    with pytest.raises(InputError, match=flag):
        analyze_run(tmp_path / "no_run", tmp_path / "out", dataclasses.replace(AnalysisSettings(), **changes))


def test_nearest_latents_and_traversal_order():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 4)) * np.array([3.0, 1.0, 0.5, 0.2])
    assert nearest_latents(z, z[[5, 17, 5]]).tolist() == [5, 17, 5]
    pca = latent_pca(z)
    for pc in range(4):
        indices = pc_traversal(z, pca, pc, 12)
        coordinate = pca.projections[indices, pc]
        assert (np.diff(coordinate) >= 0).all()
    # Along the dominant PC the ends lie near its 5th and 95th percentiles.
    low, high = np.percentile(pca.projections[:, 0], [5, 95])
    coordinate = pca.projections[pc_traversal(z, pca, 0, 12), 0]
    assert abs(coordinate[0] - low) < 0.15 * (high - low) and abs(coordinate[-1] - high) < 0.15 * (high - low)


def test_kmeans_makes_at_most_one_cluster_per_image_and_repeats_with_its_seed():
    z = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [-4.0, 3.0]])
    labels, centres = kmeans_latents(z, 10, seed=3)
    assert len(centres) == 5 and sorted(labels.tolist()) == [0, 1, 2, 3, 4]
    rng = np.random.default_rng(1)
    many = np.concatenate([rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 8.0])
    first, first_centres = kmeans_latents(many, 2, seed=3)
    again, again_centres = kmeans_latents(many, 2, seed=3)
    assert first.tolist() == again.tolist() and first_centres.tolist() == again_centres.tolist()
    assert len(set(first[:30])) == 1 and len(set(first[30:])) == 1 and first[0] != first[30]
    # Each centre is a real image of its own cluster.
    assert first[first_centres].tolist() == [0, 1]


def test_long_chain_names_switch_structures_to_mmcif(tmp_path):
    structure = read_atomic_model(STATE_A)
    assert structure_suffix(structure) == ".pdb"
    renamed = dataclasses.replace(structure, chain_ids=np.char.add(structure.chain_ids, "XYZ"))
    suffix = structure_suffix(renamed)
    assert suffix == ".cif"
    write_structure(tmp_path / f"t{suffix}", renamed, renamed.coords, full_atom=False)
    assert gemmi.read_structure(str(tmp_path / "t.cif"))[0].count_atom_sites() == N_RESIDUES


def test_volume_header_for_a_chosen_grid(tmp_path):
    write_map(tmp_path / "v.mrc", np.zeros((20, 20, 20), dtype=np.float32), 5.0)
    with mrcfile.open(tmp_path / "v.mrc") as mrc:
        assert mrc.data.shape == (20, 20, 20) and mrc.voxel_size.z == pytest.approx(5.0)
        assert (mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z) == pytest.approx((-50.0, -50.0, -50.0))


def map_grid(path):
    with mrcfile.open(path) as mrc:
        origin = (float(mrc.header.origin.x), float(mrc.header.origin.y), float(mrc.header.origin.z))
        return mrc.data.shape, tuple(float(v) for v in mrc.voxel_size.tolist()), origin


def test_the_maps_of_a_series_share_one_grid_and_origin(analysed):
    for folder, pattern in (("pc1", "point_*.mrc"), ("pc2", "point_*.mrc"), ("kmeans", "center_*.mrc")):
        grids = {map_grid(path) for path in sorted((analysed.out / folder).glob(pattern))}
        assert len(grids) == 1, folder
        ((shape, voxel, origin),) = grids
        assert shape == (BOX, BOX, BOX) and voxel == (APIX,) * 3 and origin == (-(BOX // 2) * APIX,) * 3
    # The maps of a traversal differ: the structures moved.
    first, last = (mrcfile.read(analysed.out / "pc1" / name) for name in ("point_01.mrc", f"point_{N_POINTS:02d}.mrc"))
    assert not np.array_equal(first, last)


N_SEGMENTS = 3  # the tiny run's segments


def test_motions_are_the_decoders_rotations_and_the_centres_displacements(analysed):
    table = pd.read_csv(analysed.out / "motions.csv")
    assert len(table) == N_IMAGES * N_SEGMENTS
    assert table["particle"].tolist() == np.repeat(np.arange(N_IMAGES), N_SEGMENTS).tolist()
    assert table["segment"].tolist() == np.tile(np.arange(N_SEGMENTS), N_IMAGES).tolist()
    # Compare with the model's own output at the latent means.
    with torch.no_grad():
        deformation = analysed.model.decode(torch.as_tensor(analysed.z), sample_segmentation=False)
    rotvecs = deformation.segment_rotvecs.double().numpy()
    angle = np.degrees(np.linalg.norm(rotvecs, axis=-1))  # the decoder keeps angles below 180
    np.testing.assert_allclose(table["angle_deg"].to_numpy().reshape(N_IMAGES, N_SEGMENTS), angle, atol=1e-3)
    axis = table[["axis_x", "axis_y", "axis_z"]].to_numpy().reshape(N_IMAGES, N_SEGMENTS, 3)
    np.testing.assert_allclose(axis, rotvecs / np.linalg.norm(rotvecs, axis=-1, keepdims=True), atol=1e-4)
    # Membership-weighted centres of the residues before and after, by hand.
    weights = deformation.memberships.double().numpy()  # (N, R, K)
    base = analysed.data.structure.coords
    before = np.einsum("nrk,rx->nkx", weights, base) / weights.sum(1)[..., None]
    after = np.einsum("nrk,nrx->nkx", weights, deformation.coords.double().numpy()) / weights.sum(1)[..., None]
    np.testing.assert_allclose(table["displacement_A"].to_numpy().reshape(N_IMAGES, N_SEGMENTS), np.linalg.norm(after - before, axis=-1), atol=1e-3)


def test_motions_along_each_traversal_and_against_the_pcs(analysed):
    everything = pd.read_csv(analysed.out / "motions.csv")
    pca = latent_pca(analysed.z)
    for pc in (1, 2):
        along = pd.read_csv(analysed.out / f"pc{pc}" / "motions.csv")
        indices = np.loadtxt(analysed.out / f"pc{pc}" / "indices.txt", dtype=np.int64)
        assert len(along) == N_POINTS * N_SEGMENTS
        assert along["point"].tolist() == np.repeat(np.arange(1, N_POINTS + 1), N_SEGMENTS).tolist()
        assert along["particle"].tolist() == np.repeat(indices, N_SEGMENTS).tolist()
        np.testing.assert_allclose(along["pc_coordinate"], np.repeat(pca.projections[indices, pc - 1], N_SEGMENTS), atol=1e-5)
        rows = everything.set_index(["particle", "segment"]).loc[list(zip(along["particle"], along["segment"]))]
        np.testing.assert_allclose(along["angle_deg"], rows["angle_deg"], atol=1e-9)
    correlation = pd.read_csv(analysed.out / "motions_vs_pc.csv")
    assert len(correlation) == 2 * N_SEGMENTS * 2 and set(correlation["quantity"]) == {"angle_deg", "displacement_A"}
    row = correlation[(correlation["quantity"] == "displacement_A") & (correlation["segment"] == 1) & (correlation["pc"] == 2)].iloc[0]
    displacement = everything[everything["segment"] == 1]["displacement_A"].to_numpy()
    assert row["spearman"] == pytest.approx(scipy.stats.spearmanr(displacement, pca.projections[:, 1]).statistic, abs=1e-5)
    assert row["pearson"] == pytest.approx(np.corrcoef(displacement, pca.projections[:, 1])[0, 1], abs=1e-5)


def test_flexibility_holds_the_rmsf_of_the_decoded_residues(analysed):
    coords = np.concatenate([c for _, c in decode_batches(analysed.model, analysed.z, progress=False)]).astype(np.float64)
    rmsf = np.sqrt(((coords - coords.mean(axis=0)) ** 2).sum(axis=-1).mean(axis=0))
    written = gemmi.read_structure(str(analysed.out / "flexibility.pdb"))
    assert written[0].count_atom_sites() == N_ATOMS
    # The B-factor column holds 2 decimals.
    np.testing.assert_allclose([residue[0].b_iso for chain in written[0] for residue in chain], rmsf, atol=6e-3)
    table = pd.read_csv(analysed.out / "flexibility.csv")
    np.testing.assert_allclose(table["rmsf_A"], rmsf, atol=1e-4)
    assert rmsf.max() > 0


def test_full_atom_structures_are_checked_and_summarised(analysed):
    for folder, n_models in (("pc1", N_POINTS), ("pc2", N_POINTS), ("kmeans", N_CLUSTERS)):
        report = pd.read_csv(analysed.out / folder / "structures_quality.csv", keep_default_na=False)
        assert report["model"].tolist() == list(range(n_models + 1))
        assert (report["peptide_bonds"] == 326).all() and (report["phosphodiester_bonds"] == 23).all()
    (line,) = [line for line in analysed.summary.splitlines() if "full-atom quality" in line]
    assert f"{2 * N_POINTS + N_CLUSTERS} structures" in line and "1.2-1.5 Å" in line and "2.2 Å" in line


def test_chimerax_scripts_open_files_that_exist(analysed):
    folder = analysed.out / "chimerax"
    assert {path.name for path in folder.iterdir()} == {
        "segments.defattr", "pc1.cxc", "pc2.cxc", "movie_pc1.cxc", "movie_pc2.cxc", "kmeans.cxc", "flexibility.cxc",
    }  # fmt: skip
    for script in folder.glob("*.cxc"):
        for line in script.read_text().splitlines():
            if line.startswith("open "):
                names = [word for word in line.split()[1:] if not word.startswith("#")]
                names = names[: next((i for i, word in enumerate(names) if word in ("models", "vseries")), len(names))]
                for name in names:
                    assert (folder / name).is_file(), f"{script.name}: {name}"
    pc1 = (folder / "pc1.cxc").read_text()
    assert "open ../pc1/trajectory.pdb" in pc1 and pc1.count("open segments.defattr models #1.") == N_POINTS
    assert " ".join(f"../pc1/point_{i:02d}.mrc" for i in range(1, N_POINTS + 1)) + " vseries true" in pc1
    segment, _ = analysed.model.segmentation.hard_assignment()
    data = [line.split("\t") for line in (folder / "segments.defattr").read_text().splitlines() if line.startswith("\t")]
    assert len(data) == N_RESIDUES and [int(value) for _, _, value in data] == segment.tolist()
    assert str(folder) in analysed.summary
