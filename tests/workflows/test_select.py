"""`cryodomain select` on tiny trained runs: criteria combine as documented, subsets read back as the input rows."""

import contextlib
import io
import types

import numpy as np
import pytest
import starfile

from cryodomain.commands.main import main
from cryodomain.errors import InputError
from cryodomain.examples import STATE_A
from cryodomain.io.metadata import read_particles
from cryodomain.io.particles import ParticleTable
from cryodomain.io.star import read_star
from cryodomain.io.subset_writer import cryosparc_subset, write_cryosparc
from cryodomain.workflows.analyze import AnalysisSettings, analyze_run
from cryodomain.workflows.config import load_config
from cryodomain.workflows.motions import segment_motions
from cryodomain.workflows.select import Range, Selection, parse_range, read_index_file, select_particles
from cryodomain.workflows.train import train
from cryodomain.workflows.trained_run import TrainedRun

VALUE_FIELDS = ("image_indices", "rotations", "shifts_A", "defocus_u_A", "defocus_v_A", "defocus_angle_rad", "voltage_kv", "pixel_size_A", "image_size")


def assert_same_particles(actual: ParticleTable, expected: ParticleTable, atol: float = 1e-4) -> None:
    np.testing.assert_array_equal(actual.image_paths, expected.image_paths)
    for name in VALUE_FIELDS:
        np.testing.assert_allclose(getattr(actual, name), getattr(expected, name), rtol=1e-6, atol=atol, err_msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_simulation, tiny_config_overrides):
    """A tiny run trained from a star file and one from the same particles as a .cs, both analysed."""
    root = tmp_path_factory.mktemp("select")
    config = load_config(None, tiny_config_overrides)
    star = tiny_simulation["star"]
    cs = root / "cryosparc" / "particles.cs"
    table = read_star(star)
    write_cryosparc(cs, cryosparc_subset(table, np.arange(len(table)), seed=0))
    settings = AnalysisSettings(n_pcs=1, n_points=2, n_clusters=3, n_example_images=1, progress=False)
    loaded = {}
    for name, particles in (("star", star), ("cs", cs)):
        train(particles, STATE_A, root / name, config, progress=False)
        analyze_run(root / name, root / name / "analysis", settings, device="cpu")
        loaded[name] = TrainedRun.load(root / name)
    return types.SimpleNamespace(root=root, star=star, cs=cs, star_run=loaded["star"], cs_run=loaded["cs"])


def labels(run_dir):
    return np.load(run_dir / "analysis" / "kmeans" / "labels.npy")


def projections(run_dir):
    return np.load(run_dir / "analysis" / "pca_projections.npy")


def indices(out):
    return np.loadtxt(out / "indices.txt", dtype=np.int64, ndmin=1)


def select(runs, name: str, out, **criteria):
    return select_particles(runs.root / name, out, Selection(**criteria), uid_seed=1)


def test_clusters_from_a_star_run_give_star_and_cs_of_the_input_rows(runs, tmp_path):
    out = tmp_path / "sub"
    clusters = (0, 2)
    outputs = select(runs, "star", out, clusters=clusters)

    expected = np.flatnonzero(np.isin(labels(runs.root / "star"), clusters))
    np.testing.assert_array_equal(indices(out), expected)
    assert outputs.n_selected == expected.size
    # The star holds the input rows (all columns), with the images found from OUT.
    written = starfile.read(out / "particles.star", always_dict=True)
    source = starfile.read(runs.star, always_dict=True)
    assert list(written["particles"].columns) == list(source["particles"].columns)
    np.testing.assert_allclose(written["particles"]["rlnDefocusU"], source["particles"]["rlnDefocusU"].iloc[expected])
    table = runs.star_run.data.table
    assert_same_particles(read_particles(out / "particles.star"), table.subset(expected))
    # star -> cs: the same poses and CTF, fresh uids.
    cs = np.load(out / "particles.cs")
    assert len(cs) == expected.size and len(np.unique(cs["uid"])) == expected.size
    assert_same_particles(read_particles(out / "particles.cs"), table.subset(expected))
    assert (out / "particles.csg").is_file()


def test_clusters_from_a_cs_run_keep_rows_and_uids(runs, tmp_path):
    out = tmp_path / "sub"
    select(runs, "cs", out, clusters=(1,))

    expected = np.flatnonzero(labels(runs.root / "cs") == 1)
    np.testing.assert_array_equal(indices(out), expected)
    source = np.load(runs.cs)
    np.testing.assert_array_equal(np.load(out / "particles.cs"), source[expected])
    table = runs.cs_run.data.table
    assert_same_particles(read_particles(out / "particles.cs"), table.subset(expected))
    # cs -> star: the same poses and CTF.
    assert_same_particles(read_particles(out / "particles.star"), table.subset(expected))


def test_criteria_combine_as_and_and_invert_takes_the_complement(runs, tmp_path):
    pc1 = projections(runs.root / "star")[:, 0]
    low, high = np.percentile(pc1, [20, 80])
    in_cluster = labels(runs.root / "star") != 0
    chosen = np.arange(0, 48, 3)
    index_file = tmp_path / "picked.txt"
    index_file.write_text("\n".join(map(str, chosen)) + "\n")
    in_file = np.isin(np.arange(48), chosen)
    in_range = (pc1 >= low) & (pc1 <= high)
    criteria = dict(clusters=(1, 2), pc_ranges=(Range(1, low, high),), indices_file=index_file)

    select(runs, "star", tmp_path / "and", formats="star", **criteria)
    np.testing.assert_array_equal(indices(tmp_path / "and"), np.flatnonzero(in_cluster & in_range & in_file))
    select(runs, "star", tmp_path / "not", formats="star", invert=True, **criteria)
    np.testing.assert_array_equal(indices(tmp_path / "not"), np.flatnonzero(~(in_cluster & in_range & in_file)))


