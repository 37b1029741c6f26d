"""Integrators as pure functions: NVE velocity Verlet, Langevin BAOAB, Nosé–Hoover chains.

State lives in an :class:`MDState`; ``step(state) -> state`` advances one timestep,
rebuilding the neighbour list inside when atoms moved far enough. Internally positions are
Å, velocities Å per ASE time unit, masses amu, energies eV, so ``KE = m v² / 2`` is in eV
with no conversion factor; user-facing times are fs.

References: Leimkuhler & Matthews (2013) for BAOAB; Martyna, Tuckerman, Klein (1996) and
Martyna et al. (1996, Mol. Phys.) for the Nosé–Hoover chain with Suzuki–Yoshida factorisation.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase import units

from so3krates.md.system import EnergyFn, System
from so3krates.neighbours import verlet as nl
from so3krates.potential import derive

ENSEMBLES = ("nve", "langevin", "nose-hoover")
SUZUKI_YOSHIDA_3 = (1 / (2 - 2 ** (1 / 3)), 1 - 2 / (2 - 2 ** (1 / 3)), 1 / (2 - 2 ** (1 / 3)))


class Ensemble(NamedTuple):
    """Integrator settings (static).

    Attributes:
        kind: ``"nve"``, ``"langevin"`` (BAOAB) or ``"nose-hoover"`` (chain).
        timestep: fs.
        temperature: K (thermostats and initial velocities).
        friction: Langevin friction in 1/fs.
        tau: Nosé–Hoover coupling time in fs.
        chain_length: number of Nosé–Hoover thermostats in the chain.
    """

    kind: Literal["nve", "langevin", "nose-hoover"] = "nve"
    timestep: float = 0.5
    temperature: float = 300.0
    friction: float = 0.01
    tau: float = 100.0
    chain_length: int = 3

    @property
    def dt(self) -> float:
        """The timestep in ASE time units."""
        return self.timestep * units.fs

    @property
    def kT(self) -> float:
        return units.kB * self.temperature


class MDState(NamedTuple):
    """Everything a step needs (a pytree).

    Attributes:
        positions: (N, 3) Å, float64, unwrapped.
        velocities: (N, 3) Å per ASE time unit.
        forces: (N, 3) eV/Å at ``positions``.
        energy: potential energy, eV.
        cell: (3, 3) lattice vectors as rows, Å (fixed but in NPT).
        chain: Nosé–Hoover chain positions and velocities, (2, M) (zeros otherwise).
        key: PRNG key of the Langevin noise.
        neighbours: the current neighbour list.
    """

    positions: jnp.ndarray
    velocities: jnp.ndarray
    forces: jnp.ndarray
    energy: jnp.ndarray
    cell: jnp.ndarray
    chain: jnp.ndarray
    key: jnp.ndarray
    neighbours: nl.Neighbours


def kinetic_energy(velocities: jnp.ndarray, masses: jnp.ndarray) -> jnp.ndarray:
    """Σ m v² / 2 in eV (velocities in ASE units)."""
    return 0.5 * jnp.sum(masses[:, None] * velocities * velocities)


def temperature(velocities: jnp.ndarray, masses: jnp.ndarray, dof: int) -> jnp.ndarray:
    """Instantaneous kinetic temperature in K for ``dof`` degrees of freedom."""
    return 2.0 * kinetic_energy(velocities, masses) / (dof * units.kB)


def remove_com_velocity(velocities: jnp.ndarray, masses: jnp.ndarray) -> jnp.ndarray:
    """Velocities with zero total momentum."""
    p = jnp.sum(masses[:, None] * velocities, axis=0)
    return velocities - p / jnp.sum(masses)


def maxwell_boltzmann(key: jnp.ndarray, masses: np.ndarray, temperature_K: float, dof: int) -> jnp.ndarray:
    """Velocities drawn at ``temperature_K``, zero total momentum, rescaled to exactly that T.

    Exact rescaling removes the large finite-size scatter of the initial temperature of small
    molecules (21 atoms: ±25 %), which otherwise dominates the first picoseconds.
    """
    m = jnp.asarray(masses)
    v = jax.random.normal(key, (len(masses), 3), jnp.float64) * jnp.sqrt(units.kB * temperature_K / m)[:, None]
    v = remove_com_velocity(v, m)
    t = temperature(v, m, dof)
    return jnp.where(t > 0, v * jnp.sqrt(temperature_K / jnp.maximum(t, 1e-30)), v)


def chain_masses(ensemble: Ensemble, dof: int) -> jnp.ndarray:
    """Nosé–Hoover thermostat masses Q_1 = dof kT τ², Q_k = kT τ² (eV · ASE time²)."""
    tau = ensemble.tau * units.fs
    q = jnp.full(ensemble.chain_length, ensemble.kT * tau**2)
    return q.at[0].multiply(dof)


def _chain_half_step(velocities, masses, chain, ensemble: Ensemble, dof: int):
    """exp(iL_NHC dt/2): couples the chain to the particles for half a timestep."""
    kT, q = ensemble.kT, chain_masses(ensemble, dof)
    eta, v_eta = chain[0], chain[1]
    ke2 = 2.0 * kinetic_energy(velocities, masses)
    m = ensemble.chain_length

    def kick(k, v_eta, ke2, delta):
        """Thermostat k's velocity, damped by thermostat k+1 on both sides of its force."""
        damp = jnp.exp(-delta / 4.0 * v_eta[k + 1]) if k < m - 1 else 1.0
        force = (ke2 - dof * kT) / q[0] if k == 0 else (q[k - 1] * v_eta[k - 1] ** 2 - kT) / q[k]
        return v_eta.at[k].set((v_eta[k] * damp + delta / 2.0 * force) * damp)

    scale = 1.0
    for w in SUZUKI_YOSHIDA_3:
        delta = w * ensemble.dt / 2.0
        for k in reversed(range(m)):  # from the end of the chain to the particles
            v_eta = kick(k, v_eta, ke2, delta)
        eta = eta + delta * v_eta
        s = jnp.exp(-delta * v_eta[0])
        scale, ke2 = scale * s, ke2 * s * s
        for k in range(m):  # back from the particles to the end of the chain
            v_eta = kick(k, v_eta, ke2, delta)
    return velocities * scale, jnp.stack([eta, v_eta])


