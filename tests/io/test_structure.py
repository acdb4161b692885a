import gzip
import logging
import shutil

import gemmi
import numpy as np
import pytest

from cryodomain.errors import InputError
from cryodomain.examples import SOURCE_STRUCTURE, STATE_A
from cryodomain.io.structure import (
    AtomicModel,
    center_of_residues,
    read_all_models,
    read_atomic_model,
)
from cryodomain.io.structure_writer import write_structure


def pdb_line(serial, name, resname, chain, resnum, xyz, element, record="ATOM", altloc=" ", icode=" ", occ=1.0):
    """One fixed-column PDB ATOM/HETATM record."""
    padded = f" {name:<3}" if len(name) < 4 and len(element) == 1 else f"{name:<4}"
    x, y, z = xyz
    return (
        f"{record:<6}{serial:>5} {padded}{altloc}{resname:>3} {chain}{resnum:>4}{icode}   {x:8.3f}{y:8.3f}{z:8.3f}{occ:6.2f}{20.0:6.2f}          {element:>2}\n"
    )


GLY_ATOMS = [("N", "N"), ("CA", "C"), ("C", "C"), ("O", "O")]


def write_pdb(path, residues):
    """Write residues given as (resname, chain, number, [(atom, element), ...]) with simple coordinates."""
    lines, serial = [], 1
    for index, (resname, chain, number, atoms, *rest) in enumerate(residues):
        record = rest[0] if rest else "ATOM"
        for k, (name, element) in enumerate(atoms):
            lines.append(pdb_line(serial, name, resname, chain, number, (3.8 * index, k * 1.1, 0.5), element, record))
            serial += 1
    path.write_text("".join(lines) + "END\n")
    return path


@pytest.fixture(scope="module")
def model_3mht():
    return read_atomic_model(SOURCE_STRUCTURE)


def test_3mht_has_protein_and_dna_residues_in_file_order(model_3mht):
    m = model_3mht
    assert m.n_residues == 352 and m.n_atoms == 3115
    assert m.is_nucleotide.sum() == 25 and (~m.is_nucleotide).sum() == 327
    # The file lists the DNA chains C and D before the protein chain A.
    assert list(dict.fromkeys(m.chain_ids.tolist())) == ["C", "D", "A"]
    protein = m.chain_ids == "A"
    np.testing.assert_array_equal(m.residue_numbers[protein], np.arange(1, 328))
    assert m.source == "3mht.pdb"
    assert m.coords.dtype == np.float64 and m.residue_numbers.dtype == np.int64
    assert m.atom_residue_index.dtype == np.int64 and m.atom_residue_index.max() == m.n_residues - 1


def test_nucleotides_use_c1prime_and_amino_acids_ca(model_3mht):
    lines = SOURCE_STRUCTURE.read_text().splitlines()

    def file_xyz(atom, chain, number):
        for line in lines:
            if line.startswith("ATOM") and line[12:16].strip() == atom and line[21] == chain and int(line[22:26]) == number:
                return [float(line[30:38]), float(line[38:46]), float(line[46:54])]

    m = model_3mht
    first_dna = np.nonzero((m.chain_ids == "C") & (m.residue_numbers == 402))[0][0]
    first_protein = np.nonzero((m.chain_ids == "A") & (m.residue_numbers == 1))[0][0]
    np.testing.assert_allclose(m.coords[first_dna], file_xyz("C1'", "C", 402))
    np.testing.assert_allclose(m.coords[first_protein], file_xyz("CA", "A", 1))


def test_amplitudes_are_sums_of_atomic_numbers(model_3mht):
    m = model_3mht
    glycine = np.nonzero(m.residue_names == "GLY")[0][0]
    assert sorted(m.atom_names[m.atom_residue_index == glycine]) == ["C", "CA", "N", "O"]
    assert m.amplitudes[glycine] == 7 + 6 + 6 + 8
    np.testing.assert_allclose(m.amplitudes, np.bincount(m.atom_residue_index, weights=m.atom_electrons))
    # Every ATOM record of the file counted once: 3MHT has C, N, O, P and S atoms only.
    numbers = {"C": 6, "N": 7, "O": 8, "P": 15, "S": 16}
    atom_lines = [line for line in SOURCE_STRUCTURE.read_text().splitlines() if line.startswith("ATOM")]
    assert m.amplitudes.sum() == sum(numbers[line[76:78].strip()] for line in atom_lines)


