"""Geometry checks of full-atom structures moved segment by segment: chain breaks and clashes.

The decoder moves every residue rigidly, so each residue's own geometry is kept; what can go
wrong is between residues. Per structure:

* **peptide bonds** C(i)-N(i+1) outside :data:`PEPTIDE_RANGE_A` and **phosphodiester bonds**
  O3'(i)-P(i+1) outside :data:`PHOSPHODIESTER_RANGE_A`, for residues i, i+1 of one chain that are
  neighbours in the file and numbered at most 1 apart (a larger step is a gap in the model: no
  bond is expected there);
* **heavy-atom clashes**: pairs of non-hydrogen atoms closer than :data:`CLASH_DISTANCE_A` that
  belong to different residues which are not bonded to each other (not chain neighbours, not the
  two sulphurs of a disulphide);

with the worst bond and the closest pair, named by ChimeraX residue specifiers (``/A:123``). The
base model is checked the same way so that outliers already there can be told apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from cryodomain.io.atomic import save_csv
from cryodomain.io.structure import AtomicModel

# Bond lengths accepted as intact, Å (ideal about 1.33 and 1.61): wide enough for deposited models.
PEPTIDE_RANGE_A = (1.2, 1.5)
PHOSPHODIESTER_RANGE_A = (1.5, 1.7)
# Heavy atoms of non-bonded residues closer than this overlap (van der Waals contacts are >= ~3 Å).
CLASH_DISTANCE_A = 2.2
HYDROGENS = ("H", "D")
# Disulphides: SG-SG at about 2.05 Å is a bond, not a clash.
DISULPHIDE_ATOM = "SG"

COLUMNS = [
    "model",
    "peptide_bonds",
    "peptide_out_of_range",
    "worst_peptide_residue",
    "worst_peptide_A",
    "phosphodiester_bonds",
    "phosphodiester_out_of_range",
    "worst_phosphodiester_residue",
    "worst_phosphodiester_A",
    "clashes",
    "worst_clash",
    "worst_clash_A",
]


def residue_specs(structure: AtomicModel) -> np.ndarray:
    """``(R,)`` ChimeraX residue specifiers ``/chain:number[insertion code]``, e.g. ``/A:52A``
    (``:52A`` for a blank chain name)."""
    chains = [f"/{chain.strip()}" if chain.strip() else "" for chain in structure.chain_ids.tolist()]
    return np.array([f"{chain}:{number}{code}" for chain, number, code in zip(chains, structure.residue_numbers.tolist(), structure.insertion_codes.tolist())])


@dataclass(frozen=True)
class QualityTopology:
    """What the checks need from the base model: the same for every structure decoded from it.

    Attributes:
        peptide: ``(P, 2)`` atom indices of C(i) and N(i+1).
        peptide_residue: ``(P,)`` residue index i of each peptide bond.
        phosphodiester: ``(Q, 2)`` atom indices of O3'(i) and P(i+1).
        phosphodiester_residue: ``(Q,)`` residue index i of each.
        heavy: ``(H,)`` atom indices of the non-hydrogen atoms.
        linked: ``(L, 2)`` sorted residue index pairs that are bonded (chain neighbours).
        specs: ``(R,)`` residue specifiers.
    """

    peptide: np.ndarray
    peptide_residue: np.ndarray
    phosphodiester: np.ndarray
    phosphodiester_residue: np.ndarray
    heavy: np.ndarray
    linked: np.ndarray
    specs: np.ndarray
    atom_names: np.ndarray
    atom_residue_index: np.ndarray


def _atom_index(structure: AtomicModel, name: str) -> np.ndarray:
    """``(R,)`` index of the first atom called ``name`` in each residue, -1 where it has none."""
    index = np.full(structure.n_residues, -1, dtype=np.int64)
    atoms = np.flatnonzero(structure.atom_names == name)[::-1]  # reversed: the first one wins
    index[structure.atom_residue_index[atoms]] = atoms
    return index


def _bonds(structure: AtomicModel, pairs: np.ndarray, first: str, second: str, kind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bonds ``first(i)-second(i+1)`` of neighbour ``pairs`` ``(P, 2)`` whose two residues are of ``kind`` and hold both atoms."""
    a, b = _atom_index(structure, first)[pairs[:, 0]], _atom_index(structure, second)[pairs[:, 1]]
    keep = kind[pairs[:, 0]] & kind[pairs[:, 1]] & (a >= 0) & (b >= 0)
    return np.stack([a[keep], b[keep]], axis=1), pairs[keep, 0]


