import csv
import json

import numpy as np
import pytest

from cryodomain.commands.main import main
from cryodomain.examples import STATE_A
from cryodomain.workflows.config import load_config
from cryodomain.workflows.evaluate import binned_table, conformation_bins, evaluate_run, per_image_rmsd
from cryodomain.workflows.structures import DEFAULT_ESTIMATE, write_particle_structures
from cryodomain.workflows.train import train
from cryodomain.workflows.trained_run import TrainedRun


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_simulation, tiny_config_overrides):
    run_dir = tmp_path_factory.mktemp("evaluate") / "run"
    train(tiny_simulation["star"], STATE_A, run_dir, load_config(None, tiny_config_overrides), progress=False)
    return run_dir


def read_csv(path):
    return list(csv.DictReader(open(path)))


def test_evaluate_writes_the_references_and_the_map_agreement(tmp_path, tiny_run, tiny_simulation):
    out = tmp_path / "eval"
    result = evaluate_run(tiny_run, tiny_simulation["truth"], out, device="cpu", map_images=6, seed=1)
    rows = read_csv(out / "rmsd.csv")
    assert len(rows) == 48
    assert list(rows[0]) == ["image", "conformation", "rmsd_A", "baseline_rmsd_A", "best_single_rmsd_A", "rigid_limit_rmsd_A"]
    assert json.loads((out / "summary.json").read_text()) == result
    assert result["estimate"] == DEFAULT_ESTIMATE
    # The run's structures are those of `cryodomain structures` with the same estimate.
    coords = np.load(out / "coords.npy")
    np.testing.assert_allclose(coords, write_particle_structures(tmp_path / "s.npy", TrainedRun.load(tiny_run), DEFAULT_ESTIMATE, progress=False), atol=1e-5)
    truth = np.load(tiny_simulation["truth"])
    rmsd = np.sqrt(((coords - truth["coords"][truth["conformation"]]) ** 2).sum(-1).mean(-1))
    np.testing.assert_allclose([float(row["rmsd_A"]) for row in rows], rmsd, atol=1e-3)
    references = result["references"]
    assert set(references) == {"baseline", "best_single", "rigid_limit"}
    limit = references["rigid_limit"]
    assert limit["n_segments"] == 3 and limit["exact"]
    assert len(limit["boundaries"]) == 4 and limit["boundaries"][0] == 0 and limit["boundaries"][-1] == 352

    values = {name: np.array([float(row[name]) for row in rows]) for name in rows[0] if name.endswith("_A")}
    # The rigid limit can only improve on the unmoved base, conformation by conformation ...
    assert np.all(values["rigid_limit_rmsd_A"] <= values["baseline_rmsd_A"] + 1e-4)
    # ... and the best single structure has the least mean squared RMSD of any single structure.
    assert np.mean(values["best_single_rmsd_A"] ** 2) <= np.mean(values["baseline_rmsd_A"] ** 2)
    # State B is state A with one contiguous domain rotated: three rigid segments reach it exactly,
    # where no single structure can fit both states.
    assert references["rigid_limit"]["rmsd_A"]["median"] < 0.01 < references["best_single"]["rmsd_A"]["median"]
    assert set(result["by_conformation"]) == {"0", "1"}
    assert set(result["by_conformation"]["0"]) == {"n_images", "rmsd_A", "baseline_rmsd_A", "best_single_rmsd_A", "rigid_limit_rmsd_A"}

    agreement = result["map_agreement"]
    assert agreement["n_images"] == 6 and set(agreement) == {"n_images", "nyquist_A", "run", "baseline", "best_single", "rigid_limit"}
    for name in ("run", "baseline", "best_single", "rigid_limit"):
        assert 0.0 <= agreement[name]["auc"]["median"] <= 1.0
        assert agreement[name]["resolution_A_at_fsc_0.5"]["median"] >= 8.0  # Nyquist of 4 Å pixels
    # The exact rigid fit gives (nearly) the true map.
    assert agreement["rigid_limit"]["auc"]["median"] > 0.99
    curve = read_csv(out / "fsc.csv")
    assert len(curve) == 17 and list(curve[0]) == ["frequency_per_A", "resolution_A", "fsc_run", "fsc_baseline", "fsc_best_single", "fsc_rigid_limit"]
    assert float(curve[-1]["frequency_per_A"]) == pytest.approx(1 / 8.0)
    per_image = read_csv(out / "map_agreement.csv")
    assert len(per_image) == 6 and "auc_run" in per_image[0] and "resolution_A_run" in per_image[0]
    # The same seed samples the same images.
    again = evaluate_run(tiny_run, tiny_simulation["truth"], tmp_path / "again", device="cpu", map_images=6, seed=1)
    assert again["map_agreement"] == agreement