def test_waters_and_ligands_are_skipped_and_reported(caplog):
    with caplog.at_level(logging.INFO, logger="cryodomain.io.structure"):
        model = read_atomic_model(SOURCE_STRUCTURE)
    assert "SAH" not in model.residue_names and "HOH" not in model.residue_names
    assert "3mht.pdb: skipped 70 waters and 1 ligand/ion residue (SAH)" in caplog.text


def test_hydrogens_count_and_special_residues(tmp_path, caplog):
    path = write_pdb(
        tmp_path / "special.pdb",
        [
            ("GLY", "A", 1, GLY_ATOMS + [("H", "H"), ("HA2", "H"), ("HA3", "H")]),
            ("MSE", "A", 2, GLY_ATOMS + [("SE", "SE")], "HETATM"),
            ("HSD", "A", 3, GLY_ATOMS),
            ("ALA", "A", 4, [("N", "N"), ("C", "C")]),  # no CA: skipped with a warning
            ("ZN", "A", 5, [("ZN", "ZN")], "HETATM"),
        ],
    )
    with caplog.at_level(logging.INFO, logger="cryodomain.io.structure"):
        model = read_atomic_model(path)
    assert model.residue_names.tolist() == ["GLY", "MSE", "HIS"]
    np.testing.assert_array_equal(model.amplitudes, [27 + 3, 27 + 34, 27])
    assert "skipped 1 ligand/ion residue (ZN)" in caplog.text
    assert "skipped 1 amino acid/nucleotide residue without a CA or C1' atom" in caplog.text
    assert any(record.levelno == logging.WARNING for record in caplog.records)


def test_first_alternate_conformation_is_kept(tmp_path):
    lines = [
        pdb_line(1, "N", "SER", "A", 1, (0, 0, 0), "N"),
        pdb_line(2, "CA", "SER", "A", 1, (1, 0, 0), "C", altloc="A", occ=0.6),
        pdb_line(3, "CA", "SER", "A", 1, (9, 9, 9), "C", altloc="B", occ=0.4),
        pdb_line(4, "C", "SER", "A", 1, (2, 0, 0), "C"),
    ]
    path = tmp_path / "alt.pdb"
    path.write_text("".join(lines))
    model = read_atomic_model(path)
    assert model.n_atoms == 3
    np.testing.assert_allclose(model.coords, [[1, 0, 0]])
    assert model.amplitudes[0] == 7 + 6 + 6


def test_consecutive_pairs_stop_at_gaps_and_chain_ends(tmp_path):
    path = write_pdb(
        tmp_path / "gaps.pdb",
        [
            ("GLY", "A", 1, GLY_ATOMS),
            ("GLY", "A", 2, GLY_ATOMS),
            ("GLY", "A", 5, GLY_ATOMS),
            ("GLY", "A", 6, GLY_ATOMS),
            ("GLY", "B", 7, GLY_ATOMS),
            ("GLY", "B", 8, GLY_ATOMS),
        ],
    )
    np.testing.assert_array_equal(read_atomic_model(path).consecutive_pairs(), [[0, 1], [2, 3], [4, 5]])


def test_center_and_with_coords(model_3mht):
    shifted = model_3mht.with_coords(model_3mht.coords + 5.0, model_3mht.atom_coords + 5.0)
    np.testing.assert_allclose(center_of_residues(shifted), center_of_residues(model_3mht) + 5.0)
    np.testing.assert_array_equal(shifted.residue_names, model_3mht.residue_names)
    with pytest.raises(ValueError):
        model_3mht.with_coords(model_3mht.coords[:3], model_3mht.atom_coords)


def two_model_pdb(tmp_path, model):
    path = tmp_path / "two.pdb"
    write_structure(path, model, np.stack([model.coords, model.coords + 10.0]), full_atom=False)
    return path


