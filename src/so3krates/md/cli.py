"""Command line for using a model: ``so3krates md | relax | explore | analyze``.

Parsers and handlers only; the work happens in :mod:`so3krates.md.run`,
:mod:`so3krates.md.relax`, :mod:`so3krates.md.explore` and :mod:`so3krates.md.analysis`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table


def read_structures(path: str, index: str = ":") -> list:
    """Structures from any ASE-readable file, with a clear error for missing or empty files."""
    import ase.io

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"structure file {path} does not exist")
    try:
        frames = ase.io.read(p, index=index)
    except StopIteration:
        frames = []
    except Exception as err:  # ase raises many kinds; report the file, not a traceback
        raise ValueError(f"cannot read structures from {path}: {err}") from err
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise ValueError(f"{path} holds no structures (index {index!r})")
    for k, atoms in enumerate(frames):
        check_structure(atoms, f"{path}, structure {k}")
    return frames


def check_structure(atoms, where: str) -> None:
    """Refuse what a model cannot evaluate: NaN positions, overlapping atoms (they give zero
    or NaN forces, and a relaxation would report them converged), a periodic cell without
    volume."""
    from so3krates.data.dataset import find_overlap
    from so3krates.neighbours.verlet import complete_cell

    if not np.isfinite(atoms.positions).all():
        raise ValueError(f"{where}: positions contain NaN or inf")
    try:
        cell = complete_cell(atoms.cell[:], atoms.pbc)
    except ValueError as err:  # a periodic cell without volume
        raise ValueError(f"{where}: {err}") from None
    pair = find_overlap(atoms.positions, cell, atoms.pbc)
    if pair is not None:
        raise ValueError(f"{where}: atoms {pair[0]} and {pair[1]} overlap ({pair[2]:.3f} Å apart)")


def _add_run_args(p, temperature: float) -> None:
    """Arguments shared by the commands that run MD with a model (``md``, ``explore``)."""
    p.add_argument("model_dir")
    p.add_argument("structure", help="start structure (any ASE format; --index picks a frame)")
    p.add_argument("--index", default="0", help="frame of the structure file (default 0)")
    p.add_argument("--temperature", type=float, default=temperature, help=f"K (default {temperature:g})")
    p.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--monitor", default="auto", choices=["auto", "bonds", "collapse"],
                   help="stability criterion: bonds = a bond of the start structure off its "
                        "length by more than 0.5 Å (Fu et al. 2023; for molecules); collapse "
                        "= two atoms closer than 0.5 times the sum of their covalent radii, or "
                        "the temperature above 3 times the run's (crystals, liquids: bonds may "
                        "break); auto (default) = bonds without periodic directions, else "
                        "collapse. Both stop at NaN and at forces above 50 eV/Å")
    p.add_argument("--no-monitor", action="store_true",
                   help="switch the stability monitor off (NaN forces still stop the run)")
    _add_cpu_arg(p)


def _add_cpu_arg(p) -> None:
    p.add_argument("--cpu", type=int, metavar="CORE",
                   help="compute on this CPU core only, one thread: faster for small molecules "
                        "(~100 atoms or fewer); for several runs, one process per core")


def _apply_cpu(args) -> None:
    if args.cpu is not None:
        from so3krates.compile import use_one_cpu_thread

        use_one_cpu_thread(core=args.cpu)


def add_parsers(sub) -> None:
    """Add the ``md``, ``relax``, ``explore`` and ``analyze`` sub-commands."""
    p = sub.add_parser("md", help="molecular dynamics with a trained model (compiled JAX engine)")
    _add_run_args(p, temperature=300.0)
    p.add_argument("--ensemble", default="nvt",
                   choices=["nve", "nvt", "langevin", "nose-hoover", "nhc", "npt"],
                   help="nvt = Langevin (BAOAB); nose-hoover = Nosé–Hoover chain; npt = "
                        "Martyna–Tobias–Klein barostat with Nosé–Hoover chains")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    p.add_argument("--tau", type=float, default=100.0, help="Nosé–Hoover coupling time, fs")
    p.add_argument("--pressure", type=float, default=1.0, help="NPT pressure, bar (1 GPa = 10,000 bar)")
    p.add_argument("--barostat-time", type=float, default=1000.0, help="NPT barostat time, fs")
    p.add_argument("--isotropic", action="store_true",
                   help="NPT: the volume fluctuates, the cell's shape stays (default: full cell)")
    p.add_argument("--stride", type=int, default=10, help="steps between saved frames")
    p.add_argument("--chunk", type=int, default=100, help="frames per compiled chunk")
    p.add_argument("--skin", type=float, default=1.0, help="neighbour-list skin, Å")
    p.add_argument("--output", default="md.xyz", help=".xyz/.extxyz, .traj or .h5")
    p.add_argument("--restart", action="store_true", help="continue from OUTPUT.restart.npz")
    p.add_argument("--max-bond-deviation", type=float, default=0.5,
                   help="Å (bonds criterion, default 0.5)")
    p.add_argument("--max-force", type=float, default=50.0, help="eV/Å (both criteria, default 50)")
    p.add_argument("--min-distance-factor", type=float, default=0.5,
                   help="of the sum of covalent radii (collapse criterion, default 0.5)")
    p.add_argument("--max-temperature-factor", type=float, default=3.0,
                   help="of the run's temperature (collapse criterion, default 3; inf: off)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("relax", help="geometry optimisation to a force threshold")
    p.add_argument("model_dir")
    p.add_argument("structures", help="structure file (all frames are relaxed)")
    p.add_argument("--index", default=":")
    p.add_argument("--optimizer", default="fire-jax", choices=["fire-jax", "BFGS", "FIRE", "LBFGS"],
                   help="fire-jax: batched FIRE in JAX (molecules of one size); else ase.optimize")
    p.add_argument("--fmax", type=float, default=0.01, help="eV/Å")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--cell", action="store_true",
                   help="relax the cell too (periodic structures) to --smax at --pressure")
    p.add_argument("--pressure", type=float, default=0.0, help="with --cell: bar (default 0)")
    p.add_argument("--smax", type=float, default=1000.0,
                   help="with --cell: stress threshold, bar (default 1000 = 0.1 GPa)")
    p.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--output", default="relaxed.xyz")
    _add_cpu_arg(p)

    p = sub.add_parser("explore", help="minima search: hot MD with periodic quenches")
    _add_run_args(p, temperature=500.0)
    p.add_argument("--quench-every", type=float, default=500.0, help="fs of MD between quenches")
    p.add_argument("--quenches", type=int, default=100)
    p.add_argument("--fmax", type=float, default=0.01, help="eV/Å")
    p.add_argument("--batch", type=int, default=32, help="snapshots relaxed together (batched FIRE)")
    p.add_argument("--equilibration", type=float, default=0.0, help="fs of MD before the first quench")
    p.add_argument("--energy-tol", type=float, default=1e-3, help="eV")
    p.add_argument("--rmsd-tol", type=float, default=0.1, help="Å")
    p.add_argument("--output", default="explore", help="directory for minima.xyz, minima.json, plot")

    p = sub.add_parser("eos", help="equation of state: E(V), Birch–Murnaghan V0 and B0")
    p.add_argument("model_dir")
    p.add_argument("structure", help="periodic structure (any ASE format)")
    p.add_argument("--index", default="0")
    p.add_argument("--strain", type=float, default=0.06,
                   help="lattice parameters scaled within ±strain (default 0.06)")
    p.add_argument("--points", type=int, default=11)
    p.add_argument("--relax-atoms", action="store_true",
                   help="relax the atoms at each volume (non-trivial bases)")
    p.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--output", default="eos", help="directory for eos.json and eos.png")

    p = sub.add_parser("thermal-conductivity",
                       help="Green–Kubo thermal conductivity from NVE runs with the heat flux")
    p.add_argument("model_dir")
    p.add_argument("structure", help="periodic start structure (any ASE format)")
    p.add_argument("--index", default="0")
    p.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    p.add_argument("--runs", type=int, default=3, help="independent runs (default 3)")
    p.add_argument("--equilibration", type=float, default=10.0, help="ps of Langevin MD per run")
    p.add_argument("--production", type=float, default=50.0, help="ps of NVE MD per run")
    p.add_argument("--timestep", type=float, default=1.0, help="fs (default 1)")
    p.add_argument("--sample-every", type=int, default=4, help="steps between heat-flux samples")
    p.add_argument("--max-lag", type=float, default=10.0, help="correlation window, ps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--output", default="thermal_conductivity",
                   help="directory for kappa.json and running_integral.png")

    p = sub.add_parser("analyze", help="VACF, vibrational spectrum, g(r), energy drift of a trajectory")
    p.add_argument("trajectory")
    p.add_argument("--output", help="directory for the plots and analysis.json (default: next to it)")
    p.add_argument("--r-max", type=float, default=6.0, help="g(r) range, Å")
    p.add_argument("--max-lag", type=float, help="VACF length, fs")


def cmd_md(args, console: Console) -> int:
    _apply_cpu(args)
    from so3krates.md.run import MDSettings, run_md

    settings = MDSettings(
        ensemble=args.ensemble, temperature=args.temperature, timestep=args.timestep,
        steps=args.steps, friction=args.friction, tau=args.tau, stride=args.stride,
        chunk_frames=args.chunk, skin=args.skin, seed=args.seed, dtype=args.dtype,
        monitor=not args.no_monitor, criterion=args.monitor,
        max_bond_deviation=args.max_bond_deviation, max_force=args.max_force,
        min_distance_factor=args.min_distance_factor,
        max_temperature_factor=args.max_temperature_factor, pressure=args.pressure,
        barostat_time=args.barostat_time, isotropic=args.isotropic,
    )
    atoms = read_structures(args.structure, args.index)[0]
    result = run_md(args.model_dir, atoms, args.output, settings, restart=args.restart,
                    console=console, progress=not args.no_progress)
    return 0 if result["stable"] else 3


def cmd_relax(args, console: Console) -> int:
    _apply_cpu(args)
    import ase.io
    import jax

    from so3krates.md.relax import fire_relax, relax_ase
    from so3krates.md.system import System, long_range_cutoff, model_energy_fn, positions_force_fn
    from so3krates.model_io import load_model

    model = load_model(args.model_dir, dtype=args.dtype)
    frames = read_structures(args.structures, args.index)
    for atoms in frames:
        model.check_elements(atoms.numbers)
    rows = []
    same = all(len(a) == len(frames[0]) and (a.numbers == frames[0].numbers).all() for a in frames)
    from ase import units

    pressure, smax = args.pressure * units.bar, args.smax * units.bar
    if args.cell and not all(a.pbc.all() for a in frames):
        raise ValueError("--cell needs structures periodic in all three directions")
    if args.cell and args.optimizer == "fire-jax":
        from so3krates.md.system import cell_filter

        for atoms in frames:
            system = System.from_atoms(atoms)
            filt = cell_filter(model_energy_fn(model, system), system, model.cutoff,
                               atoms.positions, pressure,
                               cell_factor=smax * atoms.get_volume() / args.fmax,
                               long_cutoff=long_range_cutoff(model))
            res = jax.device_get(fire_relax(filt.force_fn, filt.x0, fmax=args.fmax,
                                            max_steps=args.steps))
            atoms.positions, cell = filt.unpack(res.positions)
            atoms.set_cell(cell, scale_atoms=False)
            rows.append((float(res.energy) - pressure * atoms.get_volume(), float(res.fmax),
                         bool(res.converged), int(res.steps)))
    elif args.optimizer == "fire-jax" and same and not any(a.pbc.any() for a in frames):
        system = System.from_atoms(frames[0])
        start = np.stack([a.positions for a in frames])
        # Size the list for the most crowded start structure.
        densest = start[np.argmax([np.sum(np.linalg.norm(x[:, None] - x[None], axis=-1) < model.cutoff)
                                   for x in start])]
        fn = positions_force_fn(model_energy_fn(model, system), system, model.cutoff, densest,
                                long_cutoff=long_range_cutoff(model))
        res = jax.device_get(fire_relax(fn, start, fmax=args.fmax, max_steps=args.steps))
        for k, atoms in enumerate(frames):
            atoms.positions = res.positions[k]
            rows.append((float(res.energy[k]), float(res.fmax[k]), bool(res.converged[k]), int(res.steps[k])))
    else:
        if args.optimizer == "fire-jax":
            console.print("[yellow]fire-jax batches molecules of one composition; using ASE FIRE[/yellow]")
        optimizer = "FIRE" if args.optimizer == "fire-jax" else args.optimizer
        calc = model.calculator()
        for k, atoms in enumerate(frames):
            r = relax_ase(atoms, calc, optimizer, fmax=args.fmax, steps=args.steps,
                          cell=args.cell, pressure=pressure, smax=smax)
            frames[k] = r.atoms
            rows.append((r.energy, r.fmax, r.converged, r.steps))
    from ase.calculators.singlepoint import SinglePointCalculator

    title = f"relaxation ({args.optimizer}, fmax {args.fmax} eV/Å"
    title += f", cell to {args.smax:g} bar at {args.pressure:g} bar)" if args.cell else ")"
    table = Table(title=title)
    columns = ["#", "energy (eV)", "fmax (eV/Å)", "converged", "steps"]
    for col in columns + (["|σ + P| (bar)", "volume (Å³)"] if args.cell else []):
        table.add_column(col, justify="right")
    calc = model.calculator()
    for k, (atoms, (e, f, ok, n)) in enumerate(zip(frames, rows)):
        extra = []
        if args.cell:  # the stress at the result, from the calculator (not the optimiser)
            from ase.stress import voigt_6_to_full_3x3_stress

            sigma = voigt_6_to_full_3x3_stress(calc.get_stress(atoms))
            s = float(np.abs(sigma + pressure * np.eye(3)).max())
            ok = ok and s <= smax * (1 + 1e-6)
            atoms.info.update(stress_deviation_bar=s / units.bar)
            extra = [f"{s / units.bar:.1f}", f"{atoms.get_volume():.3f}"]
        atoms.calc = SinglePointCalculator(atoms, energy=e)
        atoms.info.update(fmax=f, converged=ok, steps=n)
        rows[k] = (e, f, ok, n)
        table.add_row(str(k), f"{e:.6f}", f"{f:.4f}", "yes" if ok else "[red]no[/red]", str(n),
                      *extra)
    console.print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(args.output, frames)
    console.print(f"relaxed structures: {args.output}")
    return 0 if all(r[2] for r in rows) else 3


def cmd_explore(args, console: Console) -> int:
    _apply_cpu(args)
    from so3krates.md.explore import explore, write_exploration
    from so3krates.md.stability import StabilityCriteria
    from so3krates.md.system import System, long_range_cutoff, model_energy_fn
    from so3krates.model_io import load_model

    model = load_model(args.model_dir, dtype=args.dtype)
    atoms = read_structures(args.structure, args.index)[0]
    system = System.from_atoms(atoms)
    result = explore(
        model_energy_fn(model, system), system, atoms.positions, model.cutoff,
        long_cutoff=long_range_cutoff(model), temperature=args.temperature, timestep=args.timestep, quench_every_fs=args.quench_every,
        n_quenches=args.quenches, fmax=args.fmax, energy_tol=args.energy_tol,
        rmsd_tol=args.rmsd_tol, seed=args.seed, batch=args.batch,
        equilibration_fs=args.equilibration,
        monitor=None if args.no_monitor else StabilityCriteria(mode=args.monitor),
    )
    out = write_exploration(result, args.output, system.numbers)
    console.print(
        f"{len(result.minima)} distinct minima from {result.n_quenches} quenches "
        f"({result.n_unconverged} unconverged) over {result.simulated_fs / 1e3:.2f} ps of MD"
    )
    if result.md_unstable:
        console.print(f"[bold red]MD became unstable[/bold red] at "
                      f"{result.md_unstable_time_fs / 1e3:.3f} ps; exploration stopped there")
    console.print(f"minima.xyz, minima.json, exploration.png: {out}")
    return 3 if result.md_unstable else 0


def cmd_analyze(args, console: Console) -> int:
    from so3krates.md.analysis import analyze

    out = args.output or str(Path(args.trajectory).with_suffix("")) + "_analysis"
    result = analyze(args.trajectory, out, r_max=args.r_max, max_lag_fs=args.max_lag)
    console.print_json(json.dumps(result, default=str))
    console.print(f"plots and analysis.json: {out}")
    return 0


def cmd_eos(args, console: Console) -> int:
    from so3krates.fileio import atomic_write_bytes
    from so3krates.md.eos import equation_of_state, plot_eos
    from so3krates.model_io import load_model

    model = load_model(args.model_dir, dtype=args.dtype)
    atoms = read_structures(args.structure, args.index)[0]
    model.check_elements(atoms.numbers)
    result = equation_of_state(atoms, model.calculator(), args.strain, args.points,
                               args.relax_atoms)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_eos(result, out / "eos.png")
    result.update(model=str(Path(args.model_dir).resolve()), structure=str(args.structure))
    atomic_write_bytes(out / "eos.json", (json.dumps(result, indent=2) + "\n").encode())
    n = result["n_atoms"]
    console.print(f"V0 = {result['v0_A3'] / n:.4f} Å³/atom (cell x {result['a0_scale']:.4f}), "
                  f"E0 = {result['e0_eV'] / n:.4f} eV/atom, B0 = {result['b0_GPa']:.2f} GPa")
    console.print(f"eos.json, {plot.name}: {out}")
    return 0


def cmd_thermal_conductivity(args, console: Console) -> int:
    from so3krates.md.system import System, model_energy_fn
    from so3krates.md.thermal import plot_running_integral, thermal_conductivity
    from so3krates.model_io import load_model

    model = load_model(args.model_dir, dtype=args.dtype)
    atoms = read_structures(args.structure, args.index)[0]
    system = System.from_atoms(atoms)
    # MD on the fast inference path; the heat flux (forward mode) through the exact network.
    flux = model.heat_flux(atoms)

    def progress(r, res):
        k = np.trace(res["kappa"]) / 3
        console.print(f"run {r + 1}/{args.runs}: κ = {k:.4g} W/m/K "
                      f"(mean T {res['mean_temperature_K']:.1f} K)")

    result = thermal_conductivity(
        model_energy_fn(model, system), flux, system, atoms.positions, model.cutoff,
        temperature=args.temperature, runs=args.runs, equilibration_fs=1e3 * args.equilibration,
        production_fs=1e3 * args.production, timestep=args.timestep,
        sample_every=args.sample_every, max_lag_fs=1e3 * args.max_lag, seed=args.seed,
        on_run=progress)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_running_integral(result, out / "running_integral.png")
    summary = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()
               if k not in ("running_integral_per_run_W_mK",)}
    summary.update(model=str(Path(args.model_dir).resolve()), structure=str(args.structure),
                   n_atoms=len(atoms))
    from so3krates.fileio import atomic_write_bytes

    atomic_write_bytes(out / "kappa.json", (json.dumps(summary, indent=2) + "\n").encode())
    console.print(f"κ = {result['kappa_mean_W_mK']:.4g} ± {result['kappa_mean_W_mK_stderr']:.2g} "
                  f"W/m/K at {args.temperature:g} K ({args.runs} runs; "
                  f"{result['ns_per_day_with_heat_flux']:.3g} ns/day with heat flux)")
    console.print(f"kappa.json, {plot.name}: {out}")
    return 0


HANDLERS = {"md": cmd_md, "relax": cmd_relax, "explore": cmd_explore, "analyze": cmd_analyze,
            "eos": cmd_eos, "thermal-conductivity": cmd_thermal_conductivity}