def test_many_conformations_print_a_short_binned_table(tmp_path, tiny_run, tiny_simulation, capsys):
    truth = np.load(tiny_simulation["truth"])
    rng = np.random.default_rng(0)
    conformation = np.arange(48) % 30
    # 30 conformations: each a perturbation of one of the two simulated states.
    coords = truth["coords"][np.arange(30) % 2] + rng.normal(0.0, 0.5, (30, *truth["coords"].shape[1:])).astype(np.float32)
    many = tmp_path / "truth30.npz"
    np.savez(many, coords=coords, conformation=conformation)
    out = tmp_path / "eval30"
    assert main(["evaluate", str(tiny_run), "--truth", str(many), "-o", str(out), "--device", "cpu", "--map-images", "4"]) == 0
    printed = capsys.readouterr().out
    lines = printed.strip().splitlines()
    assert "{" not in printed  # a table, not JSON blocks
    header = next(i for i, line in enumerate(lines) if line.split()[0] == "conformations")
    last = next(i for i, line in enumerate(lines) if line.split()[0] == "all")
    assert last - header + 1 == 12  # header, 10 bins, all images
    assert len(lines) <= 18
    assert "rigid limit: 3 segments" in printed and "map agreement on 4 images" in printed

    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["by_conformation"]) == 30  # full detail stays in the file
    bins = summary["by_conformation_bin"]
    assert len(bins) == 10 and bins[0]["conformations"] == [0, 2] and bins[-1]["conformations"] == [27, 29]
    assert sum(row["n_images"] for row in bins) == 48
    rows = read_csv(out / "rmsd.csv")
    limit = np.array([float(row["rigid_limit_rmsd_A"]) for row in rows])
    baseline = np.array([float(row["baseline_rmsd_A"]) for row in rows])
    assert np.all(limit <= baseline + 1e-4)


def test_per_image_rmsd_by_hand():
    # Two residues, two conformations; each image is compared with its own conformation.
    truth = np.array([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]])
    conformation = np.array([0, 1, 1, 1])
    predicted = np.array(
        [
            [[3.0, 4.0, 0.0], [0.0, 0.0, 5.0]],  # 5 Å off at both residues: sqrt((25 + 25) / 2) = 5
            [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]],  # its truth exactly
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],  # conformation 0 against 1: sqrt((3 + 12) / 2)
            [[2.0, 3.0, 3.0], [3.0, 4.0, 4.0]],  # conformation 1 moved by (1, 2, 2): 3 Å, no superposition
        ]
    )
    np.testing.assert_allclose(per_image_rmsd(predicted, truth, conformation), [5.0, 0.0, np.sqrt(7.5), 3.0], rtol=1e-12)
    # One structure for every image (the unmoved base model).
    np.testing.assert_allclose(per_image_rmsd(truth[0], truth, conformation), [0.0, np.sqrt(7.5), np.sqrt(7.5), np.sqrt(7.5)], rtol=1e-12)


def test_bins_are_contiguous_and_cover_every_conformation():
    assert conformation_bins(4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    bins = conformation_bins(98)
    assert len(bins) == 10 and bins[0][0] == 0 and bins[-1][1] == 97
    assert all(b[0] == a[1] + 1 for a, b in zip(bins, bins[1:]))
    # A bin without images has no median.
    table = binned_table({"run": np.array([1.0, 3.0])}, np.array([0, 0]), 2)
    assert table == [{"conformations": [0, 0], "n_images": 2, "run_median_A": 2.0}, {"conformations": [1, 1], "n_images": 0, "run_median_A": None}]


def test_a_negative_number_of_map_images_is_an_input_error(tmp_path, tiny_run, tiny_simulation, capsys):
    assert main(["evaluate", str(tiny_run), "--truth", str(tiny_simulation["truth"]), "-o", str(tmp_path / "e"), "--map-images", "-1"]) == 2
    assert "--map-images" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["evaluate", "structures"])
def test_a_number_of_anchors_below_one_is_an_input_error_naming_the_option(tmp_path, tiny_run, tiny_simulation, capsys, command):
    extra = ["--truth", str(tiny_simulation["truth"])] if command == "evaluate" else []
    assert main([command, str(tiny_run), *extra, "-o", str(tmp_path / "e"), "--anchors", "0"]) == 2
    assert "--anchors" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
