#!/usr/bin/env python
"""Generate the shipped periodic copper (EMT) dataset with stress labels.

Builds a set of fully periodic fcc copper structures, labels them with ASE's
effective-medium-theory calculator (``ase.calculators.emt.EMT``) and writes
them to an extended-XYZ file together with a JSON sidecar holding the
provenance.  The structures are

* ``bulk_volume`` -- perfect fcc cells (1-atom primitive, 8-atom 2x2x2
  primitive, 4-atom conventional, 32-atom 2x2x2 and 108-atom 3x3x3
  conventional) under isotropic linear strains of -6 % .. +6 %,
* ``elastic`` -- perfect 1-, 4-, 8- and 32-atom cells under random symmetric
  strains (each of the six independent components uniform in +-3 %),
* ``rattled`` -- 4-, 8-, 32- and 108-atom cells at random isotropic strains
  (+-2 %) with Gaussian displacements (sigma 0.05 .. 0.15 Angstrom),
* ``md_300K`` / ``md_900K`` -- snapshots (every 20th 2-fs step) of short
  Langevin runs of the 32-atom cell,
* ``vacancy`` -- the 32-atom cell with one atom removed (31 atoms), at random
  isotropic strains (+-1 %), rattled,
* ``surface_100`` / ``surface_111`` -- 2x2x6 (100) and (111) slabs with 6
  Angstrom of vacuum on each side, periodic in all three directions (as DFT
  codes treat slabs), with small in-plane strains (+-1 %), rattled.

All cells except the 108-atom ones are narrower than 10 Angstrom (twice a
5 Angstrom cutoff), so a model sees atoms interacting with several periodic
images of themselves.

Each extxyz frame carries

* ``energy`` (comment-line key) -- total EMT energy in eV,
* ``forces`` (per-atom columns) -- forces in eV/Angstrom,
* ``stress`` (comment-line key) -- the full 3x3 stress in eV/Angstrom^3 with
  ASE's sign convention (``atoms.get_stress(voigt=False)``: compressed cells
  have negative diagonal stress), written as 9 numbers in row-major order,
  ``stress="xx xy xz yx yy yz zx zy zz"``,
* ``config_type`` (comment-line key) -- one of the labels above.

Energy, forces and stress are attached through a ``SinglePointCalculator``,
so ``ase.io.read`` turns them back into a ``SinglePointCalculator``
(``atoms.get_potential_energy()``, ``atoms.get_forces()``,
``atoms.get_stress(voigt=False)``; ``atoms.calc.results["stress"]`` holds the
Voigt 6-vector ``xx yy zz yz xz xy``), while ``config_type`` ends up in
``atoms.info``.

Usage::

    python scripts/generate_materials_dataset.py [--seed 20240610] [--output PATH]

The run is deterministic for a given seed (one ``numpy.random.default_rng``
stream drives strains, displacements, velocity initialisation and the
Langevin noise) and runs single-threaded, so that the output is bitwise
reproducible on one machine.
"""

# ruff: noqa: E402  (thread env vars must be set before importing numpy)
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import collections
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase import units
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, thermalize_momenta  # ASE >= 3.29 (pinned)


REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "src" / "so3krates" / "datasets" / "cu_emt.xyz"
DEFAULT_SEED = 20240610

ELEMENT = "Cu"
VOLUME_STRAINS = np.linspace(-0.06, 0.06, 13)  # isotropic linear strains, 1 % steps
ELASTIC_MAX_STRAIN = 0.03
RATTLE_SIGMA_RANGE = (0.05, 0.15)  # Angstrom
SLAB_SIZE = (2, 2, 6)
SLAB_VACUUM = 6.0  # Angstrom on each side; EMT's Cu cutoff is ~5.9 Angstrom

MD_TEMPERATURES_K = (300.0, 900.0)
MD_STRAINS = (0.0, 0.01)  # one run per (temperature, isotropic strain)
MD_TIMESTEP_FS = 2.0
MD_FRICTION_PER_FS = 0.02
MD_WARMUP_STEPS = 100  # 200 fs, four thermostat relaxation times
MD_SAMPLE_INTERVAL = 20  # MD steps between stored frames (40 fs)
MD_FRAMES_PER_RUN = 15  # 600 fs sampled per run


