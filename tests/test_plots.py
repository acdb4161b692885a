"""The PNG pictures: each public function writes a readable picture whose drawn content depends
on its data, and importing the module leaves matplotlib's global state (backend, pyplot) alone."""

import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from cryodomain import plots


def read_png(path):
    """``(H, W, C)`` float pixels of a PNG that exists and has more than one distinct colour."""
    assert path.is_file() and path.stat().st_size > 0
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 10 and pixels.shape[1] > 10
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 1
    return pixels


def non_white_fraction(pixels):
    """Fraction of pixels that are not (near) white."""
    return float((pixels[..., :3] < 0.95).any(axis=-1).mean())


def assert_differ(a, b):
    """Two pictures of the same function drawn from different data differ in their content."""
    assert a.shape == b.shape
    assert np.abs(a - b).max() > 0.1
    assert (np.abs(a - b) > 0.1).any(axis=-1).mean() > 1e-3


def assert_no_stray_files(directory, expected):
    """Only the named pictures are left: the atomic write removed its temporary file."""
    assert sorted(p.name for p in directory.iterdir()) == sorted(expected)


def rng():
    return np.random.default_rng(0)


def test_image_panel(tmp_path):
    generator = rng()
    noise = [generator.normal(size=(3, 16, 16)) for _ in range(2)]
    blobs = np.zeros((3, 16, 16))
    blobs[:, 4:12, 4:12] = 1.0
    plots.image_panel(tmp_path / "a.png", noise, row_labels=["obs", "model"], titles=["0", "1", "2"], suptitle="t")
    plots.image_panel(tmp_path / "b.png", [blobs, blobs], row_labels=["obs", "model"], titles=["0", "1", "2"], suptitle="t")
    a, b = read_png(tmp_path / "a.png"), read_png(tmp_path / "b.png")
    assert_differ(a, b)
    # Grey-scale noise images fill a good part of the picture with dark pixels.
    assert non_white_fraction(a) > 0.2
    assert_no_stray_files(tmp_path, ["a.png", "b.png"])


