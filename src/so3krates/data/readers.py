"""Readers for reference data: sGDML/MD17 ``.npz``, mlff-style ``.npz`` and every ASE format.

All readers return a validated :class:`~so3krates.data.dataset.Dataset` in ASE units.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from so3krates.data.dataset import DataError, Dataset, validate
from so3krates.units import energy_factor, length_factor

SGDML_KEYS = ("R", "z", "E", "F")
MLFF_KEYS = ("positions", "atomic_numbers", "energy", "forces")


def read_dataset(
    path: str | os.PathLike,
    *,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
    virial_key: str = "virial",
    energy_unit: str = "eV",
    length_unit: str = "Angstrom",
    nan_labels: str = "error",
    format: str | None = None,
) -> Dataset:
    """Read labelled structures from ``path`` and convert them to eV, Å, eV/Å, eV/Å³.

    Args:
        path: an ``.npz`` file (sGDML keys ``R, z, E, F`` or mlff keys ``positions,
            atomic_numbers, energy, forces``) or any file ``ase.io.read`` understands.
        energy_key: name of the energy label (ASE formats: an ``info`` key, or ``energy`` for
            calculator results; npz: overrides the default key).
        forces_key: name of the forces label (ASE: an ``arrays`` key or ``forces``).
        stress_key: name of the optional stress label (ASE's sign, tension positive; energy
            per volume): an ``info`` key or calculator result with 6 (Voigt: xx yy zz yz xz
            xy), 9 or 3x3 numbers; npz: a (S, 3, 3) or (S, 6) array. Structures without it
            (molecules) get none.
        virial_key: name of an optional virial label (3x3, extensive, energy; the virial
            ``W = -stress * volume``), used where a structure has no stress label.
        energy_unit: unit the energies are stored in (see ``so3krates.units``).
        length_unit: unit the positions are stored in; forces are in energy/length.
        nan_labels: ``"error"`` or ``"mask"`` (see :func:`validate`).
        format: an ASE format name, or ``"npz"``; guessed from the suffix when None.

    Raises:
        DataError: missing file or keys, empty file, mismatched shapes, NaN, overlaps.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    e_fac = energy_factor(energy_unit)
    l_fac = length_factor(length_unit)
    if format == "npz" or (format is None and path.suffix == ".npz"):
        data = _read_npz(path, energy_key, forces_key, stress_key)
    else:
        data = _read_ase(path, energy_key, forces_key, stress_key, virial_key, format)
    data = Dataset(
        numbers=data.numbers,
        positions=[r * l_fac for r in data.positions],
        cells=data.cells * l_fac,
        pbc=data.pbc,
        energy=data.energy * e_fac,
        forces=[f * (e_fac / l_fac) for f in data.forces],
        source=str(path),
        stress=None if data.stress is None else data.stress * (e_fac / l_fac**3),
    )
    return validate(data, nan_labels=nan_labels)


def stress_matrix(value, where: str) -> np.ndarray:
    """A stress label as a 3x3 matrix: from 6 Voigt numbers (ASE's order xx yy zz yz xz xy),
    9 numbers (row-major) or a 3x3 array."""
    from ase.stress import voigt_6_to_full_3x3_stress

    s = np.asarray(value, dtype=np.float64)
    if s.size == 6:
        return voigt_6_to_full_3x3_stress(s.reshape(6))
    if s.size == 9:
        return s.reshape(3, 3)
    raise DataError(f"{where}: a stress label needs 6 (Voigt) or 9 numbers, got shape {s.shape}")


def _require(npz, keys: tuple[str, ...], path: Path, layout: str) -> None:
    missing = [k for k in keys if k not in npz.files]
    if missing:
        raise DataError(
            f"{path}: missing key(s) {missing} for the {layout} layout; "
            f"the file has keys {sorted(npz.files)}"
        )


def _read_npz(path: Path, energy_key: str, forces_key: str, stress_key: str) -> Dataset:
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for corrupt files
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    with npz:
        if "R" in npz.files or "z" in npz.files:
            e_key = "E" if energy_key == "energy" else energy_key
            f_key = "F" if forces_key == "forces" else forces_key
            _require(npz, ("R", "z", e_key, f_key), path, "sGDML (R, z, E, F)")
            positions = np.asarray(npz["R"], dtype=np.float64)
            numbers = np.asarray(npz["z"]).astype(np.int64)
            energy = np.asarray(npz[e_key], dtype=np.float64)
            forces = np.asarray(npz[f_key], dtype=np.float64)
            if positions.ndim != 3 or positions.shape[2] != 3:
                raise DataError(f"{path}: R has shape {positions.shape}, expected (S, n, 3)")
            n_struct, n_atoms = positions.shape[:2]
            if numbers.shape != (n_atoms,):
                raise DataError(f"{path}: z has shape {numbers.shape}, expected ({n_atoms},)")
            numbers = np.broadcast_to(numbers, (n_struct, n_atoms))
            cells, pbc = np.zeros((n_struct, 3, 3)), np.zeros((n_struct, 3), dtype=bool)
        else:
            _require(npz, ("positions", "atomic_numbers", energy_key, forces_key), path,
                     "mlff (positions, atomic_numbers, energy, forces)")
            positions = np.asarray(npz["positions"], dtype=np.float64)
            numbers = np.asarray(npz["atomic_numbers"]).astype(np.int64)
            energy = np.asarray(npz[energy_key], dtype=np.float64)
            forces = np.asarray(npz[forces_key], dtype=np.float64)
            if positions.ndim != 3 or positions.shape[2] != 3:
                raise DataError(
                    f"{path}: positions have shape {positions.shape}, expected (S, n, 3)"
                )
            n_struct, n_atoms = positions.shape[:2]
            if numbers.ndim == 1:
                numbers = np.broadcast_to(numbers, (n_struct, n_atoms))
            if numbers.shape != (n_struct, n_atoms):
                raise DataError(
                    f"{path}: atomic_numbers have shape {numbers.shape}, "
                    f"expected ({n_struct}, {n_atoms}) or ({n_atoms},)"
                )
            cells, pbc = _npz_cells(npz, path, n_struct)
        stress = None
        if stress_key in npz.files:
            raw = np.asarray(npz[stress_key], dtype=np.float64)
            if raw.shape[:1] != (n_struct,):
                raise DataError(f"{path}: {stress_key} has shape {raw.shape}, expected "
                                f"({n_struct}, 3, 3) or ({n_struct}, 6)")
            stress = np.stack([stress_matrix(s, f"{path}: structure {k}")
                               for k, s in enumerate(raw)])
    if energy.size != n_struct:
        raise DataError(f"{path}: {energy.size} energies for {n_struct} structures")
    if forces.shape != positions.shape:
        raise DataError(
            f"{path}: forces have shape {forces.shape}, positions {positions.shape}"
        )
    # Z = 0 marks padding atoms of variable-size molecules (mlff layout): drop them.
    keep = [zs > 0 for zs in numbers]
    return Dataset(
        numbers=[numbers[k][m].copy() for k, m in enumerate(keep)],
        positions=[positions[k][m] for k, m in enumerate(keep)],
        cells=cells,
        pbc=pbc,
        energy=energy.reshape(n_struct),
        forces=[forces[k][m] for k, m in enumerate(keep)],
        source=str(path),
        stress=stress,
    )


