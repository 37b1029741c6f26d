"""``so3krates md``: a production MD run with a trained model, restartable, with a verdict.

Frames are written chunk by chunk; after every chunk the engine state is saved atomically to
``<output>.restart.npz`` so that ``--restart`` continues a killed run exactly where the last
complete chunk ended (frames written after that state are dropped first).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import units
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from so3krates.md.engine import Frames, RunSummary, Simulation
from so3krates.md.integrators import Ensemble
from so3krates.md.stability import StabilityCriteria
from so3krates.md.system import System, model_force_fn
from so3krates.md.restart import load_state, save_state
from so3krates.md.trajectory import TrajectoryWriter, read_trajectory, truncate_trajectory

ENSEMBLE_ALIASES = {"nve": "nve", "nvt": "langevin", "langevin": "langevin",
                    "nose-hoover": "nose-hoover", "nhc": "nose-hoover"}


@dataclass
class MDSettings:
    """Settings of one ``so3krates md`` run (units: K, fs, 1/fs, Å)."""

    ensemble: str = "nvt"
    temperature: float = 300.0
    timestep: float = 0.5
    steps: int = 1000
    friction: float = 0.01
    tau: float = 100.0
    stride: int = 10
    chunk_frames: int = 100
    skin: float = 1.0
    seed: int = 0
    dtype: str | None = None
    monitor: bool = True
    max_bond_deviation: float = 0.5
    max_force: float = 50.0

    def ensemble_obj(self) -> Ensemble:
        kind = ENSEMBLE_ALIASES.get(self.ensemble)
        if kind is None:
            raise ValueError(f"unknown ensemble {self.ensemble!r}; choose one of {sorted(ENSEMBLE_ALIASES)}")
        return Ensemble(kind, self.timestep, self.temperature, self.friction, self.tau)


def restart_path(output: Path) -> Path:
    return output.with_name(output.name + ".restart.npz")


def summary_path(output: Path) -> Path:
    return output.with_name(output.name + ".summary.json")


def run_md(
    model_dir: str | Path,
    structure,
    output: str | Path,
    settings: MDSettings,
    restart: bool = False,
    console: Console | None = None,
    progress: bool = True,
) -> dict:
    """Run MD of ``structure`` (an ``ase.Atoms``) with the model in ``model_dir``.

    Writes the trajectory to ``output`` (.xyz/.extxyz, .traj or .h5), a restart file, a
    summary JSON and an energy/temperature plot; returns the summary.
    """
    from so3krates.md.analysis import plot_md_summary
    from so3krates.model_io import load_model

    console = console or Console()
    output = Path(output)
    model = load_model(model_dir, dtype=settings.dtype)
    system = System.from_atoms(structure)
    ensemble = settings.ensemble_obj()
    if settings.steps % settings.stride:
        raise ValueError(f"--steps ({settings.steps}) must be a multiple of --stride ({settings.stride})")
    criteria = StabilityCriteria(settings.max_bond_deviation, settings.max_force)
    velocities = None
    if structure.has("momenta") and np.any(structure.get_momenta()):
        velocities = structure.get_velocities() * units.fs  # Å/fs
    sim = Simulation(
        model_force_fn(model, system), system, structure.positions, ensemble, model.cutoff,
        skin=settings.skin, stride=settings.stride, chunk_frames=settings.chunk_frames,
        monitor=criteria if settings.monitor else None, velocities=velocities, seed=settings.seed,
    )
    meta = {"model": str(Path(model_dir).resolve()), "n_atoms": system.n_atoms,
            "settings": asdict(settings)}
    frames_written = 0
    if restart:
        arrays, saved = load_state(restart_path(output))
        _check_restart(saved, meta)
        sim.set_state(arrays["positions"], arrays["velocities"], arrays["chain"], arrays["key"],
                      int(arrays["step"]))
        frames_written = int(saved["frames"])
        dropped = truncate_trajectory(output, frames_written)
        console.print(f"restart from step {sim.step} ({frames_written} frames kept, {dropped} dropped)")
    elif output.exists() or restart_path(output).exists():
        raise ValueError(f"{output} exists; pass --restart to continue it or choose another --output")
    output.parent.mkdir(parents=True, exist_ok=True)

    n_atoms = system.n_atoms
    e0 = None
    status = {"temperature": float("nan"), "drift": 0.0}
    bar = Progress(
        TextColumn("[bold]MD[/bold]"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[rate]}"), TextColumn("T {task.fields[temp]}"),
        TextColumn("drift {task.fields[drift]}"), TimeRemainingColumn(),
        console=console, disable=not progress, transient=False,
    )
    summary = RunSummary()
    t_start = time.perf_counter()
    with TrajectoryWriter(output, system.numbers, system.cell, system.pbc, append=restart,
                          masses=system.masses) as writer, bar:
        task = bar.add_task("md", total=settings.steps, completed=sim.step, rate="", temp="", drift="")
        while sim.step < settings.steps and summary.stable:
            n_frames = min(settings.chunk_frames, (settings.steps - sim.step) // settings.stride)
            t0 = time.perf_counter()
            frames, unstable, realloc = sim.run_chunk(n_frames)
            dt_wall = time.perf_counter() - t0
            summary.reallocations += realloc
            if len(frames):
                _write(writer, frames, ensemble.timestep)
                frames_written += len(frames)
                summary.frames += len(frames)
                if e0 is None:
                    e0 = float(frames.conserved_energy[0])
                status["temperature"] = float(frames.temperature[-1])
                status["drift"] = 1e3 * (float(frames.conserved_energy[-1]) - e0) / n_atoms
            if unstable is not None:
                summary.stable = False
                summary.time_to_instability_fs = unstable * ensemble.timestep
            else:
                save_state(restart_path(output), sim.state_arrays(), {**meta, "frames": frames_written})
            ms = 1e3 * dt_wall / (n_frames * settings.stride)
            ns_day = ensemble.timestep * 1e-6 * 86400e3 / ms
            bar.update(task, completed=sim.step, rate=f"{ms:.2f} ms/step {ns_day:.1f} ns/day",
                       temp=f"{status['temperature']:.0f} K", drift=f"{status['drift']:+.3f} meV/atom")
    summary.wall_seconds = time.perf_counter() - t_start
    summary.steps = sim.step

    result = {
        "output": str(output),
        "steps": sim.step,
        "simulated_ps": sim.step * ensemble.timestep * 1e-3,
        "frames": frames_written,
        "stable": summary.stable,
        "time_to_instability_fs": summary.time_to_instability_fs,
        "reallocations": summary.reallocations,
        "wall_seconds_this_run": summary.wall_seconds,
        "ensemble": ensemble.kind,
        "timestep_fs": ensemble.timestep,
        "temperature_K": ensemble.temperature,
    }
    if frames_written:
        traj = read_trajectory(output)
        if traj.temperature is not None:
            result["mean_temperature_K"] = float(np.mean(traj.temperature))
        if traj.kinetic_energy is not None and traj.potential_energy is not None:
            total = traj.potential_energy + traj.kinetic_energy
            result["total_energy_drift_meV_per_atom"] = 1e3 * float(total[-1] - total[0]) / n_atoms
        result["plot"] = str(plot_md_summary(traj, output.with_suffix(".png")))
    summary_path(output).write_text(json.dumps(result, indent=2))
    if summary.stable:
        console.print(f"[green]stable[/green]: {result['simulated_ps']:.3f} ps simulated")
    else:
        console.print(
            f"[bold red]unstable[/bold red] after {summary.time_to_instability_fs / 1e3:.3f} ps "
            f"(bond deviation > {settings.max_bond_deviation} Å, NaN or forces > "
            f"{settings.max_force} eV/Å); the {frames_written} frames before it are kept"
        )
    console.print(f"trajectory: {output}\nsummary: {summary_path(output)}")
    return result


def _write(writer: TrajectoryWriter, frames: Frames, timestep: float) -> None:
    writer.write(
        frames.positions,
        velocities=frames.velocities,
        potential_energy=frames.potential_energy,
        kinetic_energy=frames.kinetic_energy,
        temperature=frames.temperature,
        time=frames.step * timestep,
        forces=frames.forces,
    )


def _check_restart(saved: dict, meta: dict) -> None:
    for key in ("model", "n_atoms"):
        if saved.get(key) != meta[key]:
            raise ValueError(f"restart file was written for {key}={saved.get(key)!r}, not {meta[key]!r}")
    old, new = saved["settings"], meta["settings"]
    for key in ("ensemble", "temperature", "timestep", "friction", "tau", "stride", "dtype"):
        if old.get(key) != new.get(key):
            raise ValueError(f"restart with a different {key} ({old.get(key)!r} -> {new.get(key)!r}); "
                             "start a new run instead")
