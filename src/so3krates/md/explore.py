"""Potential-energy-surface exploration: hot MD with periodic quenches to minima.

As in the SO3krates paper (thousands of minima of Ac-Ala3-NHMe): a Langevin MD at an elevated
temperature visits many basins; every ``quench_every_fs`` a snapshot is taken and relaxed
(batched FIRE in JAX) to the minimum of its basin. Converged minima are de-duplicated by
energy and RMSD after optimal superposition (:class:`so3krates.md.minima.MinimaSet`);
unconverged quenches are counted but not recorded as minima. If the MD becomes unstable
(stability monitor, NaN forces) the exploration stops there and reports it; the quenches of
the stable frames before the instability are kept.

Units: temperatures K, times fs, energies eV, lengths Å, forces eV/Å.

Typical use (what ``so3krates explore MODEL_DIR STRUCTURE`` does)::

    system = System.from_atoms(atoms)
    energy_fn = model_energy_fn(model, system)
    result = explore(energy_fn, system, atoms.positions, model.cutoff, temperature=500.0,
                     n_quenches=2000)
    write_exploration(result, "explore_out", system.numbers)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import numpy as np

from so3krates.md.engine import Frames, Simulation
from so3krates.md.integrators import Ensemble
from so3krates.md.minima import MinimaSet
from so3krates.md.relax import fire_relax
from so3krates.md.stability import StabilityCriteria
from so3krates.md.system import EnergyFn, System, positions_force_fn
from so3krates.plotting import pyplot, save_figure


class Quench(NamedTuple):
    """One relaxed MD snapshot.

    Attributes:
        time_fs: simulated time of the snapshot in fs (from the start of the MD).
        energy: energy after the relaxation in eV.
        index: index of its minimum in :attr:`ExploreResult.minima`; -1 if not converged.
        is_new: whether this quench found a new distinct minimum.
        converged: whether FIRE reached ``fmax`` within ``max_relax_steps``.
        fmax: largest atomic force after the relaxation in eV/Å.
        steps: FIRE steps taken.
    """

    time_fs: float
    energy: float
    index: int
    is_new: bool
    converged: bool
    fmax: float
    steps: int


@dataclass
class ExploreResult:
    """Outcome of :func:`explore`.

    Attributes:
        minima: the distinct minima (``found_at`` is the simulated time in fs).
        history: one :class:`Quench` per relaxed snapshot, in MD order.
        md_unstable: whether the MD became unstable (the exploration stopped there).
        md_unstable_time_fs: simulated time of the instability in fs, or None.
        simulated_fs: simulated MD time in fs (equilibration included).
        wall_seconds: wall-clock time of the exploration.
        settings: the parameters used (the quench interval as actually used, in fs).
    """

    minima: MinimaSet
    history: list[Quench] = field(default_factory=list)
    md_unstable: bool = False
    md_unstable_time_fs: float | None = None
    simulated_fs: float = 0.0
    wall_seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    @property
    def n_quenches(self) -> int:
        """Number of snapshots relaxed."""
        return len(self.history)

    @property
    def n_unconverged(self) -> int:
        """Quenches that did not reach ``fmax`` (not recorded as minima)."""
        return sum(not q.converged for q in self.history)

    @property
    def n_distinct(self) -> np.ndarray:
        """Number of distinct minima known after each quench, (n_quenches,) int."""
        return np.cumsum([q.is_new for q in self.history], dtype=np.int64)

    def column(self, name: str) -> np.ndarray:
        """One field of the history as an array, e.g. ``column("time_fs")``."""
        return np.asarray([getattr(q, name) for q in self.history])

    def summary(self) -> dict:
        """JSON-ready overview (without the minima themselves)."""
        return dict(
            n_minima=len(self.minima),
            n_quenches=self.n_quenches,
            n_unconverged=self.n_unconverged,
            md_unstable=self.md_unstable,
            md_unstable_time_fs=self.md_unstable_time_fs,
            simulated_fs=self.simulated_fs,
            wall_seconds=self.wall_seconds,
            settings=self.settings,
        )


def explore(
    energy_fn: EnergyFn,
    system: System,
    positions: np.ndarray,
    cutoff: float,
    *,
    long_cutoff: float | None = None,
    temperature: float = 500.0,
    timestep: float = 0.5,
    friction: float = 0.01,
    quench_every_fs: float = 500.0,
    n_quenches: int = 100,
    equilibration_fs: float = 0.0,
    fmax: float = 0.01,
    max_relax_steps: int = 2000,
    energy_tol: float = 1e-3,
    rmsd_tol: float = 0.1,
    allow_reflection: bool = True,
    seed: int = 0,
    batch: int = 32,
    skin: float = 1.0,
    monitor: StabilityCriteria | None = StabilityCriteria(),
    minima: MinimaSet | None = None,
    on_progress: Callable[[ExploreResult], None] | None = None,
) -> ExploreResult:
    """Explore the potential-energy surface: Langevin MD with periodic quenches.

    The MD saves one frame every ``quench_every_fs`` (the engine's frame stride); each chunk of
    ``batch`` frames is relaxed in one batched :func:`~so3krates.md.relax.fire_relax` call
    (unit masses, as ASE's FIRE) and the converged ones are added to the minima set.

    Args:
        energy_fn: ``energy_fn(positions, cell, neighbours)`` -> energy (eV, total or per
            atom), e.g. :func:`~so3krates.md.system.model_energy_fn`.
        system: numbers, masses, cell, pbc.
        positions: start positions in Å, (N, 3).
        cutoff: the potential's cutoff in Å; long_cutoff: that of its long-range pairs
            (``so3krates.md.system.long_range_cutoff``), or None.
        temperature: MD temperature in K (high enough to cross barriers, low enough to stay
            stable; ~500 K for a peptide).
        timestep: MD timestep in fs.
        friction: Langevin friction in 1/fs.
        quench_every_fs: simulated time between quenched snapshots in fs; rounded to a whole
            number of MD steps (the value used is in ``result.settings``).
        n_quenches: number of snapshots to relax (the MD runs ``n_quenches × quench_every_fs``
            after the equilibration, unless it becomes unstable).
        equilibration_fs: MD time in fs before the first snapshot interval (rounded up to whole
            quench intervals); 0: the first snapshot is taken after one interval.
        fmax: relaxation threshold on the largest atomic force in eV/Å.
        max_relax_steps: FIRE steps per relaxation; quenches not converged by then are counted
            (``n_unconverged``) but not added.
        energy_tol: minima closer than this in energy (eV) may be the same ...
        rmsd_tol: ... if their RMSD after superposition (rotation, translation, permutation of
            equal elements) is below this (Å).
        allow_reflection: mirror images count as the same minimum (see :class:`MinimaSet`).
        seed: PRNG seed (initial velocities, Langevin noise).
        batch: snapshots relaxed together in one batched FIRE call (also the MD chunk length in
            frames); larger is faster on a GPU, memory grows linearly.
        skin: Verlet skin of the MD neighbour list in Å.
        monitor: stability criteria of the MD, or None to switch the bond monitor off (NaN
            forces still stop the run). Conformational changes do not trigger it; bond
            breaking does.
        minima: an existing :class:`MinimaSet` to continue (its tolerances are used); default a
            new one with ``energy_tol``, ``rmsd_tol`` and ``allow_reflection``.
        on_progress: called with the :class:`ExploreResult` so far after every batch.

    Returns:
        An :class:`ExploreResult`.
    """
    if timestep <= 0 or quench_every_fs <= 0:
        raise ValueError("timestep and quench_every_fs must be positive (fs)")
    if n_quenches < 0 or batch < 1:
        raise ValueError("n_quenches must be >= 0 and batch >= 1")
    stride = max(1, int(round(quench_every_fs / timestep)))
    interval_fs = stride * timestep
    numbers = np.asarray(system.numbers)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if minima is None:
        minima = MinimaSet(energy_tol=energy_tol, rmsd_tol=rmsd_tol, allow_reflection=allow_reflection)
    result = ExploreResult(
        minima=minima,
        settings=dict(
            temperature_K=temperature, timestep_fs=timestep, friction_per_fs=friction,
            quench_every_fs=interval_fs, md_steps_per_quench=stride, n_quenches=n_quenches,
            equilibration_fs=0.0, fmax=fmax, max_relax_steps=max_relax_steps,
            energy_tol=minima.energy_tol, rmsd_tol=minima.rmsd_tol,
            allow_reflection=minima.allow_reflection, seed=seed, batch=batch, cutoff=cutoff,
        ),
    )
    t0 = time.perf_counter()
    ensemble = Ensemble(kind="langevin", timestep=timestep, temperature=temperature, friction=friction)
    sim = Simulation(
        energy_fn, system, positions, ensemble, cutoff, skin=skin, stride=stride,
        chunk_frames=max(1, min(batch, n_quenches)), monitor=monitor, seed=seed,
        long_cutoff=long_cutoff,
    )
    # One positions-only force function (own neighbour list) for all relaxations: fire_relax
    # compiles once per function object and batch shape.
    relax_fn = positions_force_fn(energy_fn, system, cutoff, positions, long_cutoff)

    def stop(summary) -> bool:
        result.simulated_fs = sim.step * timestep
        if not summary.stable:
            result.md_unstable = True
            result.md_unstable_time_fs = summary.time_to_instability_fs
            return True
        return False

    n_eq = int(math.ceil(max(equilibration_fs, 0.0) / interval_fs)) * stride
    result.settings["equilibration_fs"] = n_eq * timestep
    if n_eq and stop(sim.run(n_eq)):
        result.wall_seconds = time.perf_counter() - t0
        return result

    done = 0
    while done < n_quenches:
        n = min(batch, n_quenches - done)
        collected: list[Frames] = []
        summary = sim.run(n * stride, on_frames=collected.append)
        snaps = np.concatenate([f.positions for f in collected]) if collected else np.zeros((0,) + positions.shape)
        times = np.concatenate([f.step for f in collected]) * timestep if collected else np.zeros(0)
        if len(snaps):
            _quench(result, relax_fn, snaps, times, numbers, batch, fmax, max_relax_steps)
        done += n
        unstable = stop(summary)
        result.wall_seconds = time.perf_counter() - t0
        if on_progress is not None:
            on_progress(result)
        if unstable:
            break
    result.wall_seconds = time.perf_counter() - t0
    return result


def _quench(result, relax_fn, snaps, times, numbers, batch, fmax, max_steps) -> None:
    """Relax (k, N, 3) snapshots in one FIRE call and record them in ``result``."""
    k = len(snaps)
    if k < batch:  # pad to the compiled batch shape with copies (they converge in lock-step)
        snaps = np.concatenate([snaps, np.repeat(snaps[-1:], batch - k, axis=0)])
    res = jax.device_get(fire_relax(relax_fn, snaps, fmax=fmax, max_steps=max_steps))  # one copy
    pos = np.asarray(res.positions)[:k]
    energy = np.asarray(res.energy, dtype=np.float64)[:k]
    f = np.asarray(res.fmax, dtype=np.float64)[:k]
    converged = np.asarray(res.converged)[:k] & np.isfinite(energy)
    steps = np.asarray(res.steps)[:k]
    for i in range(k):
        index, is_new = -1, False
        if converged[i]:
            index, is_new = result.minima.add(pos[i], energy[i], numbers, time=float(times[i]))
        result.history.append(
            Quench(float(times[i]), float(energy[i]), int(index), bool(is_new), bool(converged[i]),
                   float(f[i]), int(steps[i]))
        )


# --- output -----------------------------------------------------------------------------------


def plot_exploration(result: ExploreResult, path_png: str | Path) -> Path:
    """Two panels: distinct minima found vs simulated time, and the energy of each minimum
    (relative to the lowest, meV) vs the time it was first found (marker size ~ how often
    it was found; grey dots: every converged quench)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
    t = result.column("time_fs") / 1000.0 if result.history else np.zeros(0)
    ax = axes[0]
    if len(t):
        ax.step(np.concatenate([[0.0], t]), np.concatenate([[0], result.n_distinct]), where="post")
    ax.set_xlabel("simulated time / ps")
    ax.set_ylabel("distinct minima")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"{len(result.minima)} minima from {result.n_quenches} quenches"
                 f" ({result.n_unconverged} unconverged)", fontsize=9)
    ax = axes[1]
    if len(result.minima):
        e0 = min(result.minima.energies)
        conv = result.column("converged").astype(bool)
        ax.plot(t[conv], 1000.0 * (result.column("energy")[conv] - e0), ".", color="0.75", ms=3,
                label="quenches")
        counts = np.asarray(result.minima.counts, dtype=float)
        ax.scatter(np.asarray(result.minima.found_at) / 1000.0,
                   1000.0 * (np.asarray(result.minima.energies) - e0),
                   s=12 + 30 * np.log1p(counts), color="C1", edgecolor="k", linewidth=0.4,
                   zorder=3, label="distinct minima (first found)")
        ax.legend(fontsize=8)
        ax.set_ylabel(f"E − E_min / meV   (E_min = {e0:.4f} eV)")
    else:
        ax.set_ylabel("E − E_min / meV")
    ax.set_xlabel("simulated time / ps")
    for ax in axes:
        if result.md_unstable and result.md_unstable_time_fs is not None:
            ax.axvline(result.md_unstable_time_fs / 1000.0, color="C3", ls="--", lw=1)
        ax.grid(alpha=0.3)
    return save_figure(fig, path_png)


def _to_builtin(x):
    """numpy scalars/arrays (e.g. a cutoff read from a config) for ``json.dumps``."""
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_exploration(result: ExploreResult, output_dir: str | Path, numbers: np.ndarray | None = None) -> Path:
    """Write ``minima.xyz`` (distinct minima sorted by energy, extxyz with ``energy=``),
    ``minima.json`` (the minima summary, the exploration summary and the per-quench history)
    and ``exploration.png`` into ``output_dir`` (created). Returns ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.minima.write(out / "minima.xyz", numbers)
    data = json.loads(result.minima.to_json())
    data.update(result.summary())
    data["history"] = [q._asdict() for q in result.history]
    (out / "minima.json").write_text(json.dumps(data, indent=1, default=_to_builtin) + "\n")
    plot_exploration(result, out / "exploration.png")
    return out
