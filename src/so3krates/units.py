"""Unit conversion into ASE units (eV, Å, eV/Å).

Datasets declare the units their labels are stored in; readers convert everything to ASE
units on the way in, so nothing downstream ever sees another unit.
"""

from __future__ import annotations

from ase import units as _u

ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "Hartree": _u.Hartree,
    "Ha": _u.Hartree,
    "kcal/mol": _u.kcal / _u.mol,
    "kJ/mol": _u.kJ / _u.mol,
    "Rydberg": _u.Rydberg,
    "Ry": _u.Rydberg,
}
LENGTH_UNITS: dict[str, float] = {
    "Angstrom": 1.0,
    "Å": 1.0,
    "A": 1.0,
    "nm": 10.0,
    "Bohr": _u.Bohr,
    "bohr": _u.Bohr,
}


def energy_factor(unit: str) -> float:
    """Factor that converts an energy given in ``unit`` into eV."""
    try:
        return ENERGY_UNITS[unit]
    except KeyError:
        raise ValueError(
            f"unknown energy unit {unit!r}; known units: {', '.join(ENERGY_UNITS)}"
        ) from None


def length_factor(unit: str) -> float:
    """Factor that converts a length given in ``unit`` into Å."""
    try:
        return LENGTH_UNITS[unit]
    except KeyError:
        raise ValueError(
            f"unknown length unit {unit!r}; known units: {', '.join(LENGTH_UNITS)}"
        ) from None
