"""Shared helpers of the reader tests: reference-data paths (skipped when absent), small
synthetic sGDML files and periodic frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"
KCAL_MOL = units.kcal / units.mol
ETHANOL_Z = [6, 6, 8, 1, 1, 1, 1, 1, 1]


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"reference data {path} is not available (see /work/shared/data/README.md)")
    return path


def random_molecule(rng: np.random.Generator, n_atoms: int, spacing: float = 1.5) -> np.ndarray:
    """Positions on a jittered cubic grid: no two atoms closer than ``spacing - 0.4`` Å."""
    grid = np.array([(i, j, k) for i in range(4) for j in range(4) for k in range(4)], float)
    idx = rng.choice(len(grid), size=n_atoms, replace=False)
    return grid[idx] * spacing + rng.uniform(-0.2, 0.2, size=(n_atoms, 3))


def write_sgdml(path: Path, n_struct: int = 4, n_atoms: int = 3, seed: int = 0, **override):
    rng = np.random.default_rng(seed)
    arrays = {
        "R": np.stack([random_molecule(rng, n_atoms) for _ in range(n_struct)]),
        "z": np.array([8, 1, 1][:n_atoms] + [6] * max(0, n_atoms - 3)),
        "E": rng.normal(-1000.0, 5.0, size=(n_struct, 1)),
        "F": rng.normal(0.0, 10.0, size=(n_struct, n_atoms, 3)),
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def periodic_frames(n: int = 3, seed: int = 4) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    cell = np.array([[5.0, 0.0, 0.0], [0.5, 6.0, 0.0], [0.3, 0.2, 7.0]])
    frames = []
    for k in range(n):
        frac = np.array([[0.1, 0.1, 0.1], [0.5, 0.5, 0.5], [0.2, 0.7, 0.4]])
        frac += rng.uniform(-0.02, 0.02, size=frac.shape)
        a = Atoms("SiO2", scaled_positions=frac, cell=cell, pbc=[True, True, k % 2 == 0])
        a.calc = SinglePointCalculator(
            a, energy=-20.0 + 0.1 * k, forces=rng.normal(size=(3, 3))
        )
        frames.append(a)
    return frames
