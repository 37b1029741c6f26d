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

from so3krates.md.engine import Frames, Simulation
from so3krates.md.integrators import Ensemble
from so3krates.md.stability import StabilityCriteria
from so3krates.md.system import System, long_range_cutoff, model_energy_fn
from so3krates.fileio import atomic_write_bytes
from so3krates.md.restart import load_state, save_state
from so3krates.md.trajectory import TrajectoryWriter, trajectory_format, truncate_trajectory

ENSEMBLE_ALIASES = {"nve": "nve", "nvt": "langevin", "langevin": "langevin",
                    "nose-hoover": "nose-hoover", "nhc": "nose-hoover", "npt": "npt"}


@dataclass
class MDSettings:
    """Settings of one ``so3krates md`` run (units: K, fs, 1/fs, Å, bar)."""

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
    criterion: str = "auto"
    max_bond_deviation: float = 0.5
    max_force: float = 50.0
    min_distance_factor: float = 0.5
    max_temperature_factor: float = 3.0
    pressure: float = 1.0
    barostat_time: float = 1000.0
    isotropic: bool = False

    def criteria(self) -> StabilityCriteria | None:
        """The stability monitor's criteria, or None when it is off."""
        if not self.monitor:
            return None
        return StabilityCriteria(self.max_bond_deviation, self.max_force, self.min_distance_factor,
                                 self.max_temperature_factor, mode=self.criterion)

    def ensemble_obj(self) -> Ensemble:
        kind = ENSEMBLE_ALIASES.get(self.ensemble)
        if kind is None:
            raise ValueError(f"unknown ensemble {self.ensemble!r}; choose one of {sorted(ENSEMBLE_ALIASES)}")
        return Ensemble(kind, self.timestep, self.temperature, self.friction, self.tau,
                        pressure=self.pressure, barostat_tau=self.barostat_time,
                        isotropic=self.isotropic)


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
    if settings.steps % settings.stride:
        raise ValueError(f"--steps ({settings.steps}) must be a multiple of --stride ({settings.stride})")
    ensemble = settings.ensemble_obj()
    criteria = settings.criteria()  # an unknown criterion fails here, before compiling
    model = load_model(model_dir, dtype=settings.dtype)
    system = System.from_atoms(structure)
    if ensemble.kind == "npt" and not system.pbc.all():
        raise ValueError("NPT needs a cell periodic in all three directions "
                         f"(this structure has pbc={system.pbc.tolist()})")
    trajectory_format(output)  # an unsupported extension fails here, not after compiling
    meta = {"model": str(Path(model_dir).resolve()), "n_atoms": system.n_atoms,
            "settings": asdict(settings)}
    # The restart file is read and checked before the engine compiles: refusals come fast.
    if restart:
        arrays, saved = load_state(restart_path(output))
        _check_restart(saved, meta)
    elif output.exists() or restart_path(output).exists():
        raise ValueError(f"{output} exists; pass --restart to continue it or choose another --output")
    velocities = None
    if structure.has("momenta") and np.any(structure.get_momenta()):
        velocities = structure.get_velocities() * units.fs  # Å/fs
    sim = Simulation(
        model_energy_fn(model, system), system, structure.positions, ensemble, model.cutoff,
        skin=settings.skin, stride=settings.stride, chunk_frames=settings.chunk_frames,
        monitor=criteria, velocities=velocities, seed=settings.seed,
        long_cutoff=long_range_cutoff(model),
    )
    frames_written = 0
    if restart:
        sim.set_state(arrays["positions"], arrays["velocities"], arrays["chain"], arrays["key"],
                      int(arrays["step"]), arrays.get("cell"), arrays.get("cell_momentum"),
                      arrays.get("barostat_chain"))
        frames_written = int(saved["frames"])
        dropped = truncate_trajectory(output, frames_written)
        console.print(f"restart from step {sim.step} ({frames_written} frames kept, {dropped} dropped)")
    output.parent.mkdir(parents=True, exist_ok=True)

    n_atoms = system.n_atoms
    # Per-frame scalars of this run, for the progress line, the summary and the plot (the
    # trajectory itself is never read back: it can be far larger than memory).
    series: dict[str, list] = {k: [] for k in SERIES}
    bar = Progress(
        TextColumn("[bold]MD[/bold]"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[rate]}"), TextColumn("T {task.fields[temp]}"),
        TextColumn("drift {task.fields[drift]}"), TimeRemainingColumn(),
        console=console, disable=not progress, transient=False,
    )
    with TrajectoryWriter(output, system.numbers, system.cell, system.pbc, append=restart,
                          masses=system.masses) as writer, bar:
        task = bar.add_task("md", total=settings.steps, completed=sim.step, rate="", temp="", drift="")
        last = {"time": time.perf_counter(), "step": sim.step}

        def on_frames(frames: Frames) -> None:
            nonlocal frames_written
            write_frames(writer, frames, ensemble.timestep)
            frames_written += len(frames)
            for k in SERIES:
                series[k].append(frames.step * ensemble.timestep if k == "time" else getattr(frames, k))
            # A chunk that went unstable ends before sim.step: its state is not a restart point.
            if sim.step == int(frames.step[-1]):
                save_state(restart_path(output), sim.state_arrays(), {**meta, "frames": frames_written})
            now = time.perf_counter()
            ms = 1e3 * (now - last["time"]) / max(sim.step - last["step"], 1)
            last.update(time=now, step=sim.step)
            drift = 1e3 * (frames.conserved_energy[-1] - series["conserved_energy"][0][0]) / n_atoms
            bar.update(task, completed=sim.step,
                       rate=f"{ms:.2f} ms/step {ensemble.timestep * 86.4 / ms:.1f} ns/day",
                       temp=f"{frames.temperature[-1]:.0f} K", drift=f"{drift:+.3f} meV/atom")

        summary = sim.run(settings.steps - sim.step, on_frames)

    result = {
        "output": str(output),
        "steps": sim.step,
        "simulated_ps": sim.step * ensemble.timestep * 1e-3,
        "frames": frames_written,
        "stable": summary.stable,
        "time_to_instability_fs": summary.time_to_instability_fs,
        "instability": summary.instability,
        "monitor": sim.monitor.mode if sim.monitor is not None else "off",
        "reallocations": summary.reallocations,
        "wall_seconds_this_run": summary.wall_seconds,
        "ensemble": ensemble.kind,
        "timestep_fs": ensemble.timestep,
        "temperature_K": ensemble.temperature,
    }
    if series["time"]:
        s = {k: np.concatenate(v) for k, v in series.items()}
        conserved = s["conserved_energy"]
        result["mean_temperature_K_this_run"] = float(np.mean(s["temperature"]))
        if ensemble.kind == "npt":
            mass_g = float(np.sum(system.masses)) / units.mol  # amu -> g
            result.update(
                target_pressure_bar=ensemble.pressure,
                mean_pressure_bar_this_run=float(np.mean(s["pressure"])),
                mean_volume_A3_this_run=float(np.mean(s["volume"])),
                mean_density_g_cm3_this_run=float(np.mean(mass_g / (s["volume"] * 1e-24))),
            )
        # The integrator's conserved quantity (E_pot + E_kin, plus the chain for Nosé–Hoover).
        result["conserved_energy_drift_meV_per_atom_this_run"] = 1e3 * float(conserved[-1] - conserved[0]) / n_atoms
        result["plot"] = str(plot_md_summary(output.with_suffix(".png"), n_atoms, s["time"],
                                             s["potential_energy"], s["kinetic_energy"], s["temperature"]))
    atomic_write_bytes(summary_path(output), (json.dumps(result, indent=2) + "\n").encode())
    if summary.stable:
        console.print(f"[green]stable[/green]: {result['simulated_ps']:.3f} ps simulated")
    else:
        console.print(
            f"[bold red]unstable[/bold red] after {summary.time_to_instability_fs / 1e3:.3f} ps "
            f"({summary.instability}); the {frames_written} frames before it are kept"
        )
    console.print(f"trajectory: {output}\nsummary: {summary_path(output)}")
    return result


SERIES = ("time", "potential_energy", "kinetic_energy", "conserved_energy", "temperature",
          "volume", "pressure")


def write_frames(writer: TrajectoryWriter, frames: Frames, timestep: float) -> None:
    """Append engine ``frames`` to a trajectory file (time from the step index and ``timestep`` fs)."""
    writer.write(
        frames.positions,
        velocities=frames.velocities,
        potential_energy=frames.potential_energy,
        kinetic_energy=frames.kinetic_energy,
        temperature=frames.temperature,
        time=frames.step * timestep,
        forces=frames.forces,
        cells=frames.cell,
        pressure=frames.pressure,
    )


def _check_restart(saved: dict, meta: dict) -> None:
    for key in ("model", "n_atoms"):
        if saved.get(key) != meta[key]:
            raise ValueError(f"restart file was written for {key}={saved.get(key)!r}, not {meta[key]!r}")
    old, new = saved["settings"], meta["settings"]
    for key in ("ensemble", "temperature", "timestep", "friction", "tau", "stride", "dtype",
                "pressure", "barostat_time", "isotropic"):
        if old.get(key) != new.get(key):
            raise ValueError(f"restart with a different {key} ({old.get(key)!r} -> {new.get(key)!r}); "
                             "start a new run instead")