def test_first_model_is_used_with_a_message(tmp_path, model_3mht, caplog):
    path = two_model_pdb(tmp_path, model_3mht)
    with caplog.at_level(logging.INFO, logger="cryodomain.io.structure"):
        first = read_atomic_model(path)
    assert "two.pdb: 2 models, using model 1" in caplog.text
    np.testing.assert_allclose(first.coords, model_3mht.coords, atol=1e-3)
    np.testing.assert_allclose(read_atomic_model(path, model_index=1).coords, model_3mht.coords + 10.0, atol=1e-3)
    assert len(read_all_models(path)) == 2
    with pytest.raises(InputError, match="two.pdb"):
        read_atomic_model(path, model_index=2)


def bfactors_by_residue(path):
    """B-factor of every atom of the first model, and its (chain, number) key, read with gemmi."""
    structure = gemmi.read_structure(str(path))
    return [(chain.name, residue.seqid.num, atom.b_iso) for chain in structure[0] for residue in chain for atom in residue]


@pytest.mark.parametrize("suffix", [".pdb", ".cif"])
@pytest.mark.parametrize("full_atom", [False, True])
@pytest.mark.parametrize("n_models", [1, 3])
def test_write_and_read_back(tmp_path, model_3mht, suffix, full_atom, n_models):
    m = model_3mht
    base = m.atom_coords if full_atom else m.coords
    coords = np.stack([base + np.array([k * 1.5, -k, 0.25 * k]) for k in range(n_models)])
    bfactors = np.arange(m.n_residues, dtype=np.float64) / 4
    path = tmp_path / f"out{suffix}"
    write_structure(path, m, coords if n_models > 1 else coords[0], full_atom=full_atom, bfactors=bfactors)

    models = read_all_models(path)
    assert len(models) == n_models
    for k, back in enumerate(models):
        np.testing.assert_array_equal(back.chain_ids, m.chain_ids)
        np.testing.assert_array_equal(back.residue_numbers, m.residue_numbers)
        np.testing.assert_array_equal(back.residue_names, m.residue_names)
        np.testing.assert_array_equal(back.is_nucleotide, m.is_nucleotide)
        np.testing.assert_allclose(back.atom_coords, coords[k], atol=1e-3 if suffix == ".pdb" else 1e-9)
        if full_atom:
            np.testing.assert_array_equal(back.atom_names, m.atom_names)
            np.testing.assert_array_equal(back.amplitudes, m.amplitudes)
        else:
            assert back.n_atoms == m.n_residues
            assert set(back.atom_names[back.is_nucleotide]) == {"C1'"}
    expected = {(c, n): b for c, n, b in zip(m.chain_ids, m.residue_numbers, bfactors)}
    assert all(abs(b - expected[(c, n)]) < 0.01 for c, n, b in bfactors_by_residue(path))
    # Written atomically: nothing but the target is left in the folder.
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_multi_model_pdb_uses_model_records(tmp_path, model_3mht):
    text = two_model_pdb(tmp_path, model_3mht).read_text()
    assert text.count("\nMODEL ") + text.startswith("MODEL ") == 2 and text.count("ENDMDL") == 2
    assert "CRYST1" not in text


def test_insertion_codes_round_trip(tmp_path):
    lines = [
        pdb_line(1, "CA", "GLY", "A", 52, (0, 0, 0), "C"),
        pdb_line(2, "CA", "GLY", "A", 52, (3.8, 0, 0), "C", icode="A"),
        pdb_line(3, "CA", "GLY", "A", 53, (7.6, 0, 0), "C"),
    ]
    source = tmp_path / "icode.pdb"
    source.write_text("".join(lines))
    model = read_atomic_model(source)
    assert model.insertion_codes.tolist() == ["", "A", ""]
    np.testing.assert_array_equal(model.consecutive_pairs(), [[1, 2]])
    for suffix in (".pdb", ".cif"):
        back = read_atomic_model(write_pdb_or_cif(tmp_path / f"back{suffix}", model))
        assert back.insertion_codes.tolist() == ["", "A", ""]


def write_pdb_or_cif(path, model):
    write_structure(path, model, model.atom_coords, full_atom=True)
    return path


