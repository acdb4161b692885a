"""Write atomic models (PDB / mmCIF) with gemmi: one structure or a multi-model series.

Residues are written in the base model's order with its names, numbers and chains; a CA / C1'
trace or every atom. Coordinates in Å.
"""

from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np

from cryodomain.errors import input_error
from cryodomain.io.atomic import atomic_output
from cryodomain.io.structure import AMINO_ACID_ATOM, NUCLEOTIDE_ATOM, AtomicModel


def write_structure(
    path: str | Path,
    model: AtomicModel,
    coords: np.ndarray,
    *,
    full_atom: bool,
    bfactors: np.ndarray | None = None,
) -> None:
    """Write coordinates of ``model``'s residues or atoms as a PDB or mmCIF file.

    Several coordinate sets become one multi-model file (MODEL/ENDMDL in PDB, model numbers in
    mmCIF) that ChimeraX opens as one model series. The file is written atomically.

    Args:
        path: output file; ``.pdb`` or ``.cif`` / ``.mmcif`` selects the format.
        model: the template giving names, numbers and chains.
        coords: with ``full_atom=False``, ``(R, 3)`` or ``(M, R, 3)`` Å positions of the CA / C1'
            atoms, written alone; with ``full_atom=True``, ``(A, 3)`` or ``(M, A, 3)`` Å positions of
            all atoms.
        full_atom: whether ``coords`` holds all atoms or one pseudo-atom per residue.
        bfactors: ``(R,)`` value for the B-factor column of every atom of each residue (0 if None).

    Raises:
        InputError: unsupported output extension, or chain names too long for the PDB format.
        ValueError: ``coords`` or ``bfactors`` of the wrong shape.
    """
    path = Path(path)
    is_pdb = _output_is_pdb(path)
    coord_sets = _check_write_shapes(model, coords, full_atom, bfactors)
    if is_pdb:
        long_names = sorted({name for name in model.chain_ids.tolist() if len(name) > 2})
        if long_names:
            raise input_error(
                path,
                "chain",
                f"chain names longer than 2 characters ({', '.join(long_names[:5])}) do not fit the PDB format",
                "write a .cif file instead",
            )
    residue_bfactors = np.zeros(model.n_residues) if bfactors is None else np.asarray(bfactors, dtype=np.float64)

    structure = gemmi.Structure()
    structure.name = path.name.split(".")[0]
    first = _build_gemmi_model(model, coord_sets[0], full_atom, residue_bfactors, 1)
    structure.add_model(first)
    written_order = _written_atom_order(model) if full_atom else np.arange(model.n_residues)
    for number, coord_set in enumerate(coord_sets[1:], start=2):
        # Later models share the topology of the first: clone it and move the atoms.
        later = first.clone()
        later.num = number
        for atom, xyz in zip(_atoms_in_order(later), coord_set[written_order].tolist()):
            atom.pos = gemmi.Position(*xyz)
        structure.add_model(later)
    # Entities and ATOM/HETATM flags as in deposited files, so viewers draw ribbons for polymers.
    structure.setup_entities()
    structure.assign_het_flags()
    structure.assign_serial_numbers()

    if is_pdb:
        options = gemmi.PdbWriteOptions()
        # No unit cell is known; a dummy CRYST1 would make some programs apply symmetry.
        options.cryst1_record = False
        text = structure.make_pdb_string(options)
    else:
        groups = gemmi.MmcifOutputGroups(True)
        groups.cell = False
        groups.symmetry = False
        text = structure.make_mmcif_document(groups).as_string()
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def _output_is_pdb(path: Path) -> bool:
    """True for ``.pdb``, False for ``.cif`` / ``.mmcif``; InputError for anything else."""
    suffix = path.suffix.lower()
    if suffix not in (".pdb", ".cif", ".mmcif"):
        raise input_error(path, None, "unsupported output structure extension", "use .pdb, .cif or .mmcif")
    return suffix == ".pdb"


def _check_write_shapes(model: AtomicModel, coords: np.ndarray, full_atom: bool, bfactors: np.ndarray | None) -> np.ndarray:
    """Validate shapes and return coordinates as ``(M, R or A, 3)`` float64."""
    coords = np.asarray(coords, dtype=np.float64)
    expected = model.n_atoms if full_atom else model.n_residues
    what = "atoms" if full_atom else "residues"
    if coords.ndim not in (2, 3) or coords.shape[-2:] != (expected, 3):
        raise ValueError(f"coords must be ({expected}, 3) or (M, {expected}, 3) for {what}, got {coords.shape}")
    if coords.ndim == 3 and coords.shape[0] == 0:
        raise ValueError("coords holds no model")
    if bfactors is not None and np.shape(bfactors) != (model.n_residues,):
        raise ValueError(f"bfactors must be ({model.n_residues},), got {np.shape(bfactors)}")
    return coords if coords.ndim == 3 else coords[None]


def _build_gemmi_model(model: AtomicModel, coords: np.ndarray, full_atom: bool, bfactors: np.ndarray, number: int) -> gemmi.Model:
    """One gemmi model with ``model``'s residues and the given ``(R or A, 3)`` Å coordinates."""
    if full_atom:
        order = _written_atom_order(model)
        bounds = np.searchsorted(model.atom_residue_index[order], np.arange(model.n_residues + 1))
    gemmi_model = gemmi.Model(number)
    chain = None
    xyz_list = coords.tolist()
    for index in range(model.n_residues):
        chain_id = str(model.chain_ids[index])
        if chain is None or chain.name != chain_id:
            if chain is not None:
                gemmi_model.add_chain(chain)
            chain = gemmi.Chain(chain_id)
        residue = gemmi.Residue()
        residue.name = str(model.residue_names[index])
        residue.seqid = gemmi.SeqId(int(model.residue_numbers[index]), str(model.insertion_codes[index]) or " ")
        b_iso = float(bfactors[index])
        if full_atom:
            atoms = [(str(model.atom_names[a]), str(model.atom_elements[a]), xyz_list[a]) for a in order[bounds[index] : bounds[index + 1]]]
        else:
            name = NUCLEOTIDE_ATOM if model.is_nucleotide[index] else AMINO_ACID_ATOM
            atoms = [(name, "C", xyz_list[index])]
        for name, element, xyz in atoms:
            atom = gemmi.Atom()
            atom.name = name
            atom.element = gemmi.Element(element)
            atom.pos = gemmi.Position(*xyz)
            atom.occ = 1.0
            atom.b_iso = b_iso
            residue.add_atom(atom)
        chain.add_residue(residue)
    gemmi_model.add_chain(chain)
    return gemmi_model


def _written_atom_order(model: AtomicModel) -> np.ndarray:
    """``(A,)`` atom indices grouped by residue, keeping file order within each residue."""
    return np.argsort(model.atom_residue_index, kind="stable")


def _atoms_in_order(gemmi_model: gemmi.Model):
    """Iterate the atoms of a gemmi model in chain, residue, atom order."""
    for chain in gemmi_model:
        for residue in chain:
            yield from residue