def emt_lattice_constant() -> float:
    """EMT equilibrium lattice constant of fcc Cu (minimum of a cubic fit)."""
    a_grid = np.linspace(3.50, 3.70, 21)
    energies = []
    for a in a_grid:
        atoms = bulk(ELEMENT, "fcc", a=a)
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
    coeffs = np.polyfit(a_grid, energies, 3)
    roots = np.roots(np.polyder(coeffs))
    roots = roots[np.isreal(roots)].real
    roots = roots[(roots > a_grid[0]) & (roots < a_grid[-1])]
    (a0,) = roots[np.polyval(np.polyder(coeffs, 2), roots) > 0]
    return float(a0)


def fcc_cell(kind: str, a: float) -> ase.Atoms:
    """Perfect fcc Cu cell: ``prim1``, ``prim8``, ``conv4``, ``conv32``, ``conv108``."""
    if kind == "prim1":
        return bulk(ELEMENT, "fcc", a=a)
    if kind == "prim8":
        return bulk(ELEMENT, "fcc", a=a).repeat((2, 2, 2))
    if kind == "conv4":
        return bulk(ELEMENT, "fcc", a=a, cubic=True)
    if kind == "conv32":
        return bulk(ELEMENT, "fcc", a=a, cubic=True).repeat((2, 2, 2))
    if kind == "conv108":
        return bulk(ELEMENT, "fcc", a=a, cubic=True).repeat((3, 3, 3))
    raise ValueError(f"unknown cell kind {kind!r}")


def strained(atoms: ase.Atoms, strain: np.ndarray) -> ase.Atoms:
    """Copy of ``atoms`` with cell and positions deformed by ``I + strain``."""
    out = atoms.copy()
    deformation = np.eye(3) + np.asarray(strain, dtype=float)
    out.set_cell(out.cell[:] @ deformation.T, scale_atoms=True)
    return out


def random_symmetric_strain(rng: np.random.Generator, max_strain: float) -> np.ndarray:
    """Symmetric strain with six independent components uniform in +-max_strain."""
    voigt = rng.uniform(-max_strain, max_strain, size=6)
    xx, yy, zz, yz, xz, xy = voigt
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def rattled(atoms: ase.Atoms, rng: np.random.Generator) -> ase.Atoms:
    """Copy with Gaussian displacements, sigma drawn from RATTLE_SIGMA_RANGE."""
    out = atoms.copy()
    sigma = rng.uniform(*RATTLE_SIGMA_RANGE)
    out.positions += rng.normal(scale=sigma, size=out.positions.shape)
    out.wrap()
    return out


def label(atoms: ase.Atoms, config_type: str) -> ase.Atoms:
    """Fresh frame labelled by EMT energy, forces and full 3x3 stress."""
    frame = ase.Atoms(
        numbers=atoms.numbers,
        positions=atoms.positions,
        cell=atoms.cell[:],
        pbc=True,
    )
    frame.calc = EMT()
    energy = float(frame.get_potential_energy())
    forces = np.array(frame.get_forces(), dtype=float)
    stress = np.array(frame.get_stress(voigt=False), dtype=float)
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces, stress=stress)
    frame.info["config_type"] = config_type
    return frame


def bulk_volume_frames(a0: float) -> list[ase.Atoms]:
    frames = []
    plan = {
        "prim1": VOLUME_STRAINS,
        "conv4": VOLUME_STRAINS,
        "prim8": VOLUME_STRAINS[::2],
        "conv32": VOLUME_STRAINS[::2],
        "conv108": VOLUME_STRAINS[::3],
    }
    for kind, strains in plan.items():
        for eps in strains:
            frames.append(label(strained(fcc_cell(kind, a0), eps * np.eye(3)), "bulk_volume"))
    return frames


def elastic_frames(a0: float, rng: np.random.Generator, per_kind: int = 12) -> list[ase.Atoms]:
    frames = []
    for kind in ("prim1", "conv4", "prim8", "conv32"):
        for _ in range(per_kind):
            strain = random_symmetric_strain(rng, ELASTIC_MAX_STRAIN)
            frames.append(label(strained(fcc_cell(kind, a0), strain), "elastic"))
    return frames