def test_gzipped_and_ent_files_are_read(tmp_path, model_3mht):
    gz_path = tmp_path / "3mht.pdb.gz"
    with open(SOURCE_STRUCTURE, "rb") as source, gzip.open(gz_path, "wb") as target:
        target.write(source.read())
    ent_path = tmp_path / "pdb3mht.ent"
    shutil.copy(SOURCE_STRUCTURE, ent_path)
    cif_gz = tmp_path / "3mht.cif.gz"
    cif_path = write_pdb_or_cif(tmp_path / "3mht.cif", model_3mht)
    with open(cif_path, "rb") as source, gzip.open(cif_gz, "wb") as target:
        target.write(source.read())
    for path in (gz_path, ent_path, cif_gz):
        np.testing.assert_allclose(read_atomic_model(path).atom_coords, model_3mht.atom_coords)


def test_unknown_extension_is_an_input_error(tmp_path):
    path = tmp_path / "model.xyz"
    path.write_text("1\nC 0 0 0\n")
    with pytest.raises(InputError, match=r"model\.xyz.*\.pdb"):
        read_atomic_model(path)


@pytest.mark.parametrize("name", ["garbage.pdb", "garbage.cif"])
def test_garbage_file_is_an_input_error(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not\na structure file\n")
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        read_atomic_model(path)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="absent.pdb"):
        read_atomic_model(tmp_path / "absent.pdb")


def test_file_without_ca_or_c1prime_is_an_input_error(tmp_path):
    path = write_pdb(tmp_path / "ligands.pdb", [("HOH", "W", 1, [("O", "O")], "HETATM"), ("ALA", "A", 2, [("N", "N")])])
    with pytest.raises(InputError, match=r"ligands\.pdb.*no CA or C1' atoms"):
        read_atomic_model(path)


@pytest.mark.parametrize("consecutive", [True, False])
def test_duplicate_residue_is_an_input_error(tmp_path, consecutive):
    residues = [("GLY", "A", 1, GLY_ATOMS), ("GLY", "A", 2, GLY_ATOMS)]
    residues = residues + residues[1:] if consecutive else residues + residues[:1]
    path = write_pdb(tmp_path / "dup.pdb", residues)
    number = 2 if consecutive else 1
    with pytest.raises(InputError, match=rf"dup\.pdb: chain A residue {number}\b"):
        read_atomic_model(path)


def test_write_rejects_wrong_shapes_and_formats(tmp_path, model_3mht):
    m = model_3mht
    with pytest.raises(ValueError):
        write_structure(tmp_path / "a.pdb", m, m.atom_coords, full_atom=False)
    with pytest.raises(ValueError):
        write_structure(tmp_path / "a.pdb", m, m.coords, full_atom=True)
    with pytest.raises(ValueError):
        write_structure(tmp_path / "a.pdb", m, m.coords, full_atom=False, bfactors=np.zeros(3))
    with pytest.raises(InputError, match=r"a\.xyz"):
        write_structure(tmp_path / "a.xyz", m, m.coords, full_atom=False)
    assert list(tmp_path.iterdir()) == []


def test_long_chain_names_need_mmcif(tmp_path):
    model = AtomicModel(
        coords=np.zeros((1, 3)),
        amplitudes=np.array([27.0]),
        chain_ids=np.array(["L50"]),
        residue_numbers=np.array([1]),
        insertion_codes=np.array([""]),
        residue_names=np.array(["GLY"]),
        is_nucleotide=np.array([False]),
        atom_coords=np.zeros((1, 3)),
        atom_names=np.array(["CA"]),
        atom_elements=np.array(["C"]),
        atom_electrons=np.array([6.0]),
        atom_residue_index=np.array([0]),
        source="ribosome.cif",
    )
    with pytest.raises(InputError, match=r"big\.pdb.*\.cif"):
        write_structure(tmp_path / "big.pdb", model, model.coords, full_atom=False)
    write_structure(tmp_path / "big.cif", model, model.coords, full_atom=False)
    assert read_atomic_model(tmp_path / "big.cif").chain_ids.tolist() == ["L50"]


