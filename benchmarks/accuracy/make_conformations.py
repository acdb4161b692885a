"""Write the conformation series of the accuracy benchmark (multi-model PDB files with the truth).

Series (every model holds the same atoms in the same order; waters and ligands dropped):

- ``hinge``: the bundled 3MHT example with chain A residues ``MOVED_RESIDUES`` rotated rigidly about
  the hinge axis through the CA atoms of ``HINGE_RESIDUES``, by angles evenly spaced from 0 to
  ``HINGE_ANGLE_DEG`` (the last state is ``example_state_b.pdb``; checked to 1e-3 Å).
- ``anm``: the GluA3 N-terminal domain (PDB 3O21, chain A, from ProDy's test files) deformed along a
  curved normal-mode path (continuous, not rigid) that keeps the chain's bonds: the tangent
  ``s * (v1 + 2 r t v2)`` for ``t`` from -1 to 1, where v1, v2 are the two lowest non-trivial ANM
  modes of the *current* structure (recomputed at every small step), the CA-CA distances of chain
  neighbours restored after each step and the rigid drift removed. Linear modes of the crystal
  would stretch those bonds by up to several Å at 6 Å RMSD; real proteins keep them. Every atom
  follows the rigid motion of its residue's backbone neighbourhood (CA i-2..i+2). Centred so that
  the mean residue coordinate of state 0 is at the origin.
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
from cryodomain.workflows.references import kabsch

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
ANM_SUBSTEPS = 4  # mode recomputations per state step (8 moves no state by more than 0.004 Å)
ANM_RMSD_TOLERANCE_A = 0.05  # the scale is refitted until the farthest state is this close to the target
BOND_ITERATIONS = 50  # relaxation sweeps restoring the CA-CA distances after each step
FRAME_HALF_WIDTH = 2  # an atom follows the rigid motion of CA i-2..i+2 of its residue


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


def restore_bonds(coords: np.ndarray, pairs: np.ndarray, lengths: np.ndarray, sweeps: int = BOND_ITERATIONS) -> np.ndarray:
    """``coords`` ``(R, 3)`` Å with the distances of ``pairs`` ``(P, 2)`` moved back to ``lengths`` ``(P,)`` Å.

    Damped Jacobi sweeps: each pair's error is split between its two residues, halved because a
    residue sits in up to two pairs. Converges to < 1e-5 Å for the small errors of one path step.
    """
    coords = coords.copy()
    for _ in range(sweeps):
        bond = coords[pairs[:, 1]] - coords[pairs[:, 0]]
        length = np.linalg.norm(bond, axis=1)
        correction = ((length - lengths) / (4.0 * length))[:, None] * bond
        delta = np.zeros_like(coords)
        np.add.at(delta, pairs[:, 0], correction)
        np.add.at(delta, pairs[:, 1], -correction)
        coords += delta
    return coords


def _aligned_modes(coords: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """The two path modes of ``coords``, signed to continue ``previous`` ``(2, R, 3)`` (None: by _fix_sign)."""
    vectors, _ = anm_modes(coords, ANM_MODES, ANM_CUTOFF_A)
    if previous is not None:
        signs = np.sign(np.einsum("kri,kri->k", vectors, previous))
        vectors = vectors * np.where(signs == 0, 1.0, signs)[:, None, None]
    return vectors


def march_anm_path(base: np.ndarray, pairs: np.ndarray, scale: float, n_states: int, mode2_ratio: float, substeps: int = ANM_SUBSTEPS) -> np.ndarray:
    """States ``(n_states, R, 3)`` Å along the curved mode path through ``base`` (which is t = 0).

    From ``base``, steps of ``dt`` go to t = 1 and to t = -1 along ``scale (v1 + 2 r t v2)`` at the
    step's midpoint ``t``, with the modes of the current structure; after each step the bonds are
    restored and the structure is superposed back onto ``base`` (normal modes carry no rigid motion).
    """
    n_fine = (n_states - 1) * substeps
    if n_fine % 2:
        raise ValueError("(n_states - 1) * substeps must be even so that t = 0 lies on the path")
    t = np.linspace(-1.0, 1.0, n_fine + 1)
    lengths = np.linalg.norm(base[pairs[:, 1]] - base[pairs[:, 0]], axis=1)
    states = np.empty((n_fine + 1, *base.shape))
    middle = n_fine // 2
    states[middle] = base
    start_modes = _aligned_modes(base, None)
    for direction in (1, -1):
        coords, modes = base, start_modes
        for index in range(middle, middle + direction * middle, direction):
            dt = t[index + direction] - t[index]
            modes = _aligned_modes(coords, modes)
            tangent = modes[0] + 2.0 * mode2_ratio * (t[index] + dt / 2.0) * modes[1]
            coords = restore_bonds(coords + scale * dt * tangent, pairs, lengths)
            rotation, translation = kabsch(coords, base)
            coords = coords @ rotation.T + translation
            states[index + direction] = coords
    return states[::substeps]


def anm_path(base: np.ndarray, pairs: np.ndarray, n_states: int, mode2_ratio: float, target_rmsd_A: float) -> tuple[np.ndarray, float]:
    """The mode path with its scale refitted so the farthest state is ``target_rmsd_A`` from the first.

    Returns:
        ``(states (n_states, R, 3) Å, scale)``; the first scale is the one that would put the linear
        path ``s (t v1 + r t^2 v2)`` of the base's modes at the target.
    """
    vectors = _aligned_modes(base, None)
    t = np.linspace(-1.0, 1.0, n_states)[:, None, None]
    linear = t * vectors[0] + mode2_ratio * t**2 * vectors[1]
    scale = target_rmsd_A / max(ca_rmsd(state, linear[0]) for state in linear)
    for _ in range(5):
        states = march_anm_path(base, pairs, scale, n_states, mode2_ratio)
        farthest = max(ca_rmsd(state, states[0]) for state in states)
        if abs(farthest - target_rmsd_A) <= ANM_RMSD_TOLERANCE_A:
            break
        scale *= target_rmsd_A / farthest
    return states, float(scale)


def move_atoms_with_backbone(model: AtomicModel, residue_coords: np.ndarray) -> np.ndarray:
    """``(M, A, 3)`` Å: every atom moved by the rigid fit of its residue's CA window onto each state.

    The window is CA ``i - FRAME_HALF_WIDTH .. i + FRAME_HALF_WIDTH`` (clipped at the ends), so side
    chains turn with the local backbone instead of only translating.
    """
    n_residues = model.coords.shape[0]
    offsets = np.arange(-FRAME_HALF_WIDTH, FRAME_HALF_WIDTH + 1)
    window = np.clip(np.arange(n_residues)[:, None] + offsets, 0, n_residues - 1)
    rotation, translation = kabsch(np.broadcast_to(model.coords[window], (len(residue_coords), *window.shape, 3)), residue_coords[:, window])
    residue = model.atom_residue_index
    return np.einsum("maij,aj->mai", rotation[:, residue], model.atom_coords) + translation[:, residue]


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
    _, eigenvalues = anm_modes(model.coords, ANM_MODES, ANM_CUTOFF_A)
    pairs = model.consecutive_pairs()
    residue_coords, scale = anm_path(model.coords, pairs, n_states, mode2_ratio, target_rmsd_A)
    atom_coords = move_atoms_with_backbone(model, residue_coords)
    centre = residue_coords[0].mean(axis=0)
    # CA-CA distances of sequence neighbours against the crystal (kept by the path).
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
            "eigenvalues_of_the_crystal": eigenvalues.tolist(),
            "sign": "at the crystal each eigenvector's largest-magnitude component positive; then continued by overlap",
        },
        "path": (
            "from the crystal (t = 0) to t = +1 and t = -1 in steps dt: x += scale * dt * (v1 + 2 mode2_ratio t v2) with "
            "v1, v2 the modes of the current x (unit norm over 3R), then CA-CA distances of chain neighbours restored "
            "and x superposed onto the crystal; states at t = linspace(-1, 1, n_states)"
        ),
        "substeps_per_state": ANM_SUBSTEPS,
        "atoms": f"each atom moved by the rigid fit of CA i-{FRAME_HALF_WIDTH}..i+{FRAME_HALF_WIDTH} of its residue",
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