def rattled_frames(a0: float, rng: np.random.Generator) -> list[ase.Atoms]:
    frames = []
    for kind, count in (("conv4", 8), ("prim8", 8), ("conv32", 28), ("conv108", 4)):
        for _ in range(count):
            eps = rng.uniform(-0.02, 0.02)
            atoms = rattled(strained(fcc_cell(kind, a0), eps * np.eye(3)), rng)
            frames.append(label(atoms, "rattled"))
    return frames


def md_frames(a0: float, rng: np.random.Generator) -> list[ase.Atoms]:
    frames = []
    for temperature_k in MD_TEMPERATURES_K:
        config_type = f"md_{temperature_k:.0f}K"
        for eps in MD_STRAINS:
            atoms = strained(fcc_cell("conv32", a0), eps * np.eye(3))
            atoms.calc = EMT()
            thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)
            Stationary(atoms)
            # Keep the centre of mass fixed (recommended over Langevin(fixcm=True));
            # the stored forces are the raw calculator forces of a fresh frame.
            atoms.set_constraint(FixCom())
            dyn = Langevin(
                atoms,
                timestep=MD_TIMESTEP_FS * units.fs,
                temperature_K=temperature_k,
                friction=MD_FRICTION_PER_FS / units.fs,
                fixcm=False,
                rng=rng,
            )
            dyn.run(MD_WARMUP_STEPS)
            for _ in range(MD_FRAMES_PER_RUN):
                dyn.run(MD_SAMPLE_INTERVAL)
                snapshot = atoms.copy()
                snapshot.set_constraint()
                snapshot.wrap()
                frames.append(label(snapshot, config_type))
    return frames


def vacancy_frames(a0: float, rng: np.random.Generator, count: int = 20) -> list[ase.Atoms]:
    frames = []
    for _ in range(count):
        eps = rng.uniform(-0.01, 0.01)
        atoms = strained(fcc_cell("conv32", a0), eps * np.eye(3))
        del atoms[int(rng.integers(len(atoms)))]
        frames.append(label(rattled(atoms, rng), "vacancy"))
    return frames


