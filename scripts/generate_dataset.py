#!/usr/bin/env python
"""Generate the shipped ethanol GFN2-xTB molecular-dynamics dataset.

Runs Langevin molecular dynamics of a single ethanol molecule
(``ase.build.molecule('CH3CH2OH')``) with the GFN2-xTB tight-binding method
as implemented in tblite (through its ASE calculator) at two temperatures,
and writes the sampled frames to an extended-XYZ file together with a JSON
sidecar holding the provenance.

Each extxyz frame carries

* ``energy`` (comment-line key) -- total GFN2-xTB energy in eV,
* ``forces`` (per-atom columns) -- forces in eV/Angstrom,
* ``temperature_K`` (comment-line key) -- thermostat temperature of its run.

Energy and forces are attached through a ``SinglePointCalculator``, so the
ASE extxyz writer stores them under the standard ``energy``/``forces`` keys;
``ase.io.read`` turns them back into a ``SinglePointCalculator`` on reading
(``atoms.get_potential_energy()``, ``atoms.get_forces()``), while
``temperature_K`` ends up in ``atoms.info``.

Usage::

    python scripts/generate_dataset.py [--frames 800] [--output PATH]

The run is deterministic for given seeds (velocity initialisation and the
Langevin noise both use ``numpy.random.default_rng(seed)``) and runs
single-threaded so that the output is bitwise reproducible on one machine.
"""

# ruff: noqa: E402  (thread env vars must be set before importing numpy/tblite)
from __future__ import annotations

import os

# Single-threaded BLAS/OpenMP: multi-threaded reductions in tblite are not
# bitwise reproducible, and chaotic MD amplifies such round-off differences.
# This must happen before numpy/tblite are imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import datetime as _dt
import importlib.metadata
import json
import sys
import time
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase import units
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # pragma: no cover - older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    def thermalize_momenta(atoms: ase.Atoms, temperature_K: float, *, rng=None) -> None:
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)

from tblite.ase import TBLite

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "src" / "so3krates" / "datasets" / "ethanol_gfn2.xyz"

MOLECULE = "CH3CH2OH"
METHOD = "GFN2-xTB"
TEMPERATURES_K = (300.0, 600.0)
SEEDS = (20240301, 20240302)  # one per temperature
TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.01
EQUILIBRATION_STEPS = 2000  # 1 ps, i.e. 10 thermostat relaxation times
SAMPLE_INTERVAL = 10  # MD steps between stored frames (5 fs)
# 1000 frames give ~1.05 MB of extxyz (ASE writes %16.8f columns, ~1050
# bytes per 9-atom frame); 800 frames keep the shipped file below 1 MB.
DEFAULT_FRAMES = 800


def _tblite_version() -> str:
    try:
        return importlib.metadata.version("tblite")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        import tblite

        return str(getattr(tblite, "__version__", "unknown"))


def _split_frames(n_frames: int, n_runs: int) -> list[int]:
    """Split ``n_frames`` as evenly as possible over ``n_runs`` runs."""
    base, rest = divmod(n_frames, n_runs)
    return [base + (1 if i < rest else 0) for i in range(n_runs)]


def run_md(
    temperature_k: float,
    seed: int,
    n_frames: int,
    equilibration_steps: int = EQUILIBRATION_STEPS,
    sample_interval: int = SAMPLE_INTERVAL,
) -> list[ase.Atoms]:
    """Run one Langevin trajectory and return ``n_frames`` labelled frames."""
    rng = np.random.default_rng(seed)
    atoms = molecule(MOLECULE)
    atoms.calc = TBLite(method=METHOD, verbosity=0)

    thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    # Keep the centre of mass fixed (recommended over Langevin(fixcm=True)).
    # The constraint only acts on the dynamics; the stored forces below are
    # the raw calculator forces.
    atoms.set_constraint(FixCom())

    dyn = Langevin(
        atoms,
        timestep=TIMESTEP_FS * units.fs,
        temperature_K=temperature_k,
        friction=FRICTION_PER_FS / units.fs,
        fixcm=False,
        rng=rng,
    )
    dyn.run(equilibration_steps)

    frames: list[ase.Atoms] = []
    for _ in range(n_frames):
        dyn.run(sample_interval)
        # Results of the calculator for the current positions (computed at the
        # end of the last MD step, so no extra evaluation is triggered).
        energy = float(atoms.calc.get_potential_energy(atoms))
        forces = np.array(atoms.calc.get_forces(atoms), dtype=float)
        frame = ase.Atoms(
            symbols=atoms.get_chemical_symbols(),
            positions=atoms.get_positions(),
            pbc=False,
        )
        frame.info["temperature_K"] = float(temperature_k)
        frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
        frames.append(frame)
    return frames


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--frames",
        type=int,
        default=DEFAULT_FRAMES,
        help=f"total number of frames, split evenly over the temperatures "
        f"(default: {DEFAULT_FRAMES})",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="output extxyz file"
    )
    args = parser.parse_args(argv)
    if args.frames < len(TEMPERATURES_K):
        parser.error(f"--frames must be at least {len(TEMPERATURES_K)}")

    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    counts = _split_frames(args.frames, len(TEMPERATURES_K))

    t0 = time.perf_counter()
    frames: list[ase.Atoms] = []
    for temperature_k, seed, count in zip(TEMPERATURES_K, SEEDS, counts):
        t_run = time.perf_counter()
        frames.extend(run_md(temperature_k, seed, count))
        print(
            f"T = {temperature_k:.0f} K: {count} frames in "
            f"{time.perf_counter() - t_run:.1f} s"
        )

    ase.io.write(output, frames, format="extxyz")
    runtime = time.perf_counter() - t0

    try:
        script_path = str(Path(__file__).resolve().relative_to(REPO_ROOT))
    except ValueError:  # pragma: no cover - script copied elsewhere
        script_path = str(Path(__file__).resolve())

    metadata = {
        "file": output.name,
        "generator": script_path,
        "molecule": MOLECULE,
        "n_atoms": len(frames[0]),
        "method": METHOD,
        "program": "tblite",
        "program_version": _tblite_version(),
        "ase_version": ase.__version__,
        "numpy_version": np.__version__,
        "dynamics": "ase.md.langevin.Langevin (fixcm=False, FixCom constraint)",
        "temperatures_K": list(TEMPERATURES_K),
        "frames_per_temperature": counts,
        "seeds": list(SEEDS),
        "timestep_fs": TIMESTEP_FS,
        "friction_per_fs": FRICTION_PER_FS,
        "equilibration_steps": EQUILIBRATION_STEPS,
        "sampling_interval_steps": SAMPLE_INTERVAL,
        "n_frames": len(frames),
        "units": {"energy": "eV", "forces": "eV/Angstrom", "positions": "Angstrom"},
        "extxyz_keys": {
            "energy": "per-frame total energy (eV), read back as SinglePointCalculator",
            "forces": "per-atom forces (eV/Angstrom), read back as SinglePointCalculator",
            "temperature_K": "per-frame thermostat temperature (K), atoms.info",
        },
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runtime_s": round(runtime, 1),
    }
    cli_args = sys.argv[1:] if argv is None else list(argv)
    metadata["command"] = " ".join(["python", script_path, *cli_args])
    sidecar = output.with_suffix(".json")
    sidecar.write_text(json.dumps(metadata, indent=2) + "\n")
    print(f"wrote {len(frames)} frames to {output} ({output.stat().st_size} bytes)")
    print(f"wrote provenance to {sidecar}")


if __name__ == "__main__":
    main()