def test_several_pc_ranges_must_all_hold(runs, tmp_path):
    both = projections(runs.root / "star")
    first, second = np.median(both[:, 0]), np.median(both[:, 1])
    ranges = (Range(1, -np.inf, first), Range(2, second, np.inf))
    select(runs, "star", tmp_path / "pcs", pc_ranges=ranges, formats="cs")
    np.testing.assert_array_equal(indices(tmp_path / "pcs"), np.flatnonzero((both[:, 0] <= first) & (both[:, 1] >= second)))
    assert not (tmp_path / "pcs" / "particles.star").exists()


@pytest.mark.parametrize("measure", ["angle", "displacement"])
def test_segment_motion_selects_on_the_motions_module(runs, tmp_path, measure):
    motions = segment_motions(runs.star_run, runs.star_run.latent_means(progress=False))
    values = (motions.angle_deg if measure == "angle" else motions.displacement_A)[:, 1]
    low, high = np.percentile(values, [25, 75])
    select(runs, "star", tmp_path / measure, segment_motion=Range(2, low, high), motion=measure, formats="star")
    expected = np.flatnonzero((values >= low) & (values <= high))
    assert 0 < expected.size < 48
    np.testing.assert_array_equal(indices(tmp_path / measure), expected)


def test_a_format_not_written_again_is_removed(runs, tmp_path):
    out = tmp_path / "sub"
    select(runs, "star", out, clusters=(0,))
    select(runs, "star", out, clusters=(1,), formats="star")
    assert (out / "particles.star").is_file() and not (out / "particles.cs").exists() and not (out / "particles.csg").exists()
    assert len(starfile.read(out / "particles.star", always_dict=True)["particles"]) == len(indices(out))


def run_cli(*args: str) -> tuple[int, str]:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        status = main(["select", *args])
    return status, errors.getvalue()


def test_command_line_selection_and_its_summary(runs, tmp_path):
    out = tmp_path / "cli"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["select", str(runs.root / "star"), "-o", str(out), "--clusters", "0", "--invert", "--pc", "1:-1e9:1e9"]) == 0
    np.testing.assert_array_equal(indices(out), np.flatnonzero(labels(runs.root / "star") != 0))
    assert "particles.star" in printed.getvalue() and "particles.csg" in printed.getvalue()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--pc", "1:5e3:6e3"], ["no particle", "selection"]),
        (["--clusters", "0,1,2", "--invert"], ["no particle", "--invert"]),
        (["--clusters", "7"], ["--clusters", "0 to 2"]),
        (["--pc", "9:0:1"], ["--pc", "PC 9"]),
        (["--segment-motion", "4:0:10"], ["--segment-motion", "segment 4"]),
    ],
)
def test_empty_or_impossible_selections_are_one_line_errors_writing_nothing(runs, tmp_path, args, words):
    out = tmp_path / "none"
    status, errors = run_cli(str(runs.root / "star"), "-o", str(out), *args)
    # The log goes to stderr too; the error is one line of its own.
    reported = [line for line in errors.splitlines() if line.startswith("cryodomain select: error:")]
    assert status == 2 and len(reported) == 1 and "Traceback" not in errors
    for word in words:
        assert word in reported[0]
    assert not out.exists()


def test_missing_analysis_says_how_to_make_one(runs, tmp_path):
    status, errors = run_cli(str(runs.root / "star"), "-o", str(tmp_path / "x"), "--clusters", "0", "--analysis", str(tmp_path / "nothing"))
    assert status == 2 and "labels.npy" in errors and "cryodomain analyze" in errors


def test_no_criterion_is_refused(runs, tmp_path):
    status, errors = run_cli(str(runs.root / "star"), "-o", str(tmp_path / "x"))
    assert status == 2 and "--clusters, --indices, --pc or --segment-motion" in errors


def test_help_runs():
    with pytest.raises(SystemExit) as stopped, contextlib.redirect_stdout(io.StringIO()) as printed:
        main(["select", "--help"])
    assert stopped.value.code == 0 and "--segment-motion" in printed.getvalue()


def test_index_files_text_and_npy(tmp_path):
    (tmp_path / "a.txt").write_text("3\n1\n3\n")
    np.testing.assert_array_equal(read_index_file(tmp_path / "a.txt", 5), [3, 1, 3])
    np.save(tmp_path / "b.npy", np.array([0, 4]))
    np.testing.assert_array_equal(read_index_file(tmp_path / "b.npy", 5), [0, 4])
    (tmp_path / "one.txt").write_text("2\n")
    np.testing.assert_array_equal(read_index_file(tmp_path / "one.txt", 5), [2])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1\n5\n", "index 5 (line 2) is outside 0..4"),
        ("1.5\n", "not integers"),
        ("", "holds no indices"),
        ("1 2\n3 4\n", "expected a list"),
        ("a\n", "cannot read"),
    ],
)
def test_bad_index_files_name_the_problem(tmp_path, text, problem):
    (tmp_path / "i.txt").write_text(text)
    with pytest.raises(InputError, match="--indices") as error:
        read_index_file(tmp_path / "i.txt", 5)
    assert problem in str(error.value)


@pytest.mark.parametrize("text", ["1:2", "0:1:2", "1:3:2", "x:1:2", "1:nan:2"])
def test_bad_ranges_are_refused(text):
    with pytest.raises(InputError, match="--pc"):
        parse_range(text, "--pc")


def test_range_parsing_accepts_negative_bounds():
    assert parse_range("1:-1.5:0.5", "--pc") == Range(1, -1.5, 0.5)
