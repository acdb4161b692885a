"""The HTML report of a run: one self-contained page whose figures hold the analysis' numbers.

The page is read as text here (its sections, its one plotly.js, the data behind the colour
selector and the 3-D viewer); tests/commands/test_report_browser.py opens it in Chromium.
"""

import json
import re
import shutil

import numpy as np
import pandas as pd
import plotly.offline
import pytest

from cryodomain.commands.main import main
from cryodomain.errors import InputError
from cryodomain.io.structure import read_all_models
from cryodomain.plots import segment_colours
from cryodomain.workflows import report_figures as figures
from cryodomain.workflows.report import MAX_POINTS, SECTIONS, write_report
from cryodomain.workflows.report_data import convention_rows, preflight_entries, read_report_data

N_IMAGES, N_SEGMENTS, N_POINTS, N_CLUSTERS = 48, 3, 5, 4
# plotly.js opens with its banner; the page must hold it once, inline.
BUNDLE_START = plotly.offline.get_plotlyjs()[:200]


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([a-z]+)"', page)


def colourings(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="latent-colourings">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def page(tiny_analysis) -> str:
    return (tiny_analysis.analysis / "report.html").read_text(encoding="utf-8")


def test_analyze_writes_one_page_with_every_section_and_one_inline_plotly(tiny_analysis, page):
    assert tiny_analysis.outputs.report == tiny_analysis.analysis / "report.html"
    # The demo's evaluation (RUN/evaluation) is found without being named.
    assert section_ids(page) == [key for key, _ in SECTIONS]
    assert page.count(BUNDLE_START) == 1
    # Nothing is fetched: no script or style by URL, no CDN (outside plotly.js, which names some).
    ours = page.replace(plotly.offline.get_plotlyjs(), "")
    assert not re.search(r"<script[^>]+src=", ours) and not re.search(r"<link[^>]+href=", ours)
    assert "cdn.plot.ly" not in ours and "https://" not in ours
    # Every figure is drawn, none plays by itself.
    for div in (
        "training-curves",
        "latent-pca",
        "latent-variance",
        "segmentation-sequence",
        "trajectory-pc1",
        "trajectory-pc2",
        "motions-vs-pc",
        "evaluation-rmsd",
    ):
        assert f'id="{div}"' in page, div
    assert "Plotly.animate" not in page


def test_run_section_names_the_inputs_preflight_conventions_and_device(tiny_analysis):
    data = read_report_data(tiny_analysis.run, tiny_analysis.analysis)
    facts = dict(data.run.facts)
    assert facts["particles"] == str(N_IMAGES) and facts["box"] == "32 px, 128 Å" and facts["pixel size"] == "4 Å"
    assert facts["particles file"].endswith("particles.star") and facts["structure"].endswith("example_state_a.pdb")
    assert facts["device"] == "cpu"  # the line train.log now holds
    assert facts["epochs"] == "2 of 2" and "3 segments, latent dimension 2" in facts["model"]
    assert any(entry.startswith("preflight:\n  particles      48") for entry in data.run.preflight)
    readings = [row[0] for row in data.run.conventions]
    assert readings == ["as read", "inverted contrast", "transposed rotations", "negated shifts"]
    assert float(data.run.conventions[0][1]) > 0.3 and "better on" in data.run.conventions[1][2]
    assert "n_segments: 3" in data.run.config_text


def test_preflight_is_what_train_log_holds_before_the_first_epoch():
    entries = [
        "read 4 particles",
        "preflight:\n  particles 4",
        "preflight: conventions (median)\n  as read                +0.700\n  negated shifts         +0.100, better on 5% of the images",
    ]
    entries += ["epoch 1/2  3/3 steps  99.0 images/s  loss -0.7", "preflight: of a resumed run"]
    assert preflight_entries(entries) == entries[:3]
    assert convention_rows(entries) == [("as read", "+0.700", ""), ("negated shifts", "+0.100", "better on 5% of the images")]


def test_latent_colour_selector_holds_every_particles_cluster_and_segment_motions(tiny_analysis, page):
    settings = colourings(page)
    assert settings["plots"] == ["latent-pca"]  # no UMAP was computed
    labels = np.load(tiny_analysis.analysis / "kmeans" / "labels.npy")
    options = settings["options"]
    assert len(options) == 1 + 2 * N_SEGMENTS
    assert options[0]["kind"] == "cluster" and options[0]["values"] == labels.tolist()
    motions = pd.read_csv(tiny_analysis.analysis / "motions.csv")
    for segment in range(N_SEGMENTS):
        rows = motions[motions["segment"] == segment].sort_values("particle")
        angle, displacement = options[1 + 2 * segment], options[2 + 2 * segment]
        assert angle["label"] == f"segment {segment} rotation angle (°)" and displacement["unit"] == "Å"
        np.testing.assert_allclose(angle["values"], rows["angle_deg"], atol=1e-3)
        np.testing.assert_allclose(displacement["values"], rows["displacement_A"], atol=1e-3)
    # The selector lists them all, in the same order.
    assert re.findall(r'<option value="(\d+)">', page) == [str(i) for i in range(len(options))]


def test_latent_scatter_hover_gives_the_particle_index(tiny_analysis):
    data = read_report_data(tiny_analysis.run, tiny_analysis.analysis)
    shown = figures.subsample(data.n_particles, MAX_POINTS)
    fig = figures.latent_figure(data.projections[:, :2], data.labels, shown, {}, ("PC1", "PC2"), "")
    scatter = fig.data[figures.LATENT_SCATTER_TRACE]
    assert "particle %{customdata[0]}" in scatter.hovertemplate
    np.testing.assert_array_equal(np.asarray(scatter.customdata)[:, 0], np.arange(N_IMAGES))
    np.testing.assert_allclose(np.asarray(scatter.x), data.projections[:, 0], atol=1e-6)
    assert list(scatter.marker.color) == figures.cluster_colours(data.labels)


def test_subsample_keeps_every_particle_up_to_the_limit_then_draws_distinct_ones():
    np.testing.assert_array_equal(figures.subsample(50, 100), np.arange(50))
    rows = figures.subsample(100_000, 10_000)
    assert len(rows) == 10_000 and len(np.unique(rows)) == 10_000 and (np.diff(rows) > 0).all()


def test_trajectory_viewer_has_one_frame_per_traversal_point_with_its_decoded_trace(tiny_analysis):
    data = read_report_data(tiny_analysis.run, tiny_analysis.analysis)
    trajectory = data.trajectories[0]
    assert trajectory.pc == 1 and trajectory.coords.shape == (N_POINTS, len(data.segments), 3)
    np.testing.assert_array_equal(trajectory.particles, np.loadtxt(tiny_analysis.analysis / "pc1" / "indices.txt", dtype=np.int64))
    models = read_all_models(tiny_analysis.analysis / "pc1" / "trajectory.pdb")
    fig = figures.trajectory_figure(trajectory, data.segments, data.n_segments)
    assert [frame.name for frame in fig.frames] == [str(point) for point in range(1, N_POINTS + 1)]
    steps = fig.layout.sliders[0].steps
    assert [list(step.args[0]) for step in steps] == [[str(point)] for point in range(1, N_POINTS + 1)]
    assert [button.label for button in fig.layout.updatemenus[0].buttons] == ["▶ play", "❚❚ pause"]
    # Trace 1 is segment 0 (trace 0: residues outside every segment), in segment 0's colour.
    segment = data.segments["segment"].to_numpy()
    assert fig.data[1].line.color == segment_colours(N_SEGMENTS)[0] and fig.data[1].name == "segment 0"
    for point in (0, N_POINTS - 1):
        drawn = np.column_stack([np.asarray(fig.frames[point].data[1][axis], dtype=np.float64) for axis in "xyz"])
        drawn = drawn[np.isfinite(drawn[:, 0])]
        in_segment = models[point].coords[segment == 0]
        # Every residue of segment 0 is drawn at its position in that model (plus bonds to the next residue).
        distances = np.linalg.norm(in_segment[:, None] - drawn[None], axis=2).min(axis=1)
        assert distances.max() < 2e-3


def test_segment_paths_draw_each_bond_once_and_break_between_runs_and_chains():
    chains = np.array(["A"] * 6 + ["B"] * 2)
    segment = np.array([0, 0, 1, 1, 0, -1, 0, 0])
    paths = figures._segment_paths(chains, segment, 2, np.arange(8))
    fixed, first, second = (path.tolist() for path in paths)
    assert fixed == [5]  # the chain ends at residue 5: no bond to chain B
    assert first == [0, 1, 2, -1, 4, 5, -1, 6, 7]
    assert second == [2, 3, 4]
    bonds = {(a, b) for path in paths for a, b in zip(path[:-1], path[1:]) if a >= 0 and b >= 0}
    assert bonds == {(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (6, 7)}


def test_segment_table_matches_segments_csv(tiny_analysis, page):
    segments = pd.read_csv(tiny_analysis.analysis / "segments.csv", keep_default_na=False)
    for segment in range(N_SEGMENTS):
        count = int((segments["segment"] == segment).sum())
        assert re.search(rf"segment {segment}</td><td>{count}</td>", page), segment


def test_evaluation_section_holds_the_summary_and_its_references(tiny_analysis, page):
    summary = json.loads((tiny_analysis.evaluation / "summary.json").read_text())
    section = page[page.index('<section id="evaluation"') :]
    assert f"<td>{summary['rmsd_A']['median']:.2f}</td>" in section
    for name in ("baseline", "best_single", "rigid_limit"):
        assert f"<td>{name.replace('_', ' ')}</td>" in section
        assert f"<td>{summary['references'][name]['rmsd_A']['median']:.2f}</td>" in section
    assert "Map agreement (FSC on 4 images" in section


def test_report_command_rebuilds_the_page_and_leaves_out_a_missing_evaluation(tiny_analysis, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["report", str(tiny_analysis.run), "--analysis", str(tiny_analysis.analysis), "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert section_ids(out.read_text(encoding="utf-8")) == [key for key, _ in SECTIONS]
    # Without an evaluation there is no accuracy section (and no link to one).
    bare = write_report(tiny_analysis.run, tiny_analysis.analysis, tmp_path / "bare.html", None).read_text(encoding="utf-8")
    assert "evaluation" not in section_ids(bare) and 'href="#evaluation"' not in bare


def copy_analysis(tiny_analysis, tmp_path):
    """A copy of the analysis folder, to edit."""
    return shutil.copytree(tiny_analysis.analysis, tmp_path / "analysis")


def test_a_report_of_100000_particles_stays_a_few_mb_and_says_it_subsamples(tiny_analysis, tmp_path):
    n = 100_000
    out = copy_analysis(tiny_analysis, tmp_path)
    rng = np.random.default_rng(0)
    np.save(out / "pca_projections.npy", rng.normal(size=(n, 2)).astype(np.float32))
    np.save(out / "umap.npy", rng.normal(size=(n, 2)).astype(np.float32))
    np.save(out / "kmeans" / "labels.npy", rng.integers(0, N_CLUSTERS, n))
    motions = pd.DataFrame(
        {
            "particle": np.repeat(np.arange(n), N_SEGMENTS),
            "segment": np.tile(np.arange(N_SEGMENTS), n),
            "angle_deg": rng.uniform(0, 20, n * N_SEGMENTS),
            "displacement_A": rng.uniform(0, 5, n * N_SEGMENTS),
        }
    )
    motions.to_csv(out / "motions.csv", index=False)
    path = write_report(tiny_analysis.run, out, tmp_path / "large.html")
    page = path.read_text(encoding="utf-8")
    size_mb = path.stat().st_size / 1e6
    bundle_mb = len(plotly.offline.get_plotlyjs()) / 1e6
    assert size_mb < bundle_mb + 2.0, f"{size_mb:.1f} MB"
    assert f"showing {MAX_POINTS:,} of {n:,} particles drawn at random" in page
    settings = colourings(page)
    assert settings["plots"] == ["latent-pca", "latent-umap"]
    assert all(len(option["values"]) == MAX_POINTS for option in settings["options"])


def test_missing_analysis_file_is_one_error_naming_it_and_nothing_is_written(tiny_analysis, tmp_path, capsys):
    out = copy_analysis(tiny_analysis, tmp_path)
    (out / "motions.csv").unlink()
    target = tmp_path / "report.html"
    assert main(["report", str(tiny_analysis.run), "--analysis", str(out), "-o", str(target)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "motions.csv: not found" in error and "cryodomain analyze" in error
    assert not target.exists() and not list(tmp_path.glob(".report*"))


def test_analysis_files_of_different_runs_are_refused(tiny_analysis, tmp_path):
    out = copy_analysis(tiny_analysis, tmp_path)
    np.save(out / "kmeans" / "labels.npy", np.zeros(N_IMAGES + 3, dtype=np.int64))
    with pytest.raises(InputError, match=r"labels.npy: holds 51 particles but z.npy holds 48.*analyze"):
        read_report_data(tiny_analysis.run, out)


def test_a_folder_that_is_not_a_run_or_an_evaluation_is_refused(tiny_analysis, tmp_path):
    with pytest.raises(InputError, match="is not a training run folder.*cryodomain train"):
        read_report_data(tmp_path, tiny_analysis.analysis)
    with pytest.raises(InputError, match=r"summary.json: --evaluation: not found; give the -o folder of `cryodomain evaluate`"):
        read_report_data(tiny_analysis.run, tiny_analysis.analysis, tmp_path)


def test_a_particle_without_a_motion_is_left_uncoloured_not_a_broken_page(tiny_analysis, tmp_path):
    out = copy_analysis(tiny_analysis, tmp_path)
    motions = pd.read_csv(out / "motions.csv")
    motions[motions["particle"] != 7].to_csv(out / "motions.csv", index=False)
    page = write_report(tiny_analysis.run, out, tmp_path / "page.html").read_text(encoding="utf-8")
    angle = colourings(page)["options"][1]["values"]
    assert angle[7] is None and all(value is not None for row, value in enumerate(angle) if row != 7)


def test_the_trace_is_ca_for_amino_acids_and_p_for_nucleotides_of_full_atom_files(tmp_path):
    from cryodomain.examples import STATE_A
    from cryodomain.io.structure import read_atomic_model
    from cryodomain.io.structure_writer import write_structure
    from cryodomain.workflows.analyze import segment_table
    from cryodomain.workflows.report_data import trace_coordinates

    structure = read_atomic_model(STATE_A)
    shifted = np.stack([structure.atom_coords, structure.atom_coords + [5.0, 0.0, 0.0]])
    write_structure(tmp_path / "trajectory.pdb", structure, shifted, full_atom=True)
    segments = segment_table(structure, np.zeros(structure.n_residues, dtype=np.int64), np.ones(structure.n_residues))
    trace = trace_coordinates(tmp_path / "trajectory.pdb", segments)
    assert trace.shape == (2, structure.n_residues, 3)
    phosphate = {index: coords for index, name, coords in zip(structure.atom_residue_index, structure.atom_names, structure.atom_coords) if name == "P"}
    for residue in range(structure.n_residues):
        expected = phosphate.get(residue, structure.coords[residue]) if structure.is_nucleotide[residue] else structure.coords[residue]
        np.testing.assert_allclose(trace[:, residue], [expected, expected + [5.0, 0.0, 0.0]], atol=2e-3)
    assert structure.is_nucleotide.any() and len(phosphate) > 10
