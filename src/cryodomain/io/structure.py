"""Read atomic models (PDB / mmCIF) with gemmi (writing: :mod:`cryodomain.io.structure_writer`).

cryoSPHERE works on one pseudo-atom per residue: the CA atom of an amino acid or the C1' atom of a
nucleotide, weighted by the residue's electrons (the sum of the atomic numbers of all its atoms).
The full atoms are kept too, so that outputs can move every atom with its residue.

Reading keeps only amino acids and nucleotides (as classified by gemmi's residue tables; CHARMM's
HSD/HSE/HSP are read as HIS), drops alternate conformations (first altloc kept), waters, ions and
ligands, and keeps file order with chains concatenated. Coordinates are in Å.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from cryodomain.errors import input_error

logger = logging.getLogger(__name__)

READ_EXTENSIONS = (".pdb", ".ent", ".cif", ".mmcif")
CHARMM_HISTIDINES = {"HSD": "HIS", "HSE": "HIS", "HSP": "HIS"}
AMINO_ACID_ATOM = "CA"
NUCLEOTIDE_ATOM = "C1'"
# Old PDB files (before 2007 remediation) spell the sugar atoms with '*' instead of a prime.
NUCLEOTIDE_ATOM_LEGACY = "C1*"
# Backbone atoms: of an amino acid N, CA, C, O (and their hydrogens, OXT); of a nucleotide the
# phosphate and the sugar (names with ' or *, P, OPn/OnP). The rest is the side chain / the base.
AMINO_ACID_BACKBONE = frozenset({"N", "CA", "C", "O", "OXT", "H", "H1", "H2", "H3", "HA", "HA2", "HA3"})
PHOSPHATE_ATOMS = frozenset({"P", "OP1", "OP2", "OP3", "O1P", "O2P", "O3P"})


@dataclass(frozen=True, eq=False)
class AtomicModel:
    """One model of a structure file: one pseudo-atom per residue plus every atom.

    Attributes:
        coords: ``(R, 3)`` float64 Å, CA for amino acids and C1' for nucleotides, in file order with
            chains concatenated.
        amplitudes: ``(R,)`` float64 electrons, the sum of atomic numbers of all atoms of the residue.
        chain_ids: ``(R,)`` str chain name (author chain id).
        residue_numbers: ``(R,)`` int64 author sequence number.
        insertion_codes: ``(R,)`` str, ``''`` when none.
        residue_names: ``(R,)`` str.
        is_nucleotide: ``(R,)`` bool.
        atom_coords: ``(A, 3)`` float64 Å.
        atom_names: ``(A,)`` str.
        atom_elements: ``(A,)`` str element symbol.
        atom_electrons: ``(A,)`` float64 atomic number.
        atom_residue_index: ``(A,)`` int64 index into the residue arrays.
        source: file name, for messages.
    """

    coords: np.ndarray
    amplitudes: np.ndarray
    chain_ids: np.ndarray
    residue_numbers: np.ndarray
    insertion_codes: np.ndarray
    residue_names: np.ndarray
    is_nucleotide: np.ndarray
    atom_coords: np.ndarray
    atom_names: np.ndarray
    atom_elements: np.ndarray
    atom_electrons: np.ndarray
    atom_residue_index: np.ndarray
    source: str

    @property
    def n_residues(self) -> int:
        """Number of residues R."""
        return int(self.coords.shape[0])

    @property
    def n_atoms(self) -> int:
        """Number of atoms A."""
        return int(self.atom_coords.shape[0])

    def consecutive_pairs(self) -> np.ndarray:
        """Indices ``(i, i + 1)`` of neighbouring residues of one chain whose numbers differ by exactly 1.

        Returns:
            ``(P, 2)`` int64. Gaps in the numbering (missing loops) and chain ends give no pair.
        """
        same_chain = self.chain_ids[1:] == self.chain_ids[:-1]
        next_number = np.diff(self.residue_numbers) == 1
        first = np.nonzero(same_chain & next_number)[0].astype(np.int64)
        return np.stack([first, first + 1], axis=1)

    def electron_centroids(self) -> np.ndarray:
        """``(R, 3)`` float64 Å: each residue's electron-weighted atom centroid (where its density is)."""
        return group_centroids(self.atom_coords, self.atom_electrons, self.atom_residue_index, self.n_residues)

    def side_chain_atoms(self) -> np.ndarray:
        """``(A,)`` bool: the atom belongs to its residue's side chain (nucleotides: its base)."""
        names = self.atom_names
        nucleotide = self.is_nucleotide[self.atom_residue_index]
        amino_side = ~np.isin(names, list(AMINO_ACID_BACKBONE))
        sugar_phosphate = np.char.find(names, "'") >= 0
        sugar_phosphate |= np.char.find(names, "*") >= 0
        sugar_phosphate |= np.isin(names, list(PHOSPHATE_ATOMS))
        return np.where(nucleotide, ~sugar_phosphate, amino_side)

    def residue_spreads(self, centres: np.ndarray) -> np.ndarray:
        """``(R,)`` float64 Å²: each residue's electron-weighted variance of its atoms about
        ``centres`` ``(R, 3)`` Å, per axis (a third of the mean squared distance)."""
        return group_spreads(self.atom_coords, self.atom_electrons, self.atom_residue_index, centres)

    def with_coords(self, coords: np.ndarray, atom_coords: np.ndarray) -> AtomicModel:
        """Copy of this model with new coordinates.

        Args:
            coords: ``(R, 3)`` Å residue (CA / C1') positions.
            atom_coords: ``(A, 3)`` Å positions of all atoms.
        """
        coords = np.asarray(coords, dtype=np.float64)
        atom_coords = np.asarray(atom_coords, dtype=np.float64)
        if coords.shape != self.coords.shape or atom_coords.shape != self.atom_coords.shape:
            raise ValueError(f"with_coords expects {self.coords.shape} and {self.atom_coords.shape}, got {coords.shape} and {atom_coords.shape}")
        return dataclasses.replace(self, coords=coords.copy(), atom_coords=atom_coords.copy())


