"""Full-atom checks: a stretched peptide or phosphodiester bond and a planted clash are caught,
bonded neighbours and disulphides are not clashes, gaps in the numbering are not bonds."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryodomain.examples import STATE_A
from cryodomain.io.structure import read_atomic_model
from cryodomain.workflows.structure_quality import (
    COLUMNS,
    PEPTIDE_RANGE_A,
    check_structure,
    quality_summary,
    quality_table,
    quality_topology,
    residue_specs,
    write_quality,
)

# Chains L70 (RNA), LC0 and LCC (protein) of the ribosome 6ZU5 (tests/data/6zu5_subset.cif).
RIBOSOME_SUBSET = Path(__file__).parents[1] / "data" / "6zu5_subset.cif"


@pytest.fixture(scope="module")
def protein_dna():
    return read_atomic_model(STATE_A)


def atom(structure, residue, name):
    """Index of atom ``name`` of residue index ``residue``."""
    (index,) = np.flatnonzero((structure.atom_residue_index == residue) & (structure.atom_names == name))
    return int(index)


def shifted_after(structure, residue, shift):
    """Atom coordinates with every atom of the residues after ``residue`` in its chain moved by ``shift`` Å."""
    chain = structure.chain_ids[residue]
    later = np.flatnonzero((structure.chain_ids == chain) & (np.arange(structure.n_residues) > residue))
    coords = structure.atom_coords.copy()
    coords[np.isin(structure.atom_residue_index, later)] += shift
    return coords


def test_the_base_model_is_clean_and_its_bonds_are_counted(protein_dna):
    row = check_structure(quality_topology(protein_dna), protein_dna.atom_coords)
    # 327 amino acids in one chain (no gaps), 12 + 13 nucleotides in two strands.
    assert row["peptide_bonds"] == 326 and row["phosphodiester_bonds"] == 11 + 12
    assert row["peptide_out_of_range"] == row["phosphodiester_out_of_range"] == row["clashes"] == 0
    # Chain neighbours are 1.3 Å apart (C-N) without being clashes.
    assert PEPTIDE_RANGE_A[0] < row["worst_peptide_A"] < PEPTIDE_RANGE_A[1]


def test_a_stretched_peptide_bond_is_caught_with_its_residue(protein_dna):
    k = 100  # an amino acid of chain A
    assert not protein_dna.is_nucleotide[k]
    row = check_structure(quality_topology(protein_dna), shifted_after(protein_dna, k, np.array([3.0, 0.0, 0.0])))
    assert row["peptide_out_of_range"] == 1
    assert row["worst_peptide_residue"] == f"/A:{protein_dna.residue_numbers[k]}"
    c, n = atom(protein_dna, k, "C"), atom(protein_dna, k + 1, "N")
    moved = shifted_after(protein_dna, k, np.array([3.0, 0.0, 0.0]))
    assert row["worst_peptide_A"] == pytest.approx(np.linalg.norm(moved[c] - moved[n]), abs=1e-3)


def test_a_broken_phosphodiester_bond_is_caught(protein_dna):
    k = int(np.flatnonzero(protein_dna.is_nucleotide)[3])
    row = check_structure(quality_topology(protein_dna), shifted_after(protein_dna, k, np.array([0.0, 0.0, -2.5])))
    assert row["phosphodiester_out_of_range"] == 1 and row["peptide_out_of_range"] == 0
    assert row["worst_phosphodiester_residue"] == f"/{protein_dna.chain_ids[k]}:{protein_dna.residue_numbers[k]}"
    assert row["worst_phosphodiester_A"] > 2.0


def test_a_planted_clash_is_caught_with_both_atoms(protein_dna):
    i, j = 30, 200  # far apart in the chain
    coords = protein_dna.atom_coords.copy()
    cb, target = atom(protein_dna, i, "CB"), atom(protein_dna, j, "CA")
    coords[cb] = coords[target] + np.array([0.0, 0.0, 1.0])
    row = check_structure(quality_topology(protein_dna), coords)
    assert row["clashes"] >= 1
    assert row["worst_clash_A"] == pytest.approx(1.0, abs=1e-3)
    specs = residue_specs(protein_dna)
    assert set(row["worst_clash"].split()) == {f"{specs[i]}@CB", f"{specs[j]}@CA"}


def test_a_disulphide_is_not_a_clash(protein_dna):
    cysteines = np.flatnonzero(protein_dna.residue_names == "CYS")
    i, j = int(cysteines[0]), int(cysteines[-1])
    assert abs(i - j) > 1
    coords = protein_dna.atom_coords.copy()
    first, second = atom(protein_dna, i, "SG"), atom(protein_dna, j, "SG")
    coords[first] = coords[second] + np.array([2.05, 0.0, 0.0])
    topology = quality_topology(protein_dna)
    assert check_structure(topology, coords)["clashes"] == 0
    # The same contact between a sulphur and a carbon is one.
    coords[first] = coords[atom(protein_dna, j, "CB")] + np.array([0.0, 2.0, 0.0])
    assert check_structure(topology, coords)["clashes"] >= 1


def test_insertion_codes_keep_a_bond_and_a_numbering_gap_drops_it(protein_dna):
    k = 100
    numbers, codes = protein_dna.residue_numbers.copy(), protein_dna.insertion_codes.astype("<U1").copy()
    # 52, 52A: the next residue has the same number with an insertion code.
    numbers[k + 1 :][protein_dna.chain_ids[k + 1 :] == "A"] -= 1
    codes[k + 1] = "A"
    inserted = dataclasses.replace(protein_dna, residue_numbers=numbers, insertion_codes=codes)
    row = check_structure(quality_topology(inserted), inserted.atom_coords)
    assert row["peptide_bonds"] == 326 and row["clashes"] == 0
    # A gap of two numbers is a missing loop: stretch it and nothing is reported.
    gapped = protein_dna.residue_numbers.copy()
    gapped[k + 1 :][protein_dna.chain_ids[k + 1 :] == "A"] += 5
    missing_loop = dataclasses.replace(protein_dna, residue_numbers=gapped)
    row = check_structure(quality_topology(missing_loop), shifted_after(protein_dna, k, np.array([3.0, 0.0, 0.0])))
    assert row["peptide_bonds"] == 325 and row["peptide_out_of_range"] == 0


def test_the_report_has_the_base_model_first_and_a_one_line_summary(protein_dna, tmp_path):
    stretched = shifted_after(protein_dna, 100, np.array([3.0, 0.0, 0.0]))
    coords = np.stack([protein_dna.atom_coords, stretched])
    table = write_quality(tmp_path / "structures_quality.csv", protein_dna, coords)
    written = pd.read_csv(tmp_path / "structures_quality.csv", keep_default_na=False)
    assert list(written.columns) == COLUMNS
    assert written["model"].tolist() == [0, 1, 2]
    assert written["peptide_out_of_range"].tolist() == [0, 0, 1]
    summary = quality_summary({"pc1": table})
    assert "\n" not in summary
    assert "up to 1 of 326 (base 0)" in summary and "/A:" in summary and "pc1 model 2" in summary


def test_a_protein_rna_complex_with_long_chain_names():
    ribosome = read_atomic_model(RIBOSOME_SUBSET)
    assert sorted(set(ribosome.chain_ids.tolist())) == ["L70", "LC0", "LCC"]
    table = quality_table(ribosome, ribosome.atom_coords[None])
    # 20 nucleotides of L70 in one run; 28 + 17 amino acids of LC0 and LCC.
    assert table["phosphodiester_bonds"].tolist() == [19, 19]
    assert table["peptide_bonds"].tolist() == [27 + 16] * 2
    assert table["clashes"].tolist() == [0, 0]
    k = int(np.flatnonzero(ribosome.chain_ids == "L70")[5])
    row = check_structure(quality_topology(ribosome), shifted_after(ribosome, k, np.array([0.0, 4.0, 0.0])))
    assert row["phosphodiester_out_of_range"] == 1 and row["worst_phosphodiester_residue"] == f"/L70:{ribosome.residue_numbers[k]}"
