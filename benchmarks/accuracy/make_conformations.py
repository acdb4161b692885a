"""Write the conformation series of the accuracy benchmark (multi-model PDB files with the truth).

Series (every model holds the same atoms in the same order; waters and ligands dropped):

- ``hinge``: the bundled 3MHT example with chain A residues ``MOVED_RESIDUES`` rotated rigidly about
  the hinge axis through the CA atoms of ``HINGE_RESIDUES``, by angles evenly spaced from 0 to
  ``HINGE_ANGLE_DEG`` (the last state is ``example_state_b.pdb``; checked to 1e-3 Å).
- ``anm``: the GluA3 N-terminal domain (PDB 3O21, chain A, from ProDy's test files) deformed along a
  curved path in the space of its two lowest non-trivial ANM modes (continuous, not rigid): residue
  displacement ``s * (t * v1 + r * t**2 * v2)``, ``t`` evenly spaced in [-1, 1]; every atom moves
  with its residue's CA. Centred so that the mean residue coordinate of state 0 is at the origin.
- ``two_state``: the two bundled example states as they are.

For each series NAME the folder gets ``NAME.pdb`` (all states, one model each), ``NAME_state0.pdb``
(the first state alone: the base model for training) and ``NAME.json`` (source, number of states,
CA RMSD of the last and of the farthest state to the first, and the series' parameters).

Usage (from the repository root; ``anm`` needs ``.venv/bin/pip install prody``):

    .venv/bin/python benchmarks/accuracy/make_conformations.py
    .venv/bin/python benchmarks/accuracy/make_conformations.py -o /tmp/conf --series hinge two_state
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import gemmi
import numpy as np

from cryodomain.examples import (
    HINGE_ANGLE_DEG,
    HINGE_RESIDUES,
    MOVED_CHAIN,
    MOVED_RESIDUES,
    STATE_A,
    STATE_B,
)
from cryodomain.io.structure import AtomicModel, read_all_models, read_atomic_model
from cryodomain.io.structure_writer import write_structure

logger = logging.getLogger("make_conformations")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = Path("/tmp/cryodomain_accuracy/conformations")
SERIES = ("hinge", "anm", "two_state")
N_STATES = 60
# The last hinge state must reproduce example_state_b.pdb to this many Å (PDB files keep 3 decimals).
STATE_B_TOLERANCE_A = 1e-3

# The ANM series: a ProDy test structure, the chains kept, the elastic network and the path.
ANM_SOURCE_FILE = "pdb3o21.pdb"
ANM_CHAINS = ("A",)
ANM_CUTOFF_A = 15.0  # ProDy's default
ANM_MODES = (0, 1)  # the two lowest non-trivial modes (ProDy drops the six zero modes)
ANM_MODE2_RATIO = 0.5  # amplitude of the t**2 mode-2 term relative to the t mode-1 term
ANM_TARGET_RMSD_A = 6.0  # CA RMSD of the farthest state to state 0


@dataclass
class Series:
    """One conformation series: a template model and the all-atom coordinates of every state.

    Attributes:
        name: file stem of the series.
        template: residues and atoms shared by every state (its coordinates are not used).
        atom_coords: ``(M, A, 3)`` Å, one set per state, in ``template``'s atom order.
        info: series-specific entries of the JSON record (source, parameters).
    """

    name: str
    template: AtomicModel
    atom_coords: np.ndarray
    info: dict = field(default_factory=dict)


def series_paths(out_dir: str | Path, name: str) -> dict[str, Path]:
    """The files of series ``name`` in ``out_dir``: ``{"states", "state0", "info"}``."""
    out_dir = Path(out_dir)
    return {
        "states": out_dir / f"{name}.pdb",
        "state0": out_dir / f"{name}_state0.pdb",
        "info": out_dir / f"{name}.json",
    }


def ca_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD in Å between two ``(R, 3)`` residue coordinate sets, without superposition."""
    return float(np.sqrt(((np.asarray(a) - np.asarray(b)) ** 2).sum(-1).mean()))


