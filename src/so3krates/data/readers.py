"""Readers for reference data: sGDML/MD17 ``.npz``, mlff-style ``.npz`` and every ASE format.

All readers return a validated :class:`~so3krates.data.dataset.Dataset` in ASE units.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from so3krates.data.dataset import DataError, Dataset, validate
from so3krates.units import energy_factor, length_factor

SGDML_KEYS = ("R", "z", "E", "F")
MLFF_KEYS = ("positions", "atomic_numbers", "energy", "forces")
# Labels of the electronic state and of electrostatics: the default key and the other key read
# when the default is in use (a multiplicity 2S + 1 is converted to unpaired electrons 2S).
CHARGE_KEYS = ("charge", "total_charge")
SPIN_KEYS = ("spin", "multiplicity")
DIPOLE_KEY = "dipole"
CHARGES_KEY = "charges"


def read_dataset(
    path: str | os.PathLike,
    *,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
    virial_key: str = "virial",
    charge_key: str = "charge",
    spin_key: str = "spin",
    dipole_key: str = "dipole",
    charges_key: str = "charges",
    default_charge: float = 0.0,
    default_spin: float = 0.0,
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
        charge_key: total charge per structure in e (ASE: an ``info`` key; npz: (S,) or one
            number for all). With the default ``"charge"``, ``"total_charge"`` is read too.
        spin_key: number of unpaired electrons (2S) per structure, like ``charge_key``. With
            the default ``"spin"``, ``"multiplicity"`` (2S + 1) is read too and converted; a
            key named ``"multiplicity"`` is always converted.
        dipole_key: optional dipole label in e x length unit (3 numbers; ASE: ``info`` or
            calculator results; npz: (S, 3)). Converted with the length unit; a dipole in
            Debye must be converted by the user (1 D = 0.20819 e Å).
        charges_key: optional per-atom partial-charge labels in e (ASE: an ``arrays`` key or
            calculator results, where extxyz puts a ``charge``/``charges`` column; npz:
            (S, n)). ASE's ``initial_charges`` are read only when named here.
        default_charge: total charge of the structures without a ``charge_key`` label.
        default_spin: unpaired electrons of the structures without a ``spin_key`` label.
            A key other than the defaults that no structure has is an error.
        energy_unit: unit the energies are stored in (see ``so3krates.units``).
        length_unit: unit the positions are stored in; forces are in energy/length.
        nan_labels: ``"error"`` or ``"mask"`` (see :func:`validate`).
        format: an ASE format name, or ``"npz"``; guessed from the suffix when None.

    Raises:
        DataError: missing file or keys, empty file, mismatched shapes, NaN, overlaps.
    """
    r = _Reading.of(path, energy_key, forces_key, stress_key, virial_key, charge_key, spin_key,
                    dipole_key, charges_key, default_charge, default_spin, energy_unit,
                    length_unit, nan_labels, format)
    if r.is_npz:
        data = _read_npz(r.path, energy_key, forces_key, stress_key, r.keys)
    else:
        data = _read_ase(r.path, energy_key, forces_key, stress_key, virial_key, format, r.keys)
    return r.finish(data)


