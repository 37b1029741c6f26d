"""An in-memory dataset of labelled structures, in ASE units.

Structures may differ in size. Every array is NumPy on the host; batching and padding for the
model happen later (``so3krates.batching``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """Raised for input data that cannot be used: the message says what is wrong and where."""


def renumbered(err: Exception, indices) -> Exception:
    """``err`` (raised for a part of a file) with each "structure k" of its message made
    "structure indices[k]": the structure's number in the whole file. Same type, no traceback
    of its own (raise it ``from None``)."""
    indices = np.asarray(indices)

    def whole(m: re.Match) -> str:
        k = int(m.group(1))
        return f"structure {int(indices[k]) if k < len(indices) else k}"

    return type(err)(re.sub(r"\bstructure (\d+)", whole, str(err)))


@dataclass(frozen=True)
class Dataset:
    """Labelled structures.

    Attributes:
        numbers: per structure, atomic numbers, shape (n_i,), int.
        positions: per structure, Cartesian positions in Å, shape (n_i, 3), float64.
        cells: lattice vectors as rows in Å, shape (S, 3, 3); zeros for molecules.
        pbc: periodic directions, shape (S, 3), bool.
        energy: total energies in eV, shape (S,), float64; NaN where a label is missing.
        forces: per structure, forces in eV/Å, shape (n_i, 3); NaN where missing.
        source: where the data came from (for messages).
        stress: stress in eV/Å³ (ASE's sign: tension positive), shape (S, 3, 3), NaN where a
            structure has none (molecules); None if no structure has one.
        charge: total charge per structure in e, shape (S,) float64 (zeros if not given).
        spin: unpaired electrons per structure (2S), shape (S,) float64 (zeros if not given).
        dipole: dipole label in e Å, shape (S, 3), NaN where missing; None if none has one.
        charges: per structure, partial-charge labels in e, shape (n_i,), NaN where missing;
            None if no structure has them.
    """

    numbers: list[np.ndarray]
    positions: list[np.ndarray]
    cells: np.ndarray
    pbc: np.ndarray
    energy: np.ndarray
    forces: list[np.ndarray]
    source: str = "<memory>"
    stress: np.ndarray | None = None
    charge: np.ndarray | None = None
    spin: np.ndarray | None = None
    dipole: np.ndarray | None = None
    charges: list[np.ndarray] | None = None

    def __post_init__(self):
        # Electronic state is always defined: neutral, closed shell unless given.
        for name in ("charge", "spin"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros(len(self.numbers)))

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def n_atoms(self) -> np.ndarray:
        """Number of atoms per structure, shape (S,)."""
        return np.array([len(z) for z in self.numbers], dtype=np.int64)

    @property
    def elements(self) -> list[int]:
        """Sorted atomic numbers present in the dataset."""
        return sorted({int(z) for zs in self.numbers for z in np.unique(zs)})

    def subset(self, indices: np.ndarray) -> "Dataset":
        """The structures at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(
            numbers=[self.numbers[k] for k in idx],
            positions=[self.positions[k] for k in idx],
            cells=self.cells[idx],
            pbc=self.pbc[idx],
            energy=self.energy[idx],
            forces=[self.forces[k] for k in idx],
            source=self.source,
            stress=None if self.stress is None else self.stress[idx],
            charge=self.charge[idx],
            spin=self.spin[idx],
            dipole=None if self.dipole is None else self.dipole[idx],
            charges=None if self.charges is None else [self.charges[k] for k in idx],
        )

    @property
    def has_stress(self) -> bool:
        """True if some structure has a stress label."""
        return self.stress is not None and bool(np.isfinite(self.stress).all(axis=(1, 2)).any())

    @property
    def has_dipole(self) -> bool:
        """True if some structure has a dipole label."""
        return self.dipole is not None and bool(np.isfinite(self.dipole).all(axis=1).any())

    @property
    def has_charges(self) -> bool:
        """True if some structure has partial-charge labels."""
        return self.charges is not None and any(np.isfinite(q).any() for q in self.charges)

    def to_atoms(self, k: int):
        """Structure ``k`` as an ``ase.Atoms`` (no labels attached; its total charge and
        unpaired electrons in ``info``)."""
        from ase import Atoms

        atoms = Atoms(
            numbers=self.numbers[k],
            positions=self.positions[k],
            cell=self.cells[k],
            pbc=self.pbc[k],
        )
        atoms.info["charge"] = float(self.charge[k])
        atoms.info["spin"] = float(self.spin[k])
        return atoms


def validate(
    data: Dataset,
    *,
    nan_labels: str = "error",
    min_distance: float = 0.1,
) -> Dataset:
    """Check a dataset and return it; raise ``DataError`` with a precise message otherwise.

    Args:
        data: the dataset to check.
        nan_labels: ``"error"`` rejects NaN/inf labels; ``"mask"`` keeps them (they are
            masked in the loss and in metrics).
            The total charge and the spin are inputs, never masked: they must be finite
            (spin >= 0). Per-atom charge labels must sum to the total charge within
            :func:`charge_sum_tolerance`.
        min_distance: atoms closer than this (Å) are reported as overlapping.
    """
    where = data.source
    if len(data) == 0:
        raise DataError(f"{where}: no structures found (empty file?)")
    if nan_labels not in ("error", "mask"):
        raise DataError(f"nan_labels must be 'error' or 'mask', got {nan_labels!r}")
    for k, (z, r, f) in enumerate(zip(data.numbers, data.positions, data.forces)):
        if z.ndim != 1 or len(z) == 0:
            raise DataError(f"{where}: structure {k} has no atoms")
        if r.shape != (len(z), 3):
            raise DataError(
                f"{where}: structure {k}: positions have shape {r.shape}, "
                f"expected ({len(z)}, 3) for {len(z)} atoms"
            )
        if f.shape != (len(z), 3):
            raise DataError(
                f"{where}: structure {k}: forces have shape {f.shape}, "
                f"expected ({len(z)}, 3) for {len(z)} atoms"
            )
        if np.any(z < 1) or np.any(z > 118):
            raise DataError(f"{where}: structure {k}: atomic numbers out of range 1..118: {z}")
        if not np.all(np.isfinite(r)):
            raise DataError(f"{where}: structure {k}: positions contain NaN or inf")
        if nan_labels == "error" and not np.all(np.isfinite(f)):
            raise DataError(
                f"{where}: structure {k}: forces contain NaN or inf "
                "(set data.nan_labels=mask to train with missing labels masked)"
            )
    if data.cells.shape != (len(data), 3, 3) or data.pbc.shape != (len(data), 3):
        raise DataError(f"{where}: cells/pbc do not match the number of structures")
    if data.energy.shape != (len(data),):
        raise DataError(
            f"{where}: {data.energy.shape[0] if data.energy.ndim else 0} energies "
            f"for {len(data)} structures"
        )
    if data.stress is not None:
        _check_stress(data)
    _check_electronic(data, nan_labels)
    bad = ~np.isfinite(data.energy)
    if nan_labels == "error" and bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{where}: {int(bad.sum())} energies are NaN or inf (first: structure {k}); "
            "set data.nan_labels=mask to train with missing labels masked"
        )
    if bad.all() and not any(np.isfinite(f).any() for f in data.forces):
        raise DataError(f"{where}: no finite energy or force label at all")
    for k in range(len(data)):
        if data.pbc[k].any():
            vol = abs(np.linalg.det(data.cells[k]))
            if vol < 1e-6:
                raise DataError(f"{where}: structure {k} is periodic but its cell has no volume")
    _check_overlaps(data, min_distance)
    return data


