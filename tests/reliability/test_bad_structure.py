"""Bad atomic models and segmentations: one error line naming file, field and fix; exit 2; no run folder."""

import gemmi
import pytest

from cryodomain.errors import InputError
from cryodomain.examples import STATE_A
from cryodomain.io.structure import read_atomic_model
from cryodomain.workflows.config import load_config
from cryodomain.workflows.inputs import resolve_parts


def edited_model(tmp_path, edit, name="model.pdb"):
    """STATE_A with ``edit(structure)`` applied, written as PDB."""
    structure = gemmi.read_structure(str(STATE_A))
    edit(structure)
    path = tmp_path / name
    structure.write_pdb(str(path))
    return path


def move_atoms(structure, transform):
    for model in structure:
        for chain in model:
            for residue in chain:
                for atom in residue:
                    atom.pos = gemmi.Position(*transform(atom.pos.tolist()))


def test_missing_structure(tmp_path, refused, tiny_simulation):
    refused(tiny_simulation["star"], "nowhere.pdb", "file not found", structure=tmp_path / "nowhere.pdb")


def test_wrong_structure_extension(tmp_path, refused, tiny_simulation):
    path = tmp_path / "model.xyz"
    path.write_text(STATE_A.read_text())
    refused(tiny_simulation["star"], "model.xyz", "unsupported structure file extension", ".cif", structure=path)


def test_structure_that_is_not_mmcif(tmp_path, refused, tiny_simulation):
    path = tmp_path / "model.cif"
    path.write_text("data_x\nloop_\n_atom_site.id\n'unterminated\n")
    refused(tiny_simulation["star"], "model.cif", "mmCIF", structure=path)


def test_structure_without_ca_or_c1prime_atoms(tmp_path, refused, tiny_simulation):
    def keep_no_ca(structure):
        for model in structure:
            for chain in model:
                for residue in chain:
                    for name in ("CA", "C1'"):
                        while residue.find_atom(name, "*"):
                            residue.remove_atom(name, "*")

    path = edited_model(tmp_path, keep_no_ca)
    refused(tiny_simulation["star"], "model.pdb", "no CA or C1' atoms", structure=path)


def test_only_ligands_and_water(tmp_path, refused, tiny_simulation):
    path = tmp_path / "ligand.pdb"
    path.write_text(
        "HETATM    1  O   HOH W   1       0.000   0.000   0.000  1.00  0.00           O\n"
        "HETATM    2 MG    MG I   2       1.000   0.000   0.000  1.00  0.00          MG\n"
        "END\n"
    )
    refused(tiny_simulation["star"], "ligand.pdb", "no CA or C1' atoms", structure=path)


def test_duplicate_residue_number_in_a_chain(tmp_path):
    def renumber(structure):
        chain = structure[0]["A"]
        chain[5].seqid = gemmi.SeqId(chain[4].seqid.num, " ")

    path = edited_model(tmp_path, renumber)
    with pytest.raises(InputError, match=r"model.pdb: chain A residue \d+: residue appears more than once"):
        read_atomic_model(path)


def test_duplicate_residue_number_through_the_cli(tmp_path, refused, tiny_simulation):
    def renumber(structure):
        chain = structure[0]["A"]
        chain[11].seqid = gemmi.SeqId(chain[10].seqid.num, " ")

    refused(tiny_simulation["star"], "appears more than once", structure=edited_model(tmp_path, renumber))


def test_centred_model_larger_than_the_box(tmp_path, refused, tiny_simulation):
    path = edited_model(tmp_path, lambda s: move_atoms(s, lambda xyz: [3 * v for v in xyz]))
    refused(tiny_simulation["star"], "model.pdb", "coordinates", "outside the 128 Å box", "larger box", structure=path)


def test_model_not_in_the_box_centred_frame(tmp_path, refused, tiny_simulation):
    path = edited_model(tmp_path, lambda s: move_atoms(s, lambda xyz: [xyz[0] + 60, xyz[1] + 60, xyz[2]]))
    refused(tiny_simulation["star"], "model.pdb", "cryodomain center", structure=path)


def parts_config(tmp_path, parts_yaml):
    path = tmp_path / "parts.yaml"
    path.write_text(
        "model:\n  encoder_hidden: [32, 16]\n  decoder_hidden: [32]\n  latent_dim: 2\n  parts:\n"
        + parts_yaml
        + "optim: {epochs: 1, batch_size: 16, device: cpu}\n"
    )
    return path


@pytest.mark.parametrize(
    "parts_yaml, expected",
    [
        ("    - {chain: Z, n_segments: 2}\n", ["model.parts[0].chain", "no chain 'Z'", "use one of the listed chains"]),
        ("    - {chain: A, first_residue: 900, last_residue: 950, n_segments: 2}\n", ["model.parts[0]", "no residues of chain A in 900..950"]),
        ("    - {chain: A, first_residue: 10, last_residue: 12, n_segments: 5}\n", ["model.parts[0].n_segments", "5 segments for 3 residues"]),
        ("    - {chain: A, first_residue: 20, last_residue: 10, n_segments: 2}\n", ["model.parts.0", "first_residue 20 is after last_residue 10"]),
    ],
    ids=["unknown-chain", "range-outside-chain", "more-segments-than-residues", "reversed-range"],
)
def test_bad_segmentation_parts(tmp_path, refused, tiny_simulation, parts_yaml, expected):
    refused(tiny_simulation["star"], *expected, flags=("--config", str(parts_config(tmp_path, parts_yaml))))


def test_more_segments_than_residues_of_the_whole_model(tiny_simulation, refused):
    refused(tiny_simulation["star"], "model.n_segments", "400 segments for 352 residues", flags=("--segments", "400"))


def test_a_valid_part_resolves_to_its_residues():
    structure = read_atomic_model(STATE_A)
    config = load_config(None, {"model.parts": [{"chain": "A", "first_residue": 10, "last_residue": 19, "n_segments": 2}]})
    (part,) = resolve_parts(config, structure)
    assert structure.residue_numbers[part.residue_indices].tolist() == list(range(10, 20))