def group_centroids(points: np.ndarray, weights: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """``(n_groups, 3)`` weighted centroids of ``points`` ``(A, 3)`` Å, weights ``(A,)``, by ``group`` ``(A,)``."""
    total = np.bincount(group, weights=weights, minlength=n_groups)
    sums = np.stack([np.bincount(group, weights=weights * points[:, d], minlength=n_groups) for d in range(3)], axis=1)
    return sums / np.maximum(total, 1e-12)[:, None]


def group_spreads(points: np.ndarray, weights: np.ndarray, group: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``(n_groups,)`` Å²: the weighted variance per axis (a third of the mean squared distance) of
    each group's points about its centre ``centres`` ``(n_groups, 3)`` Å."""
    offsets = points - np.asarray(centres, dtype=np.float64)[group]
    n_groups = len(centres)
    total = np.bincount(group, weights=weights, minlength=n_groups)
    moments = np.bincount(group, weights=weights * (offsets * offsets).sum(-1), minlength=n_groups)
    return moments / np.maximum(total, 1e-12) / 3.0


def read_atomic_model(path: str | Path, model_index: int = 0) -> AtomicModel:
    """Read one model of a PDB or mmCIF file (optionally gzipped).

    Args:
        path: ``.pdb``, ``.ent``, ``.cif`` or ``.mmcif`` file, each optionally ``.gz``.
        model_index: 0-based index of the model to use when the file holds several.

    Returns:
        The model's amino acids and nucleotides.

    Raises:
        InputError: unsupported extension, unreadable file, no such model, no CA / C1' atom,
            or the same residue (chain, number, insertion code) twice.
    """
    path = Path(path)
    structure = _read_gemmi_structure(path)
    if not 0 <= model_index < len(structure):
        raise input_error(
            path,
            "model",
            f"model {model_index + 1} requested but the file holds {len(structure)}",
            f"choose a model between 1 and {len(structure)}",
        )
    if len(structure) > 1:
        logger.info("%s: %d models, using model %d", path.name, len(structure), model_index + 1)
    return _atomic_model_from_gemmi(structure[model_index], path, report_skipped=True)


def read_all_models(path: str | Path) -> list[AtomicModel]:
    """Read every model of a PDB or mmCIF file (e.g. an NMR ensemble or a written trajectory).

    Args:
        path: ``.pdb``, ``.ent``, ``.cif`` or ``.mmcif`` file, each optionally ``.gz``.

    Returns:
        One :class:`AtomicModel` per model, in file order.
    """
    path = Path(path)
    structure = _read_gemmi_structure(path)
    # Skipped residues are usually the same in every model: report them once.
    return [_atomic_model_from_gemmi(model, path, report_skipped=index == 0) for index, model in enumerate(structure)]


def center_of_residues(model: AtomicModel) -> np.ndarray:
    """``(3,)`` float64 Å, the mean of the residue (CA / C1') coordinates."""
    return model.coords.mean(axis=0)


def _supported_read_suffix(path: Path) -> str | None:
    """The format suffix of ``path`` (``.pdb`` ...), ignoring a trailing ``.gz``; None if unsupported."""
    name = path.name.lower()
    name = name.removesuffix(".gz")
    for extension in READ_EXTENSIONS:
        if name.endswith(extension):
            return extension
    return None


def _read_gemmi_structure(path: Path) -> gemmi.Structure:
    """Parse ``path`` with gemmi, turning every failure into an InputError naming the file."""
    extension = _supported_read_suffix(path)
    if extension is None:
        raise input_error(
            path,
            None,
            "unsupported structure file extension",
            "use .pdb, .ent, .cif or .mmcif (optionally .gz)",
        )
    if not path.is_file():
        raise input_error(path, None, "file not found", "check the path")
    file_format = gemmi.CoorFormat.Pdb if extension in (".pdb", ".ent") else gemmi.CoorFormat.Mmcif
    try:
        structure = gemmi.read_structure(str(path), format=file_format)
    except (RuntimeError, ValueError, OSError, UnicodeDecodeError) as error:
        raise input_error(
            path,
            None,
            f"cannot be read as {'PDB' if file_format == gemmi.CoorFormat.Pdb else 'mmCIF'} ({error})",
            "check that the file is a complete, uncorrupted structure file",
        ) from error
    if len(structure) == 0:
        raise input_error(path, None, "no models with atoms found", "check that the file holds coordinates")
    return structure


def _residue_kind(residue: gemmi.Residue) -> str:
    """``'amino'``, ``'nucleotide'``, ``'water'`` or ``'other'`` (ligand, ion) from gemmi's tables."""
    if residue.is_water():
        return "water"
    info = gemmi.find_tabulated_residue(CHARMM_HISTIDINES.get(residue.name, residue.name))
    if info is None:
        return "other"
    if info.is_amino_acid():
        return "amino"
    if info.is_nucleic_acid():
        return "nucleotide"
    return "water" if info.is_water() else "other"


def _representative_atoms(residue: gemmi.Residue, kind: str) -> list[gemmi.Atom]:
    """The residue's CA (amino acid) or C1' (nucleotide) atoms, all altlocs."""
    names = (AMINO_ACID_ATOM,) if kind == "amino" else (NUCLEOTIDE_ATOM, NUCLEOTIDE_ATOM_LEGACY)
    return [atom for atom in residue if atom.name in names]


def _check_no_merged_duplicates(gemmi_model: gemmi.Model, path: Path) -> None:
    """InputError if one (chain, number, insertion code) holds its CA / C1' twice with the same altloc.

    Run before removing alternate conformations, which would silently keep one copy: gemmi's PDB
    reader merges all records of one residue number into one residue even when the copies are far
    apart, and reads same-numbered residues of different names as microheterogeneity.
    Microheterogeneity with distinct altlocs (A / B) is legitimate and passes.
    """
    labels: dict[tuple[str, int, str], list[tuple[str, str]]] = {}
    for chain in gemmi_model:
        for residue in chain:
            kind = _residue_kind(residue)
            if kind not in ("amino", "nucleotide"):
                continue
            key = (chain.name, residue.seqid.num, residue.seqid.icode.strip())
            residue_labels = labels.setdefault(key, [])
            for atom in _representative_atoms(residue, kind):
                label = (atom.name, atom.altloc)
                if label in residue_labels:
                    raise _duplicate_residue_error(path, key)
                residue_labels.append(label)


def _duplicate_residue_error(path: Path, key: tuple[str, int, str]) -> Exception:
    chain, number, icode = key
    return input_error(
        path,
        f"chain {chain} residue {number}{icode}",
        "residue appears more than once",
        "keep one copy of each residue (or give the copies different chains or numbers)",
    )


def _atomic_model_from_gemmi(gemmi_model: gemmi.Model, path: Path, report_skipped: bool) -> AtomicModel:
    """Collect amino acids and nucleotides of one gemmi model into an :class:`AtomicModel`."""
    _check_no_merged_duplicates(gemmi_model, path)
    # Work on a copy: removing altlocs edits the model in place.
    gemmi_model = gemmi_model.clone()
    gemmi_model.remove_alternative_conformations()

    residue_rows: list[tuple] = []
    atom_rows: list[tuple] = []
    seen: set[tuple[str, int, str]] = set()
    waters = 0
    skipped_ligands: Counter[str] = Counter()
    missing_representative = 0
    for chain in gemmi_model:
        for residue in chain:
            kind = _residue_kind(residue)
            if kind == "water":
                waters += 1
                continue
            if kind == "other":
                skipped_ligands[residue.name] += 1
                continue
            number, icode = residue.seqid.num, residue.seqid.icode.strip()
            representatives = _representative_atoms(residue, kind)
            if not representatives:
                missing_representative += 1
                continue
            key = (chain.name, number, icode)
            if key in seen:
                raise _duplicate_residue_error(path, key)
            seen.add(key)
            residue_index = len(residue_rows)
            electrons = 0.0
            for atom in residue:
                atomic_number = float(atom.element.atomic_number)
                electrons += atomic_number
                atom_rows.append((atom.pos.tolist(), atom.name, atom.element.name, atomic_number, residue_index))
            residue_rows.append(
                (
                    representatives[0].pos.tolist(),
                    electrons,
                    chain.name,
                    number,
                    icode,
                    CHARMM_HISTIDINES.get(residue.name, residue.name),
                    kind == "nucleotide",
                )
            )

    if report_skipped and (waters or skipped_ligands):
        parts = [f"{waters} water{'s' if waters != 1 else ''}"] if waters else []
        ligand_count = sum(skipped_ligands.values())
        if ligand_count:
            names = ", ".join(sorted(skipped_ligands)[:10]) + (", ..." if len(skipped_ligands) > 10 else "")
            parts.append(f"{ligand_count} ligand/ion residue{'s' if ligand_count != 1 else ''} ({names})")
        logger.info("%s: skipped %s", path.name, " and ".join(parts))
    if missing_representative and report_skipped:
        logger.warning(
            "%s: skipped %d amino acid/nucleotide residue%s without a CA or C1' atom",
            path.name,
            missing_representative,
            "s" if missing_representative != 1 else "",
        )
    if not residue_rows:
        raise input_error(
            path,
            None,
            "no CA or C1' atoms of amino acids or nucleotides found",
            "give a structure file with a protein or nucleic-acid model",
        )
    unknown_elements = sum(1 for row in atom_rows if row[3] == 0.0)
    if unknown_elements and report_skipped:
        logger.warning("%s: %d atoms of unknown element count 0 electrons", path.name, unknown_elements)

    coords, amplitudes, chain_ids, numbers, icodes, names, nucleotide = zip(*residue_rows)
    atom_coords, atom_names, atom_elements, atom_electrons, atom_residue = zip(*atom_rows)
    return AtomicModel(
        coords=np.array(coords, dtype=np.float64),
        amplitudes=np.array(amplitudes, dtype=np.float64),
        chain_ids=np.array(chain_ids, dtype=str),
        residue_numbers=np.array(numbers, dtype=np.int64),
        insertion_codes=np.array(icodes, dtype=str),
        residue_names=np.array(names, dtype=str),
        is_nucleotide=np.array(nucleotide, dtype=bool),
        atom_coords=np.array(atom_coords, dtype=np.float64),
        atom_names=np.array(atom_names, dtype=str),
        atom_elements=np.array(atom_elements, dtype=str),
        atom_electrons=np.array(atom_electrons, dtype=np.float64),
        atom_residue_index=np.array(atom_residue, dtype=np.int64),
        source=path.name,
    )