def surface_frames(a0: float, rng: np.random.Generator, count: int = 12) -> list[ase.Atoms]:
    frames = []
    for builder, config_type in ((fcc100, "surface_100"), (fcc111, "surface_111")):
        slab = builder(ELEMENT, size=SLAB_SIZE, a=a0, vacuum=SLAB_VACUUM, periodic=True)
        for _ in range(count):
            strain = np.zeros((3, 3))
            strain[:2, :2] = random_symmetric_strain(rng, 0.01)[:2, :2]
            frames.append(label(rattled(strained(slab, strain), rng), config_type))
    return frames


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"RNG seed (default: {DEFAULT_SEED})"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="output extxyz file"
    )
    args = parser.parse_args(argv)
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    a0 = emt_lattice_constant()
    print(f"EMT lattice constant of fcc Cu: {a0:.6f} Angstrom")

    frames: list[ase.Atoms] = []
    for name, build in (
        ("bulk_volume", lambda: bulk_volume_frames(a0)),
        ("elastic", lambda: elastic_frames(a0, rng)),
        ("rattled", lambda: rattled_frames(a0, rng)),
        ("md", lambda: md_frames(a0, rng)),
        ("vacancy", lambda: vacancy_frames(a0, rng)),
        ("surface", lambda: surface_frames(a0, rng)),
    ):
        t_part = time.perf_counter()
        part = build()
        frames.extend(part)
        print(f"{name}: {len(part)} frames in {time.perf_counter() - t_part:.1f} s")

    ase.io.write(output, frames, format="extxyz")
    runtime = time.perf_counter() - t0

    # Check that energy, forces and stress survive the round trip.
    back = ase.io.read(output, index=":", format="extxyz")
    assert len(back) == len(frames)
    for ref, got in zip(frames, back):
        assert got.info["config_type"] == ref.info["config_type"]
        np.testing.assert_allclose(
            got.get_stress(voigt=False), ref.get_stress(voigt=False), rtol=1e-10, atol=0
        )
        np.testing.assert_allclose(
            got.get_potential_energy(), ref.get_potential_energy(), rtol=1e-10, atol=0
        )
        np.testing.assert_allclose(got.get_forces(), ref.get_forces(), rtol=0, atol=1e-8)

    try:
        script_path = str(Path(__file__).resolve().relative_to(REPO_ROOT))
    except ValueError:  # pragma: no cover - script copied elsewhere
        script_path = str(Path(__file__).resolve())

    counts = collections.Counter(f.info["config_type"] for f in frames)
    n_atoms = [len(f) for f in frames]
    metadata = {
        "file": output.name,
        "generator": script_path,
        "element": ELEMENT,
        "calculator": "ase.calculators.emt.EMT (effective medium theory, ASE defaults)",
        "ase_version": ase.__version__,
        "numpy_version": np.__version__,
        "seed": args.seed,
        "emt_lattice_constant_angstrom": round(a0, 6),
        "n_frames": len(frames),
        "n_atoms_min": min(n_atoms),
        "n_atoms_max": max(n_atoms),
        "n_atoms_total": sum(n_atoms),
        "counts": dict(counts),
        "pbc": "True in all three directions for every frame (slabs included)",
        "construction": {
            "bulk_volume": "perfect 1/4/8/32/108-atom fcc cells, isotropic linear strain "
            "-6 %..+6 %",
            "elastic": "perfect 1/4/8/32-atom cells, random symmetric strain, "
            f"components uniform in +-{100 * ELASTIC_MAX_STRAIN:.0f} %",
            "rattled": "4/8/32/108-atom cells, isotropic strain +-2 %, Gaussian "
            f"displacements sigma {RATTLE_SIGMA_RANGE[0]}..{RATTLE_SIGMA_RANGE[1]} Angstrom",
            "md": f"Langevin (ase.md.langevin, FixCom) of the 32-atom cell at "
            f"{list(MD_TEMPERATURES_K)} K and isotropic strains {list(MD_STRAINS)}, "
            f"timestep {MD_TIMESTEP_FS} fs, friction {MD_FRICTION_PER_FS}/fs, "
            f"{MD_WARMUP_STEPS} warm-up steps, then every {MD_SAMPLE_INTERVAL}th step, "
            f"{MD_FRAMES_PER_RUN} frames per run",
            "vacancy": "32-atom cell minus one atom, isotropic strain +-1 %, rattled",
            "surface": f"{SLAB_SIZE} fcc100/fcc111 slabs, {SLAB_VACUUM} Angstrom vacuum "
            "per side, periodic cell, in-plane strain +-1 %, rattled",
        },
        "units": {
            "energy": "eV",
            "forces": "eV/Angstrom",
            "stress": "eV/Angstrom^3",
            "positions": "Angstrom",
        },
        "stress_convention": "ASE sign (atoms.get_stress(voigt=False)); compression "
        "gives negative diagonal stress; stress = (1/V) dE/d(strain)",
        "extxyz_keys": {
            "energy": "per-frame total energy (eV), read back as SinglePointCalculator",
            "forces": "per-atom forces (eV/Angstrom), read back as SinglePointCalculator",
            "stress": "per-frame 3x3 stress (eV/Angstrom^3) as 9 numbers in row-major "
            "order, read back as SinglePointCalculator (results['stress'] is Voigt "
            "xx yy zz yz xz xy)",
            "config_type": "per-frame structure class, atoms.info",
        },
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runtime_s": round(runtime, 1),
    }
    cli_args = sys.argv[1:] if argv is None else list(argv)
    metadata["command"] = " ".join(["python", script_path, *cli_args])
    sidecar = output.with_suffix(".json")
    sidecar.write_text(json.dumps(metadata, indent=2) + "\n")
    print(f"counts: {dict(counts)}")
    print(f"wrote {len(frames)} frames to {output} ({output.stat().st_size} bytes)")
    print(f"wrote provenance to {sidecar}")


if __name__ == "__main__":
    main()