def quality_topology(structure: AtomicModel) -> QualityTopology:
    """The bonds to check and the residue pairs never counted as clashing, from the base model."""
    same_chain = structure.chain_ids[1:] == structure.chain_ids[:-1]
    step = np.diff(structure.residue_numbers)
    neighbours = np.flatnonzero(same_chain)
    linked = np.stack([neighbours, neighbours + 1], axis=1)
    # Numbered at most 1 apart (0 with insertion codes, 52 -> 52A): a larger step is a gap.
    bonded = linked[(step[neighbours] >= 0) & (step[neighbours] <= 1)]
    peptide, peptide_residue = _bonds(structure, bonded, "C", "N", ~structure.is_nucleotide)
    # Pre-2007 PDB files spell the prime as '*'.
    phosphate_oxygen = "O3'" if (structure.atom_names == "O3'").any() or not (structure.atom_names == "O3*").any() else "O3*"
    phosphodiester, phosphodiester_residue = _bonds(structure, bonded, phosphate_oxygen, "P", structure.is_nucleotide)
    heavy = np.flatnonzero(~np.isin(np.char.upper(structure.atom_elements), HYDROGENS))
    return QualityTopology(
        peptide,
        peptide_residue,
        phosphodiester,
        phosphodiester_residue,
        heavy,
        linked,
        residue_specs(structure),
        structure.atom_names,
        structure.atom_residue_index,
    )


def _worst_bond(lengths: np.ndarray, residues: np.ndarray, bounds: tuple[float, float], specs: np.ndarray) -> tuple[int, str, float]:
    """Bonds out of range, and the residue and length of the one farthest outside (or nearest an end)."""
    if lengths.size == 0:
        return 0, "", float("nan")
    low, high = bounds
    outside = np.maximum(low - lengths, lengths - high)  # > 0 out of range
    worst = int(np.argmax(outside))
    return int((outside > 0).sum()), str(specs[residues[worst]]), float(lengths[worst])


def clash_pairs(topology: QualityTopology, coords: np.ndarray, cutoff_A: float = CLASH_DISTANCE_A) -> tuple[np.ndarray, np.ndarray]:
    """Clashing heavy-atom pairs of one structure.

    Args:
        topology: from :func:`quality_topology`.
        coords: ``(A, 3)`` Å atom positions.
        cutoff_A: pairs closer than this clash.

    Returns:
        ``(pairs, distances)``: ``(C, 2)`` atom indices and ``(C,)`` Å.
    """
    heavy = topology.heavy
    pairs = cKDTree(coords[heavy]).query_pairs(cutoff_A, output_type="ndarray")
    pairs = heavy[pairs] if len(pairs) else np.zeros((0, 2), dtype=np.int64)
    residues = np.sort(topology.atom_residue_index[pairs], axis=1)
    # Atoms of one residue, of chain neighbours, or the two sulphurs of a disulphide are bonded.
    n = len(topology.specs)
    linked = np.isin(residues[:, 0] * n + residues[:, 1], topology.linked[:, 0] * n + topology.linked[:, 1])
    disulphide = (topology.atom_names[pairs[:, 0]] == DISULPHIDE_ATOM) & (topology.atom_names[pairs[:, 1]] == DISULPHIDE_ATOM)
    keep = (residues[:, 0] != residues[:, 1]) & ~linked & ~disulphide
    pairs = pairs[keep]
    return pairs, np.linalg.norm(coords[pairs[:, 0]] - coords[pairs[:, 1]], axis=1)