def _check_stress(data: Dataset) -> None:
    """Stress labels: (S, 3, 3), symmetric, NaN only as a whole (no label), only for cells
    with a volume."""
    s = data.stress
    if s.shape != (len(data), 3, 3):
        raise DataError(f"{data.source}: stress has shape {s.shape}, expected ({len(data)}, 3, 3)")
    finite = np.isfinite(s)
    for k in np.flatnonzero(finite.any(axis=(1, 2)) & ~finite.all(axis=(1, 2))):
        raise DataError(f"{data.source}: structure {k}: stress is partly NaN or inf: {s[k].tolist()}")
    labelled = finite.all(axis=(1, 2))
    for k in np.flatnonzero(labelled & ~data.pbc.all(axis=1)):
        raise DataError(f"{data.source}: structure {k} has a stress label but is not periodic in "
                        f"all three directions (pbc={data.pbc[k].tolist()}): a stress needs a volume")
    asym = np.abs(s - np.swapaxes(s, 1, 2)).max(axis=(1, 2), initial=0.0, where=labelled[:, None, None])
    scale = np.abs(s).max(axis=(1, 2), initial=0.0, where=labelled[:, None, None])
    for k in np.flatnonzero(labelled & (asym > 1e-6 * np.maximum(scale, 1e-12) + 1e-10)):
        raise DataError(f"{data.source}: structure {k}: the stress is not symmetric "
                        f"({s[k].tolist()}); is it a 3x3 in another layout?")


