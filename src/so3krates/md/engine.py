"""The MD engine: chunks of steps in one compiled ``lax.scan``, driven from the host.

A chunk runs ``frames × stride`` steps on the device and returns one frame every ``stride``
steps. Between chunks the host (1) checks the neighbour-list overflow flag: on overflow it
grows the capacities, recompiles and redoes the chunk from its starting state, so pairs are
never dropped; (2) hands the frames to a writer; (3) stops cleanly at the first unstable
frame (stability monitor), keeping every frame before it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase import units

from so3krates.compile import jit
from so3krates.neighbours import verlet as nl
from so3krates.md.integrators import (
    Ensemble,
    MDState,
    conserved_energy,
    init_state,
    start_state,
    kinetic_energy,
    make_step_fn,
    pressure_tensor,
    temperature as kinetic_temperature,
)
from so3krates.md.stability import Monitor, StabilityCriteria
from so3krates.md.system import EnergyFn, System
from so3krates.potential import derive


class Frames(NamedTuple):
    """Frames of one chunk (host arrays; F frames, N atoms).

    Attributes:
        step: step index of each frame, (F,).
        positions: (F, N, 3) Å.
        velocities: (F, N, 3) Å/fs.
        forces: (F, N, 3) eV/Å.
        potential_energy, kinetic_energy, conserved_energy: (F,) eV.
        temperature: (F,) K.
        stable: (F,) bool, False from the first unstable step on.
        cell: (F, 3, 3) Å (changes in NPT).
        volume: (F,) Å³ (0 for molecules).
        pressure: (F,) bar, the instantaneous pressure (kinetic part included); NaN unless
            the ensemble computes the virial (NPT).
    """

    step: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    forces: np.ndarray
    potential_energy: np.ndarray
    kinetic_energy: np.ndarray
    conserved_energy: np.ndarray
    temperature: np.ndarray
    stable: np.ndarray
    cell: np.ndarray
    volume: np.ndarray
    pressure: np.ndarray

    def __len__(self) -> int:
        return len(self.step)

    def head(self, n: int) -> "Frames":
        return Frames(*(a[:n] for a in self))


def make_chunk_fn(
    step_fn: Callable[[MDState], MDState],
    ensemble: Ensemble,
    system: System,
    monitor: Monitor | None,
    n_frames: int,
    stride: int,
):
    """``chunk(state, unstable_at) -> (state, unstable_at, frames)``, jitted.

    ``unstable_at`` is the (chunk-relative) index of the last step before the first frame
    found unstable, -1 while stable; once unstable, the remaining frames are skipped. The
    monitor looks at every frame (every ``stride`` steps): checking inside the step loop
    costs more than the model for small molecules (it splits XLA's loop body), and a bond
    that breaks stays broken (atoms in a hole stay there), so the time to instability is
    resolved to ``stride`` steps. ``monitor`` (None: only NaN stops the run) is called with
    the in-loop neighbour list and the frame's kinetic temperature.
    """
    masses = jnp.asarray(system.masses)
    dof = system.degrees_of_freedom

    def stable(state: MDState, temperature: jnp.ndarray) -> jnp.ndarray:
        ok = jnp.all(jnp.isfinite(state.forces)) & jnp.isfinite(state.energy)
        if monitor is not None:
            ok &= monitor(state.positions, state.forces, state.cell, state.neighbours, temperature)
        return ok

    def advance(state: MDState) -> MDState:
        return jax.lax.scan(lambda s, _: (step_fn(s), None), state, None, length=stride)[0]

    def one_frame(carry, f):
        state, unstable_at = carry
        state = jax.lax.cond(unstable_at < 0, advance, lambda s: s, state)
        ke = kinetic_energy(state.velocities, masses)
        temperature = 2.0 * ke / (dof * units.kB)
        unstable_at = jnp.where((unstable_at < 0) & ~stable(state, temperature),
                                (f + 1) * stride - 1, unstable_at)
        volume = jnp.abs(jnp.linalg.det(state.cell))
        if ensemble.kind == "npt":
            pressure = jnp.trace(pressure_tensor(state.velocities, masses, state.virial,
                                                 state.cell)) / 3.0 / units.bar
        else:
            pressure = jnp.asarray(jnp.nan)
        frame = dict(
            positions=state.positions,
            velocities=state.velocities * units.fs,
            forces=state.forces,
            potential_energy=state.energy,
            kinetic_energy=ke,
            conserved_energy=conserved_energy(state, ensemble, system),
            temperature=temperature,
            stable=unstable_at < 0,
            cell=state.cell,
            volume=volume,
            pressure=pressure,
        )
        return (state, unstable_at), frame

    @jit
    def chunk(state: MDState, unstable_at: jnp.ndarray):
        (state, unstable_at), frames = jax.lax.scan(
            one_frame, (state, unstable_at), jnp.arange(n_frames)
        )
        return state, unstable_at, frames

    return chunk


@dataclass
class RunSummary:
    """What happened in :meth:`Simulation.run`."""

    steps: int = 0
    frames: int = 0
    stable: bool = True
    time_to_instability_fs: float | None = None
    instability: str | None = None
    reallocations: int = 0
    wall_seconds: float = 0.0

    @property
    def ms_per_step(self) -> float:
        return 1e3 * self.wall_seconds / max(self.steps, 1)


class Simulation:
    """Runs MD for one structure with any ``energy_fn(positions, cell, neighbours)``.

    Args:
        energy_fn: total or per-atom energies (eV), e.g.
            :func:`so3krates.md.system.model_energy_fn`; forces are its gradient.
        system: numbers, masses, cell, pbc.
        positions: start positions (N, 3) Å.
        ensemble: integrator settings.
        cutoff: the potential's cutoff in Å.
        skin: Verlet skin in Å.
        stride: steps between frames.
        chunk_frames: frames per compiled chunk (one host round trip per chunk).
        monitor: stability criteria (see :mod:`so3krates.md.stability`: the bond criterion
            for molecules, the collapse criterion for periodic structures, unless
            ``monitor.mode`` says otherwise), or None to switch the monitor off (NaN forces
            still stop the run). The temperature limit refers to the larger of the
            ensemble's temperature and that of the start velocities.
        velocities: start velocities in Å/fs (default: Maxwell–Boltzmann at the temperature).
        seed: PRNG seed (initial velocities, Langevin noise).
        spec: neighbour-list capacities (default: sized from ``positions`` by
            :func:`so3krates.neighbours.verlet.allocate`; they grow on overflow).
        long_cutoff: the cutoff of an energy function's long-range pairs (Å; a model's
            ``so3krates.md.system.long_range_cutoff(model)``), selected from the same
            Verlet list into ``neighbours.long_range``; None: none.
    """

    def __init__(
        self,
        energy_fn: EnergyFn,
        system: System,
        positions: np.ndarray,
        ensemble: Ensemble,
        cutoff: float,
        skin: float = 1.0,
        stride: int = 10,
        chunk_frames: int = 50,
        monitor: StabilityCriteria | None = StabilityCriteria(),
        velocities: np.ndarray | None = None,
        seed: int = 0,
        spec: nl.NeighbourSpec | None = None,
        long_cutoff: float | None = None,
    ):
        self.energy_fn, self.system, self.ensemble = energy_fn, system, ensemble
        self.stride, self.chunk_frames = stride, chunk_frames
        self.spec = spec or nl.allocate(positions, system.cell, system.pbc, cutoff, skin,
                                        long_cutoff=long_cutoff)
        # For the few evaluations outside the compiled chunks.
        self._derived = jax.jit(derive(energy_fn, virial=ensemble.kind == "npt"))
        self.state = init_state(positions, system, energy_fn, self.spec, ensemble, seed, velocities,
                                derived=self._derived)
        start_temperature = float(kinetic_temperature(
            self.state.velocities, jnp.asarray(system.masses), system.degrees_of_freedom))
        self.monitor = None if monitor is None else Monitor(
            monitor, system.numbers, positions, system.cell, system.pbc,
            max(ensemble.temperature, start_temperature), system.degrees_of_freedom)
        self.instability: str | None = None  # why the run stopped, in words
        self.step = 0
        self._chunks: dict[int, Callable] = {}

    def set_state(self, positions, velocities_fs, chain, key, step: int, cell=None,
                  cell_momentum=None, barostat_chain=None) -> None:
        """Continue from saved arrays (restart); forces and neighbours are recomputed.
        ``cell``, ``cell_momentum``, ``barostat_chain``: the saved cell (default: the
        system's) and NPT barostat variables (default zero)."""
        x = jnp.asarray(positions, jnp.float64)
        cell = jnp.asarray(self.system.cell if cell is None else cell, jnp.float64)
        v = jnp.asarray(velocities_fs, jnp.float64) / units.fs
        self.state = start_state(x, v, cell, self.energy_fn, self.spec, self.ensemble,
                                 jnp.asarray(key), chain, cell_momentum, barostat_chain,
                                 derived=self._derived)
        self.step = int(step)

    def _rebuilt(self, state: MDState, verlet: nl.VerletList) -> MDState:
        """``state`` with its list rebuilt where ``verlet`` was built (its reference positions
        and cell: the same rebuild schedule) under the current spec, and energy, forces and
        virial recomputed (those of an overflowing list are wrong)."""
        nbrs = nl.build(state.positions, state.cell, self.spec, verlet.reference,
                        verlet.reference_cell)
        out = self._derived(state.positions, state.cell, nbrs)
        return state._replace(neighbours=nbrs, energy=out.energy, forces=out.forces,
                              virial=state.virial if out.virial is None else out.virial)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Host arrays that :meth:`set_state` takes back (for restart files)."""
        s = jax.device_get(self.state)
        return dict(
            positions=np.asarray(s.positions),
            velocities=np.asarray(s.velocities) * units.fs,
            cell=np.asarray(s.cell),
            cell_momentum=np.asarray(s.cell_momentum),
            barostat_chain=np.asarray(s.barostat_chain),
            chain=np.asarray(s.chain),
            key=np.asarray(s.key),
            step=np.asarray(self.step),
        )

    def _compiled_chunk(self, n_frames: int):
        if n_frames not in self._chunks:
            step_fn = make_step_fn(self.ensemble, self.system, self.energy_fn, self.spec)
            self._chunks[n_frames] = make_chunk_fn(
                step_fn, self.ensemble, self.system, self.monitor, n_frames, self.stride
            )
        return self._chunks[n_frames]

    def run_chunk(self, n_frames: int | None = None) -> tuple[Frames, int | None, int]:
        """One chunk of ``n_frames`` frames (default ``chunk_frames``).

        Returns ``(frames, unstable_step or None, reallocations)`` and advances the state.
        """
        n_frames = n_frames or self.chunk_frames
        reallocations = 0
        while True:
            start = self.state
            state, unstable_at, frames = self._compiled_chunk(n_frames)(start, jnp.asarray(-1))
            if not bool(state.neighbours.overflow):
                break
            # Grow, rebuild at the last build's positions (same rebuild schedule), redo.
            self.spec = nl.grow(self.spec, state.neighbours)
            self.state = self._rebuilt(start, start.neighbours.verlet)
            self._chunks.clear()
            reallocations += 1
        frames = jax.device_get(frames)
        n_steps = n_frames * self.stride
        steps = self.step + self.stride * (1 + np.arange(n_frames))
        frames = Frames(step=steps, **{k: np.asarray(v) for k, v in frames.items()})
        self.state = state
        unstable = int(unstable_at)
        if unstable >= 0:
            unstable += self.step + 1
            self.instability = self._diagnose(state)
            frames = frames.head(int(np.sum(frames.stable)))
            self.step = unstable
        else:
            self.step += n_steps
            unstable = None
        return frames, unstable, reallocations

    def _diagnose(self, state: MDState) -> str:
        if self.monitor is None:
            return "non-finite energy or forces"
        t = kinetic_temperature(state.velocities, jnp.asarray(self.system.masses),
                                self.system.degrees_of_freedom)
        return self.monitor.diagnose(state.positions, state.forces, state.cell,
                                     state.neighbours, t) or "non-finite energy"

    def run(
        self,
        n_steps: int,
        on_frames: Callable[[Frames], None] | None = None,
    ) -> RunSummary:
        """Run ``n_steps`` steps (a multiple of ``stride``), passing frames to ``on_frames``."""
        if n_steps % self.stride:
            raise ValueError(f"steps ({n_steps}) must be a multiple of the frame stride ({self.stride})")
        summary = RunSummary()
        first, target = self.step, self.step + n_steps
        t0 = time.perf_counter()
        while self.step < target:
            n_frames = min(self.chunk_frames, (target - self.step) // self.stride)
            frames, unstable, realloc = self.run_chunk(n_frames)
            summary.reallocations += realloc
            summary.frames += len(frames)
            if on_frames is not None and len(frames):
                on_frames(frames)
            if unstable is not None:
                summary.stable = False
                summary.time_to_instability_fs = unstable * self.ensemble.timestep
                summary.instability = self.instability
                break
        summary.steps = self.step - first
        summary.wall_seconds = time.perf_counter() - t0
        return summary