def check_structure(topology: QualityTopology, coords: np.ndarray) -> dict:
    """One row of the report (the :data:`COLUMNS` but ``model``) for ``coords`` ``(A, 3)`` Å."""
    coords = np.asarray(coords, dtype=np.float64)
    row: dict = {}
    for name, atoms, residues, bounds in (
        ("peptide", topology.peptide, topology.peptide_residue, PEPTIDE_RANGE_A),
        ("phosphodiester", topology.phosphodiester, topology.phosphodiester_residue, PHOSPHODIESTER_RANGE_A),
    ):
        lengths = np.linalg.norm(coords[atoms[:, 0]] - coords[atoms[:, 1]], axis=1)
        count, residue, length = _worst_bond(lengths, residues, bounds, topology.specs)
        row |= {f"{name}_bonds": len(atoms), f"{name}_out_of_range": count, f"worst_{name}_residue": residue, f"worst_{name}_A": round(length, 3)}
    pairs, distances = clash_pairs(topology, coords)
    row["clashes"] = len(pairs)
    if len(pairs):
        closest = int(np.argmin(distances))
        a, b = pairs[closest]
        spec = topology.specs[topology.atom_residue_index]
        row["worst_clash"] = f"{spec[a]}@{topology.atom_names[a]} {spec[b]}@{topology.atom_names[b]}"
        row["worst_clash_A"] = round(float(distances[closest]), 3)
    else:
        row["worst_clash"], row["worst_clash_A"] = "", float("nan")
    return row


def quality_table(structure: AtomicModel, coords: np.ndarray) -> pd.DataFrame:
    """The report of structures ``coords`` ``(M, A, 3)`` Å of ``structure``'s atoms: row ``model`` 0
    is the base model as read, rows 1..M the structures (as numbered in a multi-model file)."""
    topology = quality_topology(structure)
    rows = [{"model": 0, **check_structure(topology, structure.atom_coords)}]
    rows += [{"model": number, **check_structure(topology, model)} for number, model in enumerate(np.asarray(coords), start=1)]
    return pd.DataFrame(rows, columns=COLUMNS)


def write_quality(path: str | Path, structure: AtomicModel, coords: np.ndarray) -> pd.DataFrame:
    """Write :func:`quality_table` as CSV (``structures_quality.csv``) and return it."""
    table = quality_table(structure, coords)
    save_csv(path, table)
    return table


def quality_summary(tables: dict[str, pd.DataFrame]) -> str:
    """One line over several reports (label -> table): the most outliers in one structure, the
    base model's count, and the worst case of each check with where it is."""
    decoded = pd.concat([table[table["model"] > 0].assign(source=label) for label, table in tables.items()], ignore_index=True)
    base = next(iter(tables.values())).iloc[0]
    if decoded.empty:
        return "full-atom quality: no structures"
    parts = []
    for name, title, bounds in (
        ("peptide", "peptide C-N", PEPTIDE_RANGE_A),
        ("phosphodiester", "O3'-P", PHOSPHODIESTER_RANGE_A),
    ):
        if base[f"{name}_bonds"] == 0:
            continue
        column = f"{name}_out_of_range"
        worst = decoded.loc[decoded[column].idxmax()]
        text = f"{title} outside {bounds[0]:g}-{bounds[1]:g} Å: up to {int(worst[column])} of {int(base[f'{name}_bonds'])} (base {int(base[column])})"
        if worst[column] > 0:
            text += f", worst {worst[f'worst_{name}_A']:.2f} Å at {worst[f'worst_{name}_residue']} ({worst['source']} model {int(worst['model'])})"
        parts.append(text)
    worst = decoded.loc[decoded["clashes"].idxmax()]
    text = f"heavy-atom clashes < {CLASH_DISTANCE_A:g} Å: up to {int(worst['clashes'])} (base {int(base['clashes'])})"
    if worst["clashes"] > 0:
        closest = decoded.loc[decoded["worst_clash_A"].idxmin()]
        text += f", closest {closest['worst_clash_A']:.2f} Å {closest['worst_clash']} ({closest['source']} model {int(closest['model'])})"
    parts.append(text)
    return f"full-atom quality of {len(decoded)} structures: " + "; ".join(parts)
