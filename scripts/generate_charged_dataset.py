#!/usr/bin/env python
"""Generate the shipped charged/neutral carbon-chain GFN2-xTB dataset.

A small dataset for the long-range terms (total charge and spin, learned
partial charges and electrostatics), modelled on the C10H2 / C10H3+ carbon
chains of the fourth-generation HDNNP paper (Ko et al., Nat. Commun. 12, 398
(2021)), but labelled with GFN2-xTB (tblite) instead of DFT.

The molecules are a linear polyyne and its protonated form, about 13.5
Angstrom long (more than twice the default 5 Angstrom cutoff):

* ``C10H2`` -- H-(C#C)5-H, neutral closed shell (charge 0, spin 0),
* ``C10H3+`` -- the same chain protonated at one end, H-(C#C)4-C#C-CH2+
  (charge +1, spin 0).  The extra proton changes the partial charges of the
  atoms at the *other* end of the conjugated chain, some 12 Angstrom away
  (far-end carbon -0.08 e in C10H2, 0.00 e in C10H3+ at the optimised
  geometries), which a model with a 5 Angstrom cutoff cannot see.

Geometries come from Langevin molecular dynamics of both molecules at 300 K
and 500 K (config types ``C10H2_md`` and ``C10H3+_md``).  Every MD geometry is
also labelled once more with one electron removed from, or added to, the same
atoms (vertical ionisation / reduction, no relaxation):

* ``C10H2+_vertical`` -- the radical cation C10H2+ (charge +1, spin 1) at
  every ``C10H2_md`` geometry,
* ``C10H3_vertical`` -- the neutral radical C10H3 (charge 0, spin 1) at every
  ``C10H3+_md`` geometry.

So each geometry occurs twice, with the same atoms and positions but a
different total charge and number of unpaired electrons (linked by
``geometry_id``): a model that is not told the charge and spin cannot fit
both labels.  The four (charge, spin) combinations (0, 0), (+1, 0), (+1, 1)
and (0, 1) all occur, so charge and spin are not confounded.

Each extxyz frame carries

* ``energy`` (comment-line key) -- total GFN2-xTB energy in eV,
* ``forces`` (per-atom columns) -- forces in eV/Angstrom,
* ``dipole`` (comment-line key, 3 numbers) -- tblite's dipole moment in
  e*Angstrom (ASE's unit: tblite's ASE calculator multiplies the atomic-unit
  dipole by ``ase.units.Bohr``, although its docstring says Debye), taken
  about the Cartesian origin, which is the centre of mass of every frame (the
  MD keeps the centre of mass fixed at the origin).  It includes GFN2-xTB's
  atomic dipoles, so it differs slightly from ``sum_i q_i r_i``,
* ``partial_charges`` (per-atom column) -- tblite's Mulliken partial charges
  in e; they sum to ``charge``,
* ``charge`` (comment-line key, int) -- total charge in e,
* ``spin`` (comment-line key, int) -- number of unpaired electrons
  (multiplicity - 1),
* ``config_type`` (comment-line key) -- one of the four labels above,
* ``geometry_id`` (comment-line key, int) -- index of the geometry; the two
  frames sharing it have identical positions,
* ``temperature_K`` (comment-line key) -- thermostat temperature of the MD run
  that sampled the geometry.

Energy, forces and dipole are attached through a ``SinglePointCalculator``;
``ase.io.read`` turns them back into one (``atoms.get_potential_energy()``,
``atoms.get_forces()``, ``atoms.get_dipole_moment()``; note that ASE moves
``dipole`` out of ``atoms.info`` into ``atoms.calc.results`` on reading).
``partial_charges`` stays in ``atoms.arrays`` and the other keys in
``atoms.info``.  The per-atom charges are deliberately *not* called
``charges``: ASE's extxyz writer renames a ``charges`` array to a column
``charge`` (which would share its name with the total-charge key), and its
reader moves it into the calculator results (``atoms.get_charges()``), not
into ``atoms.arrays`` or the initial charges.

Usage::

    python scripts/generate_charged_dataset.py [--frames-per-run 50] [--output PATH]

The run is deterministic for given seeds (velocity initialisation and the
Langevin noise use ``numpy.random.default_rng(seed)``, one seed per MD run;
the vertical frames use a fresh calculator each) and runs single-threaded so
that the output is bitwise reproducible on one machine.
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
import collections
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
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, thermalize_momenta  # ASE >= 3.29
from ase.optimize import BFGS
from tblite.ase import TBLite

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "src" / "so3krates" / "datasets" / "charged_gfn2.xyz"

METHOD = "GFN2-xTB"
N_CARBON = 10
# name -> (protonated end, charge, unpaired electrons) of the MD molecules, and
# the (name, charge, unpaired electrons) of their vertical partner.
MD_SPECIES = {
    "C10H2": (False, 0, 0),
    "C10H3+": (True, 1, 0),
}
VERTICAL_PARTNER = {
    "C10H2": ("C10H2+", 1, 1),
    "C10H3+": ("C10H3", 0, 1),
}
TEMPERATURES_K = (300.0, 500.0)
# one seed per (species, temperature), in the order of the loops below
SEEDS = {
    ("C10H2", 300.0): 20241201,
    ("C10H2", 500.0): 20241202,
    ("C10H3+", 300.0): 20241203,
    ("C10H3+", 500.0): 20241204,
}
TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.01
EQUILIBRATION_STEPS = 2000  # 1 ps, i.e. 10 thermostat relaxation times
SAMPLE_INTERVAL = 40  # MD steps between stored frames (20 fs)
# 50 frames per run: 4 runs x 50 MD frames + as many vertical frames = 400
# frames of 12-13 atoms, ~0.7 MB of extxyz.
DEFAULT_FRAMES_PER_RUN = 50
OPT_FMAX = 0.01  # eV/Angstrom, BFGS pre-optimisation of the starting chains


def _tblite_version() -> str:
    try:
        return importlib.metadata.version("tblite")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        import tblite

        return str(getattr(tblite, "__version__", "unknown"))


def _calculator(charge: int, spin: int) -> TBLite:
    return TBLite(method=METHOD, charge=charge, multiplicity=spin + 1, verbosity=0)


def carbon_chain(protonated: bool) -> ase.Atoms:
    """Idealised linear H-(C#C)5-H along z (or its CH2+-terminated form)."""
    z = [0.0]
    for i in range(N_CARBON - 1):
        z.append(z[-1] + (1.21 if i % 2 == 0 else 1.35))  # triple / single bonds
    symbols = ["C"] * N_CARBON + ["H"]
    positions = [[0.0, 0.0, zc] for zc in z] + [[0.0, 0.0, z[0] - 1.06]]
    if protonated:  # sp2 CH2 end in the xz plane
        symbols += ["H", "H"]
        positions += [[0.94, 0.0, z[-1] + 0.54], [-0.94, 0.0, z[-1] + 0.54]]
    else:
        symbols += ["H"]
        positions += [[0.0, 0.0, z[-1] + 1.06]]
    return ase.Atoms(symbols=symbols, positions=positions, pbc=False)


def optimised_chain(name: str) -> ase.Atoms:
    """GFN2-xTB minimum of the MD molecule ``name``, centre of mass at the origin."""
    protonated, charge, spin = MD_SPECIES[name]
    atoms = carbon_chain(protonated)
    atoms.calc = _calculator(charge, spin)
    BFGS(atoms, logfile=None).run(fmax=OPT_FMAX, steps=500)
    atoms.calc = None
    atoms.positions -= atoms.get_center_of_mass()
    return atoms


def labelled_frame(
    atoms: ase.Atoms,
    calc: TBLite,
    charge: int,
    spin: int,
    config_type: str,
    geometry_id: int,
    temperature_k: float,
) -> ase.Atoms:
    """Fresh frame with ``calc``'s results for ``atoms`` (computed if needed)."""
    results = {
        name: np.array(calc.get_property(name, atoms), dtype=float)
        for name in ("energy", "forces", "dipole", "charges")
    }
    frame = ase.Atoms(
        symbols=atoms.get_chemical_symbols(), positions=atoms.get_positions(), pbc=False
    )
    frame.info["charge"] = int(charge)
    frame.info["spin"] = int(spin)
    frame.info["config_type"] = config_type
    frame.info["geometry_id"] = int(geometry_id)
    frame.info["temperature_K"] = float(temperature_k)
    frame.arrays["partial_charges"] = results["charges"]
    frame.calc = SinglePointCalculator(
        frame,
        energy=float(results["energy"]),
        forces=results["forces"],
        dipole=results["dipole"],
    )
    return frame


def run_md(
    name: str,
    start: ase.Atoms,
    temperature_k: float,
    seed: int,
    n_frames: int,
    first_geometry_id: int,
) -> list[ase.Atoms]:
    """One Langevin trajectory of ``name``; ``n_frames`` labelled frames."""
    _, charge, spin = MD_SPECIES[name]
    rng = np.random.default_rng(seed)
    atoms = start.copy()
    atoms.calc = _calculator(charge, spin)

    thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)
    Stationary(atoms)
    # No ZeroRotation: the chain is (nearly) linear, its moment of inertia
    # about the axis ~0.  Rotation is harmless and thermalised anyway.
    # Keep the centre of mass fixed at the origin (dipoles of charged frames
    # are taken about it); the stored forces are the raw calculator forces.
    atoms.set_constraint(FixCom())

    dyn = Langevin(
        atoms,
        timestep=TIMESTEP_FS * units.fs,
        temperature_K=temperature_k,
        friction=FRICTION_PER_FS / units.fs,
        fixcm=False,
        rng=rng,
    )
    dyn.run(EQUILIBRATION_STEPS)

    frames: list[ase.Atoms] = []
    for i in range(n_frames):
        dyn.run(SAMPLE_INTERVAL)
        frames.append(
            labelled_frame(
                atoms,
                atoms.calc,
                charge,
                spin,
                f"{name}_md",
                first_geometry_id + i,
                temperature_k,
            )
        )
    return frames