def _npz_cells(npz, path: Path, n_struct: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells and pbc of the mlff layout: keys ``cell`` ((S, 3, 3) or (3, 3)) and ``pbc``
    ((S, 3) or (3,); default: periodic where a cell is given), or molecules."""
    if "cell" not in npz.files:
        return np.zeros((n_struct, 3, 3)), np.zeros((n_struct, 3), dtype=bool)
    cells = np.asarray(npz["cell"], dtype=np.float64)
    if cells.shape == (3, 3):
        cells = np.broadcast_to(cells, (n_struct, 3, 3)).copy()
    if cells.shape != (n_struct, 3, 3):
        raise DataError(f"{path}: cell has shape {cells.shape}, expected ({n_struct}, 3, 3)")
    pbc = np.asarray(npz["pbc"], dtype=bool) if "pbc" in npz.files else np.ones(3, dtype=bool)
    pbc = np.broadcast_to(pbc, (n_struct, 3)).copy() if pbc.shape == (3,) else pbc
    if pbc.shape != (n_struct, 3):
        raise DataError(f"{path}: pbc has shape {pbc.shape}, expected ({n_struct}, 3) or (3,)")
    return cells, pbc


def _label(atoms, key: str, kind: str, k: int, path: Path):
    """Energy or forces of one ``ase.Atoms``: from info/arrays, else calculator results."""
    store = atoms.info if kind == "energy" else atoms.arrays
    if key in store:
        return store[key]
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    if kind == "energy" and calc is not None and key == "free_energy":
        return calc.results.get("free_energy")
    available = sorted(set(store) | set(getattr(calc, "results", {}) if calc else ()))
    raise DataError(
        f"{path}: structure {k} has no {kind} label {key!r}; available keys: {available}. "
        f"Set data.{kind}_key to the right name."
    )


def _stress_label(atoms, stress_key: str, virial_key: str, k: int, path: Path) -> np.ndarray:
    """Structure ``k``'s stress (3, 3) from info, calculator results or a virial; NaN if none."""
    where = f"{path}: structure {k}"
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    for store in (atoms.info, results):
        if stress_key in store:
            return stress_matrix(store[stress_key], where)
    for store in (atoms.info, results):
        if virial_key in store:
            volume = abs(atoms.get_volume()) if atoms.pbc.all() else 0.0
            if not volume > 0:
                raise DataError(f"{where}: a virial label needs a periodic cell with a volume")
            return -stress_matrix(store[virial_key], where) / volume
    return np.full((3, 3), np.nan)


def _read_ase(path: Path, energy_key: str, forces_key: str, stress_key: str, virial_key: str,
              format: str | None) -> Dataset:
    import ase.io

    try:
        frames = ase.io.read(path, index=":", format=format)
    except StopIteration:
        frames = []
    except Exception as err:
        raise DataError(f"{path}: ASE could not read the file ({type(err).__name__}: {err})") from None
    if isinstance(frames, (list, tuple)) is False:
        frames = [frames]
    if len(frames) == 0:
        raise DataError(f"{path}: no structures found (empty file?)")
    energies, forces, stresses = [], [], []
    for k, atoms in enumerate(frames):
        stresses.append(_stress_label(atoms, stress_key, virial_key, k, path))
        e = _label(atoms, energy_key, "energy", k, path)
        try:
            energies.append(float(np.asarray(e, dtype=np.float64).reshape(())))
        except (TypeError, ValueError):
            raise DataError(f"{path}: structure {k}: energy {e!r} is not a number") from None
        f = np.asarray(_label(atoms, forces_key, "forces", k, path), dtype=np.float64)
        forces.append(f)
    return Dataset(
        numbers=[a.numbers.astype(np.int64) for a in frames],
        positions=[a.positions.astype(np.float64) for a in frames],
        cells=np.stack([np.asarray(a.cell[:], dtype=np.float64) for a in frames]),
        pbc=np.stack([np.asarray(a.pbc, dtype=bool) for a in frames]),
        energy=np.asarray(energies, dtype=np.float64),
        forces=forces,
        source=str(path),
        stress=np.stack(stresses) if np.isfinite(stresses).any() else None,
    )
