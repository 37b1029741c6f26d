"""Equation of state: E(V) under isotropic scaling of a periodic cell, Birch–Murnaghan fit.

The cell and the atoms' fractional coordinates are scaled together (optionally relaxing the
atoms at each fixed cell, for structures whose internal coordinates change with volume);
``ase.eos.EquationOfState`` fits the third-order Birch–Murnaghan form: V0, E0, B0 (and the
fitted curve) are reported; B0 in GPa.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import units

from so3krates.md.relax import relax_ase


def equation_of_state(atoms, calculator, strain: float = 0.06, points: int = 11,
                      relax_atoms: bool = False, fmax: float = 0.01) -> dict:
    """E(V) of ``atoms`` (periodic in all directions) scaled to volumes within
    ``(1 ± strain)³`` of its own (lattice parameters ``± strain``), and the Birch–Murnaghan
    fit: ``volumes_A3``, ``energies_eV``, ``v0_A3``, ``e0_eV``, ``b0_GPa``, and ``a0_scale``
    (V0 / V)^(1/3), the factor that takes the input cell to the fitted equilibrium."""
    from ase.eos import EquationOfState

    if not np.all(atoms.pbc):
        raise ValueError("an equation of state needs a cell periodic in all three directions")
    if points < 5:
        raise ValueError("an equation-of-state fit needs at least 5 points")
    cell0 = atoms.cell[:].copy()
    volumes, energies = [], []
    for s in np.linspace(1.0 - strain, 1.0 + strain, points):
        scaled = atoms.copy()
        scaled.set_cell(cell0 * s, scale_atoms=True)
        if relax_atoms:
            scaled = relax_ase(scaled, calculator, "BFGS", fmax=fmax, steps=500).atoms
        scaled.calc = calculator
        volumes.append(scaled.get_volume())
        energies.append(scaled.get_potential_energy())
    fit = EquationOfState(volumes, energies, eos="birchmurnaghan")
    v0, e0, b0 = fit.fit()
    return {
        "volumes_A3": [float(v) for v in volumes],
        "energies_eV": [float(e) for e in energies],
        "v0_A3": float(v0),
        "e0_eV": float(e0),
        "b0_GPa": float(b0 / units.GPa),
        "a0_scale": float((v0 / atoms.get_volume()) ** (1.0 / 3.0)),
        "n_atoms": len(atoms),
        "eos": "birchmurnaghan",
    }


def plot_eos(result: dict, path: str | Path) -> Path:
    """E(V) points and the Birch–Murnaghan curve (energies per atom)."""
    from so3krates.plotting import pyplot, save_figure

    plt = pyplot()
    n = result["n_atoms"]
    v = np.asarray(result["volumes_A3"])
    e = np.asarray(result["energies_eV"])
    v0, e0, b0 = result["v0_A3"], result["e0_eV"], result["b0_GPa"] * units.GPa
    fine = np.linspace(v.min(), v.max(), 200)
    bp = _bm_b0_prime(v, e, v0, e0, b0)
    eta = (v0 / fine) ** (2.0 / 3.0)
    curve = e0 + 9.0 * v0 * b0 / 16.0 * ((eta - 1) ** 3 * bp + (eta - 1) ** 2 * (6 - 4 * eta))
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.plot(v / n, e / n, "o", label="model")
    ax.plot(fine / n, curve / n, "-", label="Birch–Murnaghan")
    ax.axvline(v0 / n, color="0.6", lw=1)
    ax.set_xlabel("volume / Å³ per atom")
    ax.set_ylabel("energy / eV per atom")
    ax.set_title(f"V0 = {v0 / n:.3f} Å³/atom, B0 = {result['b0_GPa']:.1f} GPa")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _bm_b0_prime(v, e, v0, e0, b0) -> float:
    """B0' by least squares with V0, E0, B0 fixed (for the plotted curve only)."""
    eta = (v0 / v) ** (2.0 / 3.0)
    a = 9.0 * v0 * b0 / 16.0
    basis = a * (eta - 1) ** 3
    rest = e - e0 - a * (eta - 1) ** 2 * (6 - 4 * eta)
    return float(np.dot(basis, rest) / max(np.dot(basis, basis), 1e-300))