@dataclass(frozen=True)
class _Reading:
    """What :func:`read_dataset` reads and how: the file, its kind, the label keys, the unit
    factors and the NaN policy (:meth:`of` takes ``read_dataset``'s arguments by name; the
    chunked reader, ``so3krates.data.chunked``, uses it too)."""

    path: Path
    is_npz: bool
    keys: "_ElectronicKeys"
    energy_factor: float
    length_factor: float
    nan_labels: str

    @classmethod
    def of(cls, path, energy_key, forces_key, stress_key, virial_key, charge_key, spin_key,
           dipole_key, charges_key, default_charge, default_spin, energy_unit, length_unit,
           nan_labels, format) -> "_Reading":
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty")
        keys = _ElectronicKeys(charge_key, spin_key, dipole_key, charges_key,
                               float(default_charge), float(default_spin))
        is_npz = format == "npz" or (format is None and path.suffix == ".npz")
        return cls(path, is_npz, keys, energy_factor(energy_unit), length_factor(length_unit),
                   nan_labels)

    def finish(self, data: Dataset) -> Dataset:
        """``data`` as read converted to eV, Å, eV/Å, eV/Å³, and validated."""
        e_fac, l_fac = self.energy_factor, self.length_factor
        data = Dataset(
            numbers=data.numbers,
            positions=[r * l_fac for r in data.positions],
            cells=data.cells * l_fac,
            pbc=data.pbc,
            energy=data.energy * e_fac,
            forces=[f * (e_fac / l_fac) for f in data.forces],
            source=str(self.path),
            stress=None if data.stress is None else data.stress * (e_fac / l_fac**3),
            charge=data.charge,
            spin=data.spin,
            dipole=None if data.dipole is None else data.dipole * l_fac,
            charges=data.charges,
        )
        return validate(data, nan_labels=self.nan_labels)


@dataclass(frozen=True)
class _ElectronicKeys:
    charge: str
    spin: str
    dipole: str
    charges: str
    default_charge: float
    default_spin: float

    def charge_keys(self) -> tuple[str, ...]:
        """Keys read for the total charge, in order of preference."""
        return CHARGE_KEYS if self.charge == CHARGE_KEYS[0] else (self.charge,)

    def spin_keys(self) -> tuple[str, ...]:
        return SPIN_KEYS if self.spin == SPIN_KEYS[0] else (self.spin,)

    def named(self, kind: str) -> bool:
        """True when the user named this label's key (not the default): then some structure
        must have it."""
        default = {"charge": CHARGE_KEYS[0], "spin": SPIN_KEYS[0], "dipole": DIPOLE_KEY,
                   "charges": CHARGES_KEY}[kind]
        return getattr(self, kind) != default


def _spin_value(key: str, value: float, where: str) -> float:
    """Unpaired electrons from a ``spin`` (2S) or ``multiplicity`` (2S + 1) value."""
    if key != "multiplicity":
        return value
    if value < 1:  # NaN passes: validate reports it
        raise DataError(f"{where}: multiplicity {value:g} < 1 (the multiplicity 2S + 1 is at "
                        "least 1; a singlet is 1)")
    return value - 1.0


def _number(value, what: str, where: str) -> float:
    try:
        return float(np.asarray(value, dtype=np.float64).reshape(()))
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} {value!r} is not a number") from None


def _not_found(kind: str, key: str, path: Path, available) -> DataError:
    return DataError(
        f"{path}: no structure has the {kind} label {key!r} (data.{kind}_key); "
        f"available keys: {sorted(available)}"
    )


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


def _read_npz(path: Path, energy_key: str, forces_key: str, stress_key: str,
              keys: _ElectronicKeys) -> Dataset:
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
        charge, spin, dipole, charges = _npz_electronic(npz, path, n_struct, n_atoms, keys)
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
        charge=charge,
        spin=spin,
        dipole=dipole,
        charges=None if charges is None else [charges[k][m] for k, m in enumerate(keep)],
    )