def test_duplicate_residue_in_mmcif_is_an_input_error(tmp_path, model_3mht):
    protein = np.nonzero(model_3mht.chain_ids == "A")[0][:2]
    numbers = np.array([7, 7])
    duplicated = AtomicModel(
        coords=model_3mht.coords[protein],
        amplitudes=model_3mht.amplitudes[protein],
        chain_ids=model_3mht.chain_ids[protein],
        residue_numbers=numbers,
        insertion_codes=model_3mht.insertion_codes[protein],
        residue_names=np.array(["GLY", "ALA"]),
        is_nucleotide=model_3mht.is_nucleotide[protein],
        atom_coords=model_3mht.coords[protein],
        atom_names=np.array(["CA", "CA"]),
        atom_elements=np.array(["C", "C"]),
        atom_electrons=np.array([6.0, 6.0]),
        atom_residue_index=np.array([0, 1]),
        source="made.cif",
    )
    path = tmp_path / "dup.cif"
    write_structure(path, duplicated, duplicated.coords, full_atom=False)
    with pytest.raises(InputError, match=r"dup\.cif: chain A residue 7\b"):
        read_atomic_model(path)


def test_microheterogeneity_keeps_the_first_residue(tmp_path):
    lines = [
        pdb_line(1, "CA", "GLY", "A", 5, (0, 0, 0), "C"),
        pdb_line(2, "CA", "ASP", "A", 6, (3.8, 0, 0), "C", altloc="A", occ=0.5),
        pdb_line(3, "CA", "ALA", "A", 6, (3.9, 0, 0), "C", altloc="B", occ=0.5),
    ]
    path = tmp_path / "micro.pdb"
    path.write_text("".join(lines))
    model = read_atomic_model(path)
    assert model.residue_names.tolist() == ["GLY", "ASP"]
    np.testing.assert_allclose(model.coords[1], [3.8, 0, 0])


def test_electron_centroids_weight_each_atom_by_its_electrons():
    model = read_atomic_model(STATE_A)
    centroids = model.electron_centroids()
    first = model.atom_residue_index == 0
    expected = (model.atom_coords[first] * model.atom_electrons[first, None]).sum(axis=0) / model.atom_electrons[first].sum()
    np.testing.assert_allclose(centroids[0], expected)
    # A side chain pulls the density off the CA: by about 1-3 Å for most residues.
    offsets = np.linalg.norm(centroids - model.coords, axis=1)
    assert centroids.shape == (model.n_residues, 3) and 0.5 < np.median(offsets) < 4.0


def test_residue_spreads_are_the_electron_weighted_variance_per_axis():
    model = read_atomic_model(STATE_A)
    centroids = model.electron_centroids()
    spreads = model.residue_spreads(centroids)
    first = model.atom_residue_index == 0
    offsets = model.atom_coords[first] - centroids[0]
    weights = model.atom_electrons[first]
    np.testing.assert_allclose(spreads[0], (weights * (offsets**2).sum(1)).sum() / weights.sum() / 3)
    # About the CA the spread is larger than about the centroid (the centroid minimises it).
    assert np.all(model.residue_spreads(model.coords) >= spreads - 1e-9)
    # Residues reach ~2 Å from their centroid: a per-axis std of about 1-1.5 Å.
    assert spreads.shape == (model.n_residues,) and 0.7 < np.sqrt(np.median(spreads)) < 1.8


def test_side_chain_atoms_are_what_is_not_backbone_or_sugar_phosphate():
    model = read_atomic_model(STATE_A)
    side = model.side_chain_atoms()
    names = model.atom_names
    amino = ~model.is_nucleotide[model.atom_residue_index]
    assert not side[amino & np.isin(names, ["N", "CA", "C", "O"])].any()
    assert side[amino & np.isin(names, ["CB", "CG", "NZ"])].all()
    assert not side[~amino & np.isin(names, ["P", "OP1", "C1'", "O3'"])].any()
    assert side[~amino & np.isin(names, ["N1", "C2", "N9"])].all()
    # A glycine has no side chain.
    glycine = np.flatnonzero(model.residue_names == "GLY")
    assert glycine.size and not side[np.isin(model.atom_residue_index, glycine)].any()