def make_step_fn(
    ensemble: Ensemble, system: System, energy_fn: EnergyFn, spec: nl.NeighbourSpec
) -> Callable[[MDState], MDState]:
    """``step(state) -> state`` for ``ensemble`` (a pure, jittable function); forces are the
    gradient of ``energy_fn`` (see ``so3krates.md.system``)."""
    if ensemble.kind not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble.kind!r}; choose one of {ENSEMBLES}")
    masses = jnp.asarray(system.masses)
    inv_m = (1.0 / masses)[:, None]
    dt, kT, dof = ensemble.dt, ensemble.kT, system.degrees_of_freedom
    forces_fn = derive(energy_fn)

    def forces_at(positions, nbrs, cell):
        nbrs = nl.update(positions, cell, nbrs, spec)
        out = forces_fn(positions, cell, nbrs)
        return out.energy, out.forces, nbrs

    def verlet(state: MDState) -> MDState:
        v = state.velocities + 0.5 * dt * state.forces * inv_m
        x = state.positions + dt * v
        energy, forces, nbrs = forces_at(x, state.neighbours, state.cell)
        v = v + 0.5 * dt * forces * inv_m
        return state._replace(positions=x, velocities=v, forces=forces, energy=energy, neighbours=nbrs)

    def baoab(state: MDState) -> MDState:
        c1 = jnp.exp(-ensemble.friction / units.fs * dt)
        c2 = jnp.sqrt((1.0 - c1 * c1) * kT) * jnp.sqrt(inv_m)
        key, noise_key = jax.random.split(state.key)
        v = state.velocities + 0.5 * dt * state.forces * inv_m
        x = state.positions + 0.5 * dt * v
        v = c1 * v + c2 * jax.random.normal(noise_key, v.shape, v.dtype)
        # The noise would make the centre of mass random-walk; keep its momentum at zero.
        v = remove_com_velocity(v, masses)
        x = x + 0.5 * dt * v
        energy, forces, nbrs = forces_at(x, state.neighbours, state.cell)
        v = v + 0.5 * dt * forces * inv_m
        return MDState(x, v, forces, energy, state.cell, state.chain, key, nbrs)

    def nose_hoover(state: MDState) -> MDState:
        v, chain = _chain_half_step(state.velocities, masses, state.chain, ensemble, dof)
        state = verlet(state._replace(velocities=v, chain=chain))
        v, chain = _chain_half_step(state.velocities, masses, state.chain, ensemble, dof)
        return state._replace(velocities=v, chain=chain)

    return {"nve": verlet, "langevin": baoab, "nose-hoover": nose_hoover}[ensemble.kind]


def conserved_energy(state: MDState, ensemble: Ensemble, system: System) -> jnp.ndarray:
    """The quantity the integrator conserves, eV: E_pot + E_kin, plus the chain's energy for
    Nosé–Hoover (Langevin conserves nothing; this is then the plain total energy)."""
    total = state.energy + kinetic_energy(state.velocities, jnp.asarray(system.masses))
    if ensemble.kind != "nose-hoover":
        return total
    dof, kT = system.degrees_of_freedom, ensemble.kT
    q = chain_masses(ensemble, dof)
    eta, v_eta = state.chain[0], state.chain[1]
    return total + jnp.sum(0.5 * q * v_eta**2) + dof * kT * eta[0] + kT * jnp.sum(eta[1:])


def init_state(
    positions: np.ndarray,
    system: System,
    energy_fn: EnergyFn,
    spec: nl.NeighbourSpec,
    ensemble: Ensemble,
    seed: int = 0,
    velocities: np.ndarray | None = None,
) -> MDState:
    """A state at ``positions`` with Maxwell–Boltzmann velocities (or the ones given, in Å/fs)."""
    key, v_key = jax.random.split(jax.random.PRNGKey(seed))
    x = jnp.asarray(positions, jnp.float64)
    if velocities is None:
        v = maxwell_boltzmann(v_key, system.masses, ensemble.temperature, system.degrees_of_freedom)
    else:
        v = jnp.asarray(velocities, jnp.float64) / units.fs
    cell = jnp.asarray(system.cell)
    nbrs = nl.build(x, cell, spec)
    out = derive(energy_fn)(x, cell, nbrs)
    chain = jnp.zeros((2, ensemble.chain_length))
    return MDState(x, v, out.forces, out.energy, cell, chain, key, nbrs)