def vertical_frames(md_frames: list[ase.Atoms], name: str) -> list[ase.Atoms]:
    """The MD frames of ``name`` relabelled with the partner's charge and spin."""
    partner, charge, spin = VERTICAL_PARTNER[name]
    out = []
    for md in md_frames:
        atoms = ase.Atoms(
            symbols=md.get_chemical_symbols(), positions=md.get_positions(), pbc=False
        )
        calc = _calculator(charge, spin)  # fresh: labels do not depend on the order
        out.append(
            labelled_frame(
                atoms,
                calc,
                charge,
                spin,
                f"{partner}_vertical",
                md.info["geometry_id"],
                md.info["temperature_K"],
            )
        )
    return out


def check_round_trip(path: Path, frames: list[ase.Atoms]) -> dict:
    """Read ``path`` back and compare with ``frames``; return a few statistics."""
    back = ase.io.read(path, index=":", format="extxyz")
    assert len(back) == len(frames), (len(back), len(frames))
    max_sum_dev = 0.0
    for ref, got in zip(frames, back):
        for key in ("charge", "spin", "config_type", "geometry_id", "temperature_K"):
            assert got.info[key] == ref.info[key], (key, got.info[key], ref.info[key])
        assert "partial_charges" in got.arrays and "charges" not in got.arrays
        assert not got.get_initial_charges().any()
        np.testing.assert_allclose(
            got.get_potential_energy(), ref.get_potential_energy(), rtol=1e-10, atol=0
        )
        np.testing.assert_allclose(got.get_forces(), ref.get_forces(), rtol=0, atol=1e-8)
        np.testing.assert_allclose(
            got.calc.results["dipole"], ref.calc.results["dipole"], rtol=0, atol=1e-8
        )
        np.testing.assert_allclose(
            got.arrays["partial_charges"], ref.arrays["partial_charges"], rtol=0, atol=1e-8
        )
        dev = abs(float(got.arrays["partial_charges"].sum()) - got.info["charge"])
        max_sum_dev = max(max_sum_dev, dev)
    assert max_sum_dev < 1e-6, max_sum_dev
    # The two frames of a geometry have identical (written) positions.
    by_id = collections.defaultdict(list)
    for atoms in back:
        by_id[atoms.info["geometry_id"]].append(atoms)
    for pair in by_id.values():
        assert len(pair) == 2
        a, b = pair
        assert (a.numbers == b.numbers).all()
        assert (a.positions == b.positions).all()
        assert (a.info["charge"], a.info["spin"]) != (b.info["charge"], b.info["spin"])
    com = max(float(np.linalg.norm(a.get_center_of_mass())) for a in back)
    return {"max_abs_charge_sum_error_e": float(max_sum_dev), "max_center_of_mass_norm_A": com}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--frames-per-run",
        type=int,
        default=DEFAULT_FRAMES_PER_RUN,
        help=f"MD frames per (molecule, temperature) run; each also gets a vertical "
        f"partner (default: {DEFAULT_FRAMES_PER_RUN})",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="output extxyz file"
    )
    args = parser.parse_args(argv)
    if args.frames_per_run < 1:
        parser.error("--frames-per-run must be at least 1")

    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    md: dict[str, list[ase.Atoms]] = {}
    geometry_id = 0
    for name in MD_SPECIES:
        start = optimised_chain(name)
        md[name] = []
        for temperature_k in TEMPERATURES_K:
            t_run = time.perf_counter()
            part = run_md(
                name,
                start,
                temperature_k,
                SEEDS[(name, temperature_k)],
                args.frames_per_run,
                geometry_id,
            )
            geometry_id += len(part)
            md[name].extend(part)
            print(
                f"{name} MD at {temperature_k:.0f} K: {len(part)} frames in "
                f"{time.perf_counter() - t_run:.1f} s"
            )
    frames: list[ase.Atoms] = []
    for name in MD_SPECIES:
        frames.extend(md[name])
    for name in MD_SPECIES:
        t_run = time.perf_counter()
        part = vertical_frames(md[name], name)
        frames.extend(part)
        print(
            f"{VERTICAL_PARTNER[name][0]} vertical: {len(part)} frames in "
            f"{time.perf_counter() - t_run:.1f} s"
        )

    ase.io.write(output, frames, format="extxyz")
    runtime = time.perf_counter() - t0
    stats = check_round_trip(output, frames)

    try:
        script_path = str(Path(__file__).resolve().relative_to(REPO_ROOT))
    except ValueError:  # pragma: no cover - script copied elsewhere
        script_path = str(Path(__file__).resolve())

    counts = collections.Counter(f.info["config_type"] for f in frames)
    states = {
        f"{name}_md": {"charge": q, "spin": s} for name, (_, q, s) in MD_SPECIES.items()
    }
    states.update(
        {f"{p}_vertical": {"charge": q, "spin": s} for p, q, s in VERTICAL_PARTNER.values()}
    )
    metadata = {
        "file": output.name,
        "generator": script_path,
        "molecules": {
            "C10H2": "H-(C#C)5-H, linear polyyne, 12 atoms",
            "C10H3+": "H-(C#C)4-C#C-CH2+, protonated at one end, 13 atoms",
        },
        "states": states,
        "method": METHOD,
        "program": "tblite",
        "program_version": _tblite_version(),
        "spin_treatment": "tblite multiplicity = spin + 1 (unpaired electrons), "
        "no spin polarisation term",
        "ase_version": ase.__version__,
        "numpy_version": np.__version__,
        "starting_geometries": f"idealised linear chains, BFGS to fmax {OPT_FMAX} "
        "eV/Angstrom with the MD charge, centre of mass at the origin",
        "dynamics": "ase.md.langevin.Langevin (fixcm=False, FixCom constraint, "
        "Stationary, no ZeroRotation)",
        "temperatures_K": list(TEMPERATURES_K),
        "frames_per_run": args.frames_per_run,
        "seeds": {f"{n} {t:.0f} K": s for (n, t), s in SEEDS.items()},
        "timestep_fs": TIMESTEP_FS,
        "friction_per_fs": FRICTION_PER_FS,
        "equilibration_steps": EQUILIBRATION_STEPS,
        "sampling_interval_steps": SAMPLE_INTERVAL,
        "vertical_frames": "every MD geometry relabelled with the partner's charge "
        "and spin (fresh calculator, no relaxation); same geometry_id",
        "n_frames": len(frames),
        "n_geometries": geometry_id,
        "counts": dict(counts),
        "checks": stats,
        "units": {
            "energy": "eV",
            "forces": "eV/Angstrom",
            "dipole": "e*Angstrom",
            "partial_charges": "e",
            "charge": "e",
            "positions": "Angstrom",
        },
        "extxyz_keys": {
            "energy": "per-frame total energy (eV), read back as SinglePointCalculator",
            "forces": "per-atom forces (eV/Angstrom), read back as SinglePointCalculator",
            "dipole": "per-frame dipole (e*Angstrom, 3 numbers) about the origin = centre "
            "of mass, tblite's (includes atomic dipoles); ase.io.read moves it into the "
            "SinglePointCalculator (atoms.calc.results['dipole'], "
            "atoms.get_dipole_moment()), not atoms.info",
            "partial_charges": "per-atom Mulliken charges (e), summing to charge; "
            "atoms.arrays",
            "charge": "per-frame total charge (e, int), atoms.info",
            "spin": "per-frame number of unpaired electrons (int), atoms.info",
            "config_type": "per-frame molecule/state label, atoms.info",
            "geometry_id": "per-frame geometry index (int), shared by the two frames with "
            "identical positions, atoms.info",
            "temperature_K": "thermostat temperature (K) of the MD run that sampled the "
            "geometry, atoms.info",
        },
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runtime_s": round(runtime, 1),
    }
    cli_args = sys.argv[1:] if argv is None else list(argv)
    metadata["command"] = " ".join(["python", script_path, *cli_args])
    sidecar = output.with_suffix(".json")
    sidecar.write_text(json.dumps(metadata, indent=2) + "\n")
    print(f"counts: {dict(counts)}; checks: {stats}")
    print(f"wrote {len(frames)} frames to {output} ({output.stat().st_size} bytes)")
    print(f"wrote provenance to {sidecar}")


if __name__ == "__main__":
    main()