def _npz_electronic(npz, path: Path, n_struct: int, n_atoms: int, keys: _ElectronicKeys):
    """Total charge, unpaired electrons (defaults where the file has none), dipole (S, 3) and
    per-atom charges (S, n) of an npz file (None where absent)."""

    def per_structure(kind: str, candidates: tuple[str, ...], default: float) -> np.ndarray:
        found = [k for k in candidates if k in npz.files]
        if not found:
            if keys.named(kind):
                raise _not_found(kind, candidates[0], path, npz.files)
            return np.full(n_struct, default)
        values = [(key, one_key(key, kind)) for key in found]
        for key, v in values[1:]:  # both keys given (charge and total_charge): they must agree
            same = np.isclose(v, values[0][1], rtol=0, atol=1e-9, equal_nan=True)
            differ = np.flatnonzero(~same)
            if differ.size:
                k = int(differ[0])
                raise DataError(f"{path}: structure {k}: {values[0][0]} and {key} disagree "
                                f"({kind}: {values[0][1][k]:g} and {v[k]:g})")
        return values[0][1]

    def one_key(key: str, kind: str) -> np.ndarray:
        raw = np.asarray(npz[key])
        try:
            raw = raw.astype(np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{path}: {key} is not numeric (dtype {raw.dtype})") from None
        if raw.size == 1:  # one value for every structure
            raw = np.full(n_struct, raw.reshape(()))
        if raw.shape not in ((n_struct,), (n_struct, 1)):
            hint = ("; per-atom charges belong in data.charges_key" if raw.ndim >= 2 else "")
            raise DataError(f"{path}: {key} has shape {raw.shape}, expected ({n_struct},) "
                            f"(one value per structure){hint}")
        raw = raw.reshape(n_struct)
        if kind == "spin":
            raw = np.array([_spin_value(key, v, f"{path}: structure {k}")
                            for k, v in enumerate(raw)])
        return raw

    charge = per_structure("charge", keys.charge_keys(), keys.default_charge)
    spin = per_structure("spin", keys.spin_keys(), keys.default_spin)
    dipole = charges = None
    if keys.dipole in npz.files:
        dipole = np.asarray(npz[keys.dipole], dtype=np.float64)
        if dipole.shape != (n_struct, 3):
            raise DataError(f"{path}: {keys.dipole} has shape {dipole.shape}, expected "
                            f"({n_struct}, 3): 3 numbers per structure")
    elif keys.named("dipole"):
        raise _not_found("dipole", keys.dipole, path, npz.files)
    if keys.charges in npz.files:
        charges = np.asarray(npz[keys.charges], dtype=np.float64)
        if charges.shape == (n_struct, n_atoms, 1):
            charges = charges[..., 0]
        if charges.shape != (n_struct, n_atoms):
            hint = ("; a total charge per structure belongs in data.charge_key"
                    if charges.shape == (n_struct,) else "")
            raise DataError(f"{path}: {keys.charges} has shape {charges.shape}, expected "
                            f"({n_struct}, {n_atoms}): one partial charge per atom{hint}")
    elif keys.named("charges"):
        raise _not_found("charges", keys.charges, path, npz.files)
    return charge, spin, dipole, charges


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


def _agreed(found: list[tuple[str, float]], default: float, where: str, what: str,
            shown: str) -> float:
    """The value of the first key present in ``found`` ((key, value) pairs), or ``default``;
    keys that disagree are an error (``shown`` formats each as ``{key}``, ``{v}``)."""
    if len({v for _, v in found if v == v}) > 1:
        raise DataError(f"{where}: {what} disagree: "
                        + ", ".join(shown.format(key=key, v=v) for key, v in found))
    return found[0][1] if found else default


def _ase_electronic(frames, path: Path, keys: _ElectronicKeys, in_file: dict | None = None):
    """Total charge, unpaired electrons, dipole and per-atom charges of ASE structures.

    Scalars and the dipole come from ``info`` or the calculator results (extxyz moves a
    ``dipole`` there); per-atom charges from ``arrays`` or the calculator results (extxyz
    reads a ``charge`` or ``charges`` column as the result ``charges``). A key the user named
    that no frame has is an error, unless ``in_file`` is given (frames of a part of a file):
    then the kinds found and the keys seen are added to it (see :func:`check_named_keys`)."""
    charge, spin, dipole, charges = [], [], [], []
    seen = {kind: False for kind in ("charge", "spin", "dipole", "charges")}
    available: set[str] = set()
    charges_keys = (keys.charges, "charges") if keys.charges == "charge" else (keys.charges,)
    for k, atoms in enumerate(frames):
        where = f"{path}: structure {k}"
        results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
        available |= set(atoms.info) | set(results) | set(atoms.arrays)
        scalars = {**results, **atoms.info}
        found = [(key, _number(scalars[key], "total charge", where))
                 for key in keys.charge_keys() if key in scalars]
        charge.append(_agreed(found, keys.default_charge, where, "the total charge labels",
                              "{key}={v:g}"))
        seen["charge"] |= bool(found)
        found = [(key, _spin_value(key, _number(scalars[key], key, where), where))
                 for key in keys.spin_keys() if key in scalars]
        spin.append(_agreed(found, keys.default_spin, where, "the spin labels",
                            "{key} -> {v:g} unpaired electrons"))
        seen["spin"] |= bool(found)
        if keys.dipole in scalars:
            try:
                d = np.asarray(scalars[keys.dipole], dtype=np.float64)
            except (TypeError, ValueError):
                raise DataError(f"{where}: the dipole label {keys.dipole!r} "
                                f"({scalars[keys.dipole]!r}) is not 3 numbers") from None
            if d.size != 3:
                raise DataError(f"{where}: the dipole label {keys.dipole!r} has {d.size} "
                                f"number(s) ({d.tolist()}), expected 3 (x y z in e Å)")
            dipole.append(d.reshape(3))
            seen["dipole"] = True
        else:
            dipole.append(np.full(3, np.nan))
        q = next((store[key] for key in charges_keys for store in (atoms.arrays, results)
                  if key in store), None)
        if q is None:
            charges.append(np.full(len(atoms), np.nan))
        else:
            try:
                q = np.asarray(q, dtype=np.float64)
            except (TypeError, ValueError):
                raise DataError(f"{where}: the partial charges {keys.charges!r} are not "
                                "numbers") from None
            charges.append(q.reshape(-1) if q.ndim == 2 and q.shape[1] == 1 else q)
            seen["charges"] = True
    if in_file is None:
        check_named_keys(keys, seen, available, path)
    else:
        for kind, value in seen.items():
            in_file[kind] = in_file.get(kind, False) or value
        in_file.setdefault("available", set()).update(available)
    return (np.asarray(charge, dtype=np.float64), np.asarray(spin, dtype=np.float64),
            np.stack(dipole) if seen["dipole"] else None, charges if seen["charges"] else None)


def _read_ase(path: Path, energy_key: str, forces_key: str, stress_key: str, virial_key: str,
              format: str | None, keys: _ElectronicKeys) -> Dataset:
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
    return _frames_dataset(frames, path, energy_key, forces_key, stress_key, virial_key, keys)


def check_named_keys(keys: _ElectronicKeys, found: dict, available: set, path: Path) -> None:
    """Raise for a label key the user named (not a default) that no structure has:
    ``found[kind]`` says if one has it, ``available`` the keys the structures have."""
    for kind, key in (("charge", keys.charge), ("spin", keys.spin), ("dipole", keys.dipole),
                      ("charges", keys.charges)):
        if keys.named(kind) and not found.get(kind):
            raise _not_found(kind, key, path, available)


def _frames_dataset(frames, path: Path, energy_key: str, forces_key: str, stress_key: str,
                    virial_key: str, keys: _ElectronicKeys, in_file: dict | None = None
                    ) -> Dataset:
    """The labelled structures of ASE ``frames`` (a list of ``ase.Atoms``), as stored
    (``in_file``: see :func:`_ase_electronic`)."""
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
    charge, spin, dipole, charges = _ase_electronic(frames, path, keys, in_file)
    return Dataset(
        numbers=[a.numbers.astype(np.int64) for a in frames],
        positions=[a.positions.astype(np.float64) for a in frames],
        cells=np.stack([np.asarray(a.cell[:], dtype=np.float64) for a in frames]),
        pbc=np.stack([np.asarray(a.pbc, dtype=bool) for a in frames]),
        energy=np.asarray(energies, dtype=np.float64),
        forces=forces,
        source=str(path),
        stress=np.stack(stresses) if np.isfinite(stresses).any() else None,
        charge=charge,
        spin=spin,
        dipole=dipole,
        charges=charges,
    )