def charge_sum_tolerance(n_atoms: int) -> float:
    """How far (e) per-atom charge labels may sum from the total charge: rounding of each
    atom's charge (1e-3 e per atom) or 0.01 e, whichever is larger."""
    return max(1e-3 * n_atoms, 0.01)


def _check_electronic(data: Dataset, nan_labels: str) -> None:
    """Total charge and unpaired electrons (inputs: finite, spin >= 0); dipole (S, 3) and
    per-atom charges (n_i,) labels (NaN per ``nan_labels``), which sum to the total charge."""
    where, n = data.source, len(data)
    for name in ("charge", "spin"):
        value = getattr(data, name)
        if np.shape(value) != (n,):
            raise DataError(f"{where}: {name} has shape {np.shape(value)}, expected ({n},)")
        for k in np.flatnonzero(~np.isfinite(value)):
            raise DataError(
                f"{where}: structure {k}: the {'total charge' if name == 'charge' else 'spin'} "
                f"is {value[k]}: it is an input of the model, not a label, and cannot be "
                f"masked (leave the key out to use data.default_{name})")
    for k in np.flatnonzero(data.spin < 0):
        raise DataError(f"{where}: structure {k}: spin {data.spin[k]:g} < 0 (the spin label "
                        "is the number of unpaired electrons 2S; a multiplicity 2S + 1 is read "
                        "from the key 'multiplicity')")
    hint = "set data.nan_labels=mask to train with missing labels masked"
    if data.dipole is not None:
        d = data.dipole
        if d.shape != (n, 3):
            raise DataError(f"{where}: dipole has shape {d.shape}, expected ({n}, 3): "
                            "3 numbers per structure")
        if nan_labels == "error" and not np.isfinite(d).all():
            k = int(np.flatnonzero(~np.isfinite(d).all(axis=1))[0])
            raise DataError(f"{where}: structure {k}: the dipole is {d[k].tolist()} ({hint}, "
                            "or give every structure a dipole)")
    if data.charges is not None:
        if len(data.charges) != n:
            raise DataError(f"{where}: partial charges for {len(data.charges)} structures, "
                            f"expected {n}")
        for k, (z, q) in enumerate(zip(data.numbers, data.charges)):
            if np.shape(q) != (len(z),):
                raise DataError(f"{where}: structure {k}: partial charges have shape "
                                f"{np.shape(q)}, expected ({len(z)},) for {len(z)} atoms")
            finite = np.isfinite(q)
            if nan_labels == "error" and not finite.all():
                raise DataError(f"{where}: structure {k}: partial charges contain NaN or inf "
                                f"({hint}, or give every structure partial charges)")
            if not finite.all():
                continue  # a partly labelled structure: its sum says nothing
            total, expected = float(q.sum()), float(data.charge[k])
            if abs(total - expected) > charge_sum_tolerance(len(z)):
                raise DataError(
                    f"{where}: structure {k}: the partial charges sum to {total:.4g} e but the "
                    f"total charge is {expected:g} e (difference {total - expected:+.3g} e, "
                    f"more than {charge_sum_tolerance(len(z)):g} e for {len(z)} atoms): likely "
                    "the wrong data.charges_key, or a missing total charge (data.charge_key, "
                    "data.default_charge)")


def _check_overlaps(data: Dataset, min_distance: float) -> None:
    for k in range(len(data)):
        pair = find_overlap(data.positions[k], data.cells[k], data.pbc[k], min_distance)
        if pair is not None:
            raise DataError(
                f"{data.source}: structure {k}: atoms {pair[0]} and {pair[1]} overlap "
                f"(closer than {min_distance} Å)"
            )


def find_overlap(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
                 min_distance: float = 0.1) -> tuple[int, int, float] | None:
    """``(i, j, distance Å)`` of the first pair of atoms closer than ``min_distance`` Å
    (periodic images included), or None."""
    from so3krates.neighbours import neighbour_list

    # Search at >= 1 Å: a cell list with a tiny cutoff would have millions of cells.
    nl = neighbour_list(positions, cell, pbc, cutoff=max(min_distance, 1.0))
    if not len(nl.centers):
        return None
    vec = positions[nl.neighbours] - positions[nl.centers] + nl.shifts @ cell
    dist2 = np.einsum("pk,pk->p", vec, vec)
    close = np.flatnonzero(dist2 < min_distance**2)
    if not close.size:
        return None
    p = close[0]
    return int(nl.centers[p]), int(nl.neighbours[p]), float(np.sqrt(dist2[p]))