def _load_example_tool() -> ModuleType:
    """``tools/make_example_conformations.py`` as a module (its ``rotate_domain`` made state B)."""
    path = REPO / "tools" / "make_example_conformations.py"
    spec = importlib.util.spec_from_file_location("make_example_conformations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hinge_series(n_states: int = N_STATES) -> Series:
    """State A of the example with its recognition domain rotated from 0 to ``HINGE_ANGLE_DEG``.

    The rotation is the one that made ``example_state_b.pdb``; the last state is checked against it.
    """
    rotate_domain = _load_example_tool().rotate_domain
    state_a = read_atomic_model(STATE_A)
    angles = np.linspace(0.0, HINGE_ANGLE_DEG, n_states)
    coords = np.stack([rotate_domain(state_a, MOVED_CHAIN, MOVED_RESIDUES, HINGE_RESIDUES, angle).atom_coords for angle in angles])
    deviation = float(np.abs(coords[-1] - read_atomic_model(STATE_B).atom_coords).max())
    if deviation >= STATE_B_TOLERANCE_A:
        raise RuntimeError(f"the {HINGE_ANGLE_DEG} degree state differs from {STATE_B.name} by {deviation:.4f} A")
    info = {
        "source": f"{STATE_A.relative_to(REPO)} (PDB 3MHT without waters and SAH, centred)",
        "moved": {"chain": MOVED_CHAIN, "residues": list(MOVED_RESIDUES)},
        "hinge_axis_ca_of_residues": list(HINGE_RESIDUES),
        "angles_deg": [float(angle) for angle in angles],
        "last_state_max_deviation_from_example_state_b_A": deviation,
    }
    return Series("hinge", state_a, coords, info)


def two_state_series() -> Series:
    """The two bundled example states, unchanged."""
    state_a, state_b = read_atomic_model(STATE_A), read_atomic_model(STATE_B)
    info = {"source": [str(STATE_A.relative_to(REPO)), str(STATE_B.relative_to(REPO))]}
    return Series("two_state", state_a, np.stack([state_a.atom_coords, state_b.atom_coords]), info)


def read_chains(path: Path, chains: tuple[str, ...]) -> AtomicModel:
    """The amino acids and nucleotides of ``chains`` of ``path`` (first model), read by cryodomain."""
    structure = gemmi.read_structure(str(path))
    structure.remove_ligands_and_waters()
    while len(structure) > 1:
        del structure[len(structure) - 1]
    model = structure[0]
    for index in reversed(range(len(model))):
        if model[index].name not in chains:
            del model[index]
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / f"{path.stem}_{''.join(chains)}.pdb"
        structure.write_pdb(str(subset))
        return read_atomic_model(subset)


def _fix_sign(vector: np.ndarray) -> np.ndarray:
    """The eigenvector with its largest-magnitude component positive (eigenvector signs are arbitrary)."""
    return vector if vector[np.argmax(np.abs(vector))] > 0 else -vector


def anm_modes(coords: np.ndarray, modes: tuple[int, ...], cutoff_A: float) -> tuple[np.ndarray, np.ndarray]:
    """ANM modes of the residue coordinates: ``(vectors (len(modes), R, 3) unit norm, eigenvalues)``."""
    import prody

    # ProDy's logger (".prody") has its own handler; without this its messages also reach the root's.
    logging.getLogger(".prody").propagate = False
    prody.confProDy(verbosity="none")
    anm = prody.ANM("accuracy benchmark")
    anm.buildHessian(coords, cutoff=cutoff_A)
    anm.calcModes(n_modes=max(modes) + 1, zeros=False)
    vectors = np.stack([_fix_sign(anm[k].getArray()).reshape(-1, 3) for k in modes])
    return vectors, np.array([anm[k].getEigval() for k in modes])


def anm_path(vectors: np.ndarray, n_states: int, mode2_ratio: float, target_rmsd_A: float) -> tuple[np.ndarray, float]:
    """Residue displacements along ``s (t v1 + r t^2 v2)``, t in [-1, 1]: ``((M, R, 3) Å, s)``.

    ``s`` makes the CA RMSD of the farthest state to the first ``target_rmsd_A``.
    """
    t = np.linspace(-1.0, 1.0, n_states)[:, None, None]
    unit = t * vectors[0] + mode2_ratio * t**2 * vectors[1]
    farthest = max(ca_rmsd(state, unit[0]) for state in unit)
    scale = target_rmsd_A / farthest
    return scale * unit, float(scale)


def anm_series(
    n_states: int = N_STATES,
    mode2_ratio: float = ANM_MODE2_RATIO,
    target_rmsd_A: float = ANM_TARGET_RMSD_A,
) -> Series:
    """The 3O21 chain A deformed along its two lowest ANM modes, centred on state 0's residues."""
    import prody

    source = Path(prody.__file__).parent / "tests" / "datafiles" / ANM_SOURCE_FILE
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: the anm series needs ProDy's test files (pip install prody)")
    model = read_chains(source, ANM_CHAINS)
    vectors, eigenvalues = anm_modes(model.coords, ANM_MODES, ANM_CUTOFF_A)
    displacement, scale = anm_path(vectors, n_states, mode2_ratio, target_rmsd_A)
    residue_coords = model.coords + displacement
    atom_coords = model.atom_coords + displacement[:, model.atom_residue_index]
    centre = residue_coords[0].mean(axis=0)
    # Linear modes stretch the chain: CA-CA distances of sequence neighbours against the crystal.
    pairs = model.consecutive_pairs()
    stretch = np.abs(
        np.linalg.norm(residue_coords[:, pairs[:, 1]] - residue_coords[:, pairs[:, 0]], axis=-1)
        - np.linalg.norm(model.coords[pairs[:, 1]] - model.coords[pairs[:, 0]], axis=-1)
    ).max(axis=0)
    info = {
        "source": f"ProDy {prody.__version__} prody/tests/datafiles/{ANM_SOURCE_FILE} (PDB 3O21, GluA3 N-terminal domain), chain(s) {', '.join(ANM_CHAINS)}",
        "anm": {
            "atoms": "CA of every residue read by cryodomain",
            "cutoff_A": ANM_CUTOFF_A,
            "gamma": 1.0,
            "mode_indices": list(ANM_MODES),
            "mode_indices_note": "0-based among the non-trivial modes, ascending eigenvalue (the six zero modes excluded)",
            "eigenvalues": eigenvalues.tolist(),
            "sign": "each eigenvector's largest-magnitude component positive",
        },
        "path": "displacement = scale * (t * v1 + mode2_ratio * t**2 * v2), t = linspace(-1, 1, n_states); v unit norm over 3R",
        "scale_A": scale,
        "mode2_ratio": mode2_ratio,
        "target_max_ca_rmsd_A": target_rmsd_A,
        "centre_subtracted_A": centre.tolist(),
        "consecutive_ca_distance_change_from_crystal_A": {
            "max": float(stretch.max()),
            "median_over_pairs_of_max_over_states": float(np.median(stretch)),
            "fraction_of_pairs_above_0.5": float((stretch > 0.5).mean()),
        },
    }
    return Series("anm", model, atom_coords - centre, info)


def _same_residues(a: AtomicModel, b: AtomicModel) -> bool:
    """Whether two models hold the same residues and atoms in the same order."""
    keys = ("chain_ids", "residue_numbers", "insertion_codes", "residue_names", "atom_names", "atom_residue_index")
    return all(np.array_equal(getattr(a, key), getattr(b, key)) for key in keys)


def write_series(series: Series, out_dir: Path) -> dict:
    """Write the series' files, read them back with cryodomain's reader and write the JSON record.

    Returns:
        The JSON record (its numbers measured on the files as read back).

    Raises:
        RuntimeError: the states read back do not all hold the same residues and atoms.
    """
    paths = series_paths(out_dir, series.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_structure(paths["states"], series.template, series.atom_coords, full_atom=True)
    write_structure(paths["state0"], series.template, series.atom_coords[0], full_atom=True)

    states = read_all_models(paths["states"])
    state0 = read_atomic_model(paths["state0"])
    if not all(_same_residues(state, state0) for state in states) or not np.array_equal(states[0].atom_coords, state0.atom_coords):
        raise RuntimeError(f"{paths['states']}: the states read back differ in residues or atoms")
    rmsd = [ca_rmsd(state.coords, states[0].coords) for state in states]
    radius = max(float(np.linalg.norm(state.atom_coords, axis=1).max()) for state in states)
    record = {
        "series": series.name,
        "states_file": paths["states"].name,
        "state0_file": paths["state0"].name,
        "n_states": len(states),
        "n_residues": state0.n_residues,
        "n_atoms": state0.n_atoms,
        "ca_rmsd_last_to_first_A": rmsd[-1],
        "ca_rmsd_max_to_first_A": max(rmsd),
        "max_atom_distance_from_origin_A": radius,
        **series.info,
    }
    paths["info"].write_text(json.dumps(record, indent=2) + "\n")
    logger.info(
        "%s: %d states, %d residues, %d atoms; CA RMSD last-first %.3f A (max %.3f A); atoms within %.1f A of the origin",
        paths["states"],
        len(states),
        state0.n_residues,
        state0.n_atoms,
        rmsd[-1],
        max(rmsd),
        radius,
    )
    return record


BUILDERS = {"hinge": hinge_series, "anm": anm_series, "two_state": two_state_series}


def build(out_dir: str | Path = DEFAULT_OUT, names: tuple[str, ...] | list[str] = SERIES) -> dict[str, dict]:
    """Build and write the named series into ``out_dir``; returns their JSON records by name."""
    return {name: write_series(BUILDERS[name](), Path(out_dir)) for name in names}


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line) and write the series."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output-dir", type=Path, default=DEFAULT_OUT, help="where to write (default: %(default)s)")
    parser.add_argument("--series", nargs="+", choices=SERIES, default=list(SERIES), help="series to write (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args.output_dir, args.series)


if __name__ == "__main__":
    main()