def test_particle_grid(tmp_path):
    generator = rng()
    plots.particle_grid(tmp_path / "a.png", generator.normal(size=(6, 16, 16)), titles=[str(i) for i in range(6)])
    plots.particle_grid(tmp_path / "b.png", np.tile(np.linspace(0, 1, 16), (6, 16, 1)), titles=[str(i) for i in range(6)])
    a, b = read_png(tmp_path / "a.png"), read_png(tmp_path / "b.png")
    assert_differ(a, b)
    assert non_white_fraction(a) > 0.2
    # Six images on a 4 x 2 grid: the last two cells are switched off, so the lower right is blank.
    height, width = a.shape[:2]
    assert non_white_fraction(a[height // 2 + 10 :, 3 * width // 4 + 10 :]) < 0.01
    assert non_white_fraction(a[height // 2 + 10 :, : width // 4]) > 0.2


@pytest.mark.parametrize("dims", [2, 1])
def test_latent_density(tmp_path, dims):
    generator = rng()
    left = generator.normal(loc=-3.0, size=(400, dims))
    right = generator.normal(loc=3.0, size=(400, dims))
    marks = {"PC1 traversal": np.linspace(-2, 2, 5)[:, None].repeat(dims, axis=1), "k-means centres": generator.normal(size=(3, dims))}
    plots.latent_density(tmp_path / "a.png", left, marks, ("PC1", "PC2"), "left")
    plots.latent_density(tmp_path / "b.png", np.r_[left, right], None, ("PC1", "PC2"), "both")
    a, b = read_png(tmp_path / "a.png"), read_png(tmp_path / "b.png")
    assert_differ(a, b)
    # The marked points are drawn in colour (tab10 blue path, crimson centres): not only greys.
    rgb = a[..., :3]
    assert (rgb.max(axis=-1) - rgb.min(axis=-1) > 0.3).sum() > 20
    assert_no_stray_files(tmp_path, ["a.png", "b.png"])


def test_explained_variance(tmp_path):
    plots.explained_variance(tmp_path / "a.png", np.array([0.7, 0.2, 0.1]))
    plots.explained_variance(tmp_path / "b.png", np.array([0.1, 0.2, 0.7]))
    a, b = read_png(tmp_path / "a.png"), read_png(tmp_path / "b.png")
    assert_differ(a, b)
    # Steel-blue bars are drawn.
    steelblue = np.array([70, 130, 180]) / 255
    assert (np.abs(a[..., :3] - steelblue).max(axis=-1) < 0.05).sum() > 100


def test_segment_membership(tmp_path):
    chain_ids = np.array(["A"] * 30 + ["B"] * 30)
    segment = np.r_[np.zeros(20, int), -np.ones(10, int), np.ones(30, int)]
    probability = np.linspace(0.3, 1.0, 60)
    plots.segment_membership(tmp_path / "a.png", segment, probability, chain_ids)
    plots.segment_membership(tmp_path / "b.png", np.r_[np.ones(30, int), np.zeros(30, int)], probability[::-1], chain_ids)
    a, b = read_png(tmp_path / "a.png"), read_png(tmp_path / "b.png")
    assert_differ(a, b)
    # The membership bars fill much of the plotting area.
    assert non_white_fraction(a) > 0.2
    # Residues outside every part: the light-grey band (0.85).
    assert (np.abs(a[..., :3] - 0.85).max(axis=-1) < 0.01).sum() > 100
    assert (np.abs(b[..., :3] - 0.85).max(axis=-1) < 0.01).sum() < (np.abs(a[..., :3] - 0.85).max(axis=-1) < 0.01).sum()


def test_segment_membership_all_fixed(tmp_path):
    plots.segment_membership(tmp_path / "a.png", -np.ones(10, int), np.zeros(10), np.array(["A"] * 10))
    read_png(tmp_path / "a.png")


def test_training_curves(tmp_path):
    epochs = np.arange(1, 9)
    losses = {"total": 1.0 / epochs, "correlation": 0.5 / epochs}
    plots.training_curves(tmp_path / "a.png", epochs, losses, {"rigidity": np.geomspace(1e-1, 1e-4, 8), "zero": np.zeros(8)}, marked_epoch=5)
    plots.training_curves(tmp_path / "b.png", epochs, {"total": epochs * 1.0}, {"zero": np.zeros(8)})
    a, b = read_png(tmp_path / "a.png"), read_png(tmp_path / "b.png")
    assert_differ(a, b)
    # Both panels hold a coloured curve (the default colour cycle), not only black axes.
    rgb = a[..., :3]
    coloured = rgb.max(axis=-1) - rgb.min(axis=-1) > 0.3
    width = a.shape[1]
    assert coloured[:, : width // 2].sum() > 50
    assert coloured[:, width // 2 :].sum() > 50


def run_python(code):
    """Run ``code`` in a fresh interpreter (a clean matplotlib state) and require it to pass."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_import_does_not_import_pyplot():
    # Checked before asking for the backend: matplotlib.get_backend() resolves an automatic
    # backend by importing pyplot itself.
    run_python("import sys, cryodomain.plots; assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")


def test_import_keeps_backend():
    run_python("import matplotlib; b = matplotlib.get_backend(); import cryodomain.plots; assert matplotlib.get_backend() == b, (b, matplotlib.get_backend())")


def test_import_and_drawing_keep_a_chosen_backend(tmp_path):
    # A program that chose another backend (here: pdf) keeps it, also after a picture is drawn.
    run_python(
        "import sys, numpy as np, matplotlib; matplotlib.use('pdf'); import cryodomain.plots as p; "
        f"p.explained_variance({str(tmp_path / 'a.png')!r}, np.array([0.5, 0.5])); "
        "assert matplotlib.get_backend() == 'pdf', matplotlib.get_backend(); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    read_png(tmp_path / "a.png")
