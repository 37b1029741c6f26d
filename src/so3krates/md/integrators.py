"""Integrators as pure functions: NVE velocity Verlet, Langevin BAOAB, Nosé–Hoover chains, and
NPT by the Martyna–Tobias–Klein barostat.

State lives in an :class:`MDState`; ``step(state) -> state`` advances one timestep,
rebuilding the neighbour list inside when atoms moved far enough. Internally positions are
Å, velocities Å per ASE time unit, masses amu, energies eV, so ``KE = m v² / 2`` is in eV
with no conversion factor; user-facing times are fs.

References: Leimkuhler & Matthews (2013) for BAOAB; Martyna, Tuckerman, Klein (1996) and
Martyna et al. (1996, Mol. Phys.) for the Nosé–Hoover chain with Suzuki–Yoshida factorisation;
Martyna, Tobias, Klein (1994) and Tuckerman et al. (2006, J. Phys. A) for MTK NPT: the cell
``h`` (rows) moves with a symmetric momentum ``p_g`` (full, triclinic fluctuations) or one
proportional to the identity (isotropic), each coupled to its own Nosé–Hoover chain, with an
exactly conserved extended energy (see :func:`conserved_energy`). MTK was chosen over
stochastic cell rescaling because its conserved quantity makes integration errors visible
(a drift test, as for NVE) and it is what LAMMPS' ``fix npt`` and ASE's ``MTKNPT`` run.
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

ENSEMBLES = ("nve", "langevin", "nose-hoover", "npt")
SUZUKI_YOSHIDA_3 = (1 / (2 - 2 ** (1 / 3)), 1 - 2 / (2 - 2 ** (1 / 3)), 1 / (2 - 2 ** (1 / 3)))


class Ensemble(NamedTuple):
    """Integrator settings (static).

    Attributes:
        kind: ``"nve"``, ``"langevin"`` (BAOAB), ``"nose-hoover"`` (chain) or ``"npt"``
            (MTK barostat with Nosé–Hoover chains).
        timestep: fs.
        temperature: K (thermostats and initial velocities).
        friction: Langevin friction in 1/fs.
        tau: Nosé–Hoover coupling time in fs.
        chain_length: number of Nosé–Hoover thermostats in the chain (also the barostat's).
        pressure: NPT target pressure in bar (1 bar = 1e-4 GPa).
        barostat_tau: NPT barostat time in fs (cell oscillations of about this period).
        isotropic: NPT with the cell's shape fixed (only its volume fluctuates).
    """

    kind: Literal["nve", "langevin", "nose-hoover", "npt"] = "nve"
    timestep: float = 0.5
    temperature: float = 300.0
    friction: float = 0.01
    tau: float = 100.0
    chain_length: int = 3
    pressure: float = 1.0
    barostat_tau: float = 1000.0
    isotropic: bool = False

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
        virial: dE/dε (3, 3) eV at ``positions`` (NPT; zeros otherwise).
        cell_momentum: the MTK barostat's momentum p_g (3, 3) (NPT; zeros otherwise).
        barostat_chain: the barostat's Nosé–Hoover chain, (2, M) (NPT; zeros otherwise).
    """

    positions: jnp.ndarray
    velocities: jnp.ndarray
    forces: jnp.ndarray
    energy: jnp.ndarray
    cell: jnp.ndarray
    chain: jnp.ndarray
    key: jnp.ndarray
    neighbours: nl.Neighbours
    virial: jnp.ndarray
    cell_momentum: jnp.ndarray
    barostat_chain: jnp.ndarray


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
    ke2 = 2.0 * kinetic_energy(velocities, masses)
    scale, chain = nhc_half_step(ke2, chain, chain_masses(ensemble, dof), ensemble.kT, dof,
                                 ensemble.dt)
    return velocities * scale, chain


def nhc_half_step(ke2, chain, q, kT: float, dof: int, dt: float):
    """exp(iL_NHC dt/2) of a Nosé–Hoover chain (positions and velocities ``chain`` (2, M),
    masses ``q`` (M,)) coupled to momenta of kinetic energy ``ke2 / 2`` with ``dof`` degrees
    of freedom: returns the factor that scales those momenta, and the new chain."""
    eta, v_eta = chain[0], chain[1]
    m = chain.shape[1]

    def kick(k, v_eta, ke2, delta):
        """Thermostat k's velocity, damped by thermostat k+1 on both sides of its force."""
        damp = jnp.exp(-delta / 4.0 * v_eta[k + 1]) if k < m - 1 else 1.0
        force = (ke2 - dof * kT) / q[0] if k == 0 else (q[k - 1] * v_eta[k - 1] ** 2 - kT) / q[k]
        return v_eta.at[k].set((v_eta[k] * damp + delta / 2.0 * force) * damp)

    scale = 1.0
    for w in SUZUKI_YOSHIDA_3:
        delta = w * dt / 2.0
        for k in reversed(range(m)):  # from the end of the chain to the particles
            v_eta = kick(k, v_eta, ke2, delta)
        eta = eta + delta * v_eta
        s = jnp.exp(-delta * v_eta[0])
        scale, ke2 = scale * s, ke2 * s * s
        for k in range(m):  # back from the particles to the end of the chain
            v_eta = kick(k, v_eta, ke2, delta)
    return scale, jnp.stack([eta, v_eta])


def barostat_mass(ensemble: Ensemble, n_atoms: int) -> float:
    """The MTK cell mass W = (N + 1) kT τ_p² (eV · ASE time²)."""
    return (n_atoms + 1) * ensemble.kT * (ensemble.barostat_tau * units.fs) ** 2


def cell_dof(ensemble: Ensemble) -> int:
    """Degrees of freedom of the cell: 1 (isotropic) or 6 (symmetric p_g)."""
    return 1 if ensemble.isotropic else 6


def exprel(x):
    """(e^x - 1) / x, 1 at 0 (no 0/0)."""
    small = jnp.abs(x) < 1e-8
    return jnp.where(small, 1.0 + 0.5 * x, jnp.expm1(x) / jnp.where(small, 1.0, x))


def pressure_tensor(velocities, masses, virial, cell):
    """(Σ m v⊗v - dE/dε) / V: the instantaneous pressure tensor in eV/Å³ (kinetic part
    included; compression positive)."""
    p = masses[:, None] * velocities
    volume = jnp.abs(jnp.linalg.det(cell))
    return (p.T @ velocities - virial) / volume


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
    forces_fn = derive(energy_fn, virial=ensemble.kind == "npt")

    def forces_at(positions, nbrs, cell):
        nbrs = nl.update(positions, cell, nbrs, spec)
        out = forces_fn(positions, cell, nbrs)
        return out.energy, out.forces, nbrs, out.virial

    def verlet(state: MDState) -> MDState:
        v = state.velocities + 0.5 * dt * state.forces * inv_m
        x = state.positions + dt * v
        energy, forces, nbrs, _ = forces_at(x, state.neighbours, state.cell)
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
        energy, forces, nbrs, _ = forces_at(x, state.neighbours, state.cell)
        v = v + 0.5 * dt * forces * inv_m
        return state._replace(positions=x, velocities=v, forces=forces, energy=energy, key=key,
                              neighbours=nbrs)

    def nose_hoover(state: MDState) -> MDState:
        v, chain = _chain_half_step(state.velocities, masses, state.chain, ensemble, dof)
        state = verlet(state._replace(velocities=v, chain=chain))
        v, chain = _chain_half_step(state.velocities, masses, state.chain, ensemble, dof)
        return state._replace(velocities=v, chain=chain)

    w_cell = barostat_mass(ensemble, system.n_atoms) if ensemble.kind == "npt" else 1.0
    q_cell = chain_masses(ensemble._replace(tau=ensemble.barostat_tau), cell_dof(ensemble))
    p0 = ensemble.pressure * units.bar

    def cell_force(v, virial, cell):
        """G = V (Π - P0) + (Σ m v²) / N_f: the force on the cell momentum."""
        volume = jnp.abs(jnp.linalg.det(cell))
        ke2 = 2.0 * kinetic_energy(v, masses)
        g = volume * (pressure_tensor(v, masses, virial, cell) - p0 * jnp.eye(3))
        g = g + ke2 / dof * jnp.eye(3)
        if ensemble.isotropic:
            g = jnp.trace(g) / 3.0 * jnp.eye(3)
        return 0.5 * (g + g.T)

    def in_eigenbasis(p_g):
        lam, u = jnp.linalg.eigh(p_g)
        return lam / w_cell, u

    def kick(v, forces, p_g, delta):
        """exp(iL_2 δ): momenta under the forces and the cell's friction-like coupling."""
        lam, u = in_eigenbasis(p_g)
        kappa = lam + jnp.trace(p_g) / (dof * w_cell)
        p = (masses[:, None] * v) @ u
        p = p * jnp.exp(-kappa * delta) + delta * (forces @ u) * exprel(-kappa * delta)
        return (p @ u.T) * inv_m

    def drift(x, v, cell, p_g, delta):
        """exp(iL_1 δ) and the cell's exp(iL_g1 δ): positions and cell deform together."""
        lam, u = in_eigenbasis(p_g)
        x = (x @ u) * jnp.exp(lam * delta) + delta * (v @ u) * exprel(lam * delta)
        cell = (cell @ u) * jnp.exp(lam * delta)
        return x @ u.T, cell @ u.T

    def thermostats(state: MDState) -> MDState:
        ke2_cell = jnp.sum(state.cell_momentum**2) / w_cell
        s, bchain = nhc_half_step(ke2_cell, state.barostat_chain, q_cell, kT, cell_dof(ensemble), dt)
        v, chain = _chain_half_step(state.velocities, masses, state.chain, ensemble, dof)
        return state._replace(velocities=v, chain=chain, cell_momentum=state.cell_momentum * s,
                              barostat_chain=bchain)

    def npt(state: MDState) -> MDState:
        state = thermostats(state)
        p_g = state.cell_momentum + 0.5 * dt * cell_force(state.velocities, state.virial, state.cell)
        v = kick(state.velocities, state.forces, p_g, 0.5 * dt)
        x, cell = drift(state.positions, v, state.cell, p_g, dt)
        energy, forces, nbrs, virial = forces_at(x, state.neighbours, cell)
        v = kick(v, forces, p_g, 0.5 * dt)
        p_g = p_g + 0.5 * dt * cell_force(v, virial, cell)
        state = state._replace(positions=x, velocities=v, forces=forces, energy=energy, cell=cell,
                               neighbours=nbrs, virial=virial, cell_momentum=p_g)
        # The thermostats' second half, in the reverse order (a symmetric splitting).
        ke2_cell = jnp.sum(state.cell_momentum**2) / w_cell
        v, chain = _chain_half_step(state.velocities, masses, state.chain, ensemble, dof)
        s, bchain = nhc_half_step(ke2_cell, state.barostat_chain, q_cell, kT, cell_dof(ensemble), dt)
        return state._replace(velocities=v, chain=chain, cell_momentum=state.cell_momentum * s,
                              barostat_chain=bchain)

    return {"nve": verlet, "langevin": baoab, "nose-hoover": nose_hoover, "npt": npt}[ensemble.kind]


def conserved_energy(state: MDState, ensemble: Ensemble, system: System) -> jnp.ndarray:
    """The quantity the integrator conserves, eV: E_pot + E_kin, plus the chain's energy for
    Nosé–Hoover, plus for NPT the cell's kinetic energy, P0 V and the barostat chain's energy
    (Langevin conserves nothing; this is then the plain total energy)."""
    total = state.energy + kinetic_energy(state.velocities, jnp.asarray(system.masses))
    if ensemble.kind not in ("nose-hoover", "npt"):
        return total
    dof, kT = system.degrees_of_freedom, ensemble.kT
    total = total + chain_energy(state.chain, chain_masses(ensemble, dof), kT, dof)
    if ensemble.kind == "npt":
        d = cell_dof(ensemble)
        q_cell = chain_masses(ensemble._replace(tau=ensemble.barostat_tau), d)
        w_cell = barostat_mass(ensemble, system.n_atoms)
        volume = jnp.abs(jnp.linalg.det(state.cell))
        total = (total + jnp.sum(state.cell_momentum**2) / (2.0 * w_cell)
                 + ensemble.pressure * units.bar * volume
                 + chain_energy(state.barostat_chain, q_cell, kT, d))
    return total


def chain_energy(chain, q, kT: float, dof: int) -> jnp.ndarray:
    """Energy of a Nosé–Hoover chain (2, M) with masses ``q`` thermostatting ``dof`` degrees."""
    eta, v_eta = chain[0], chain[1]
    return jnp.sum(0.5 * q * v_eta**2) + dof * kT * eta[0] + kT * jnp.sum(eta[1:])


def init_state(
    positions: np.ndarray,
    system: System,
    energy_fn: EnergyFn,
    spec: nl.NeighbourSpec,
    ensemble: Ensemble,
    seed: int = 0,
    velocities: np.ndarray | None = None,
    derived=None,
) -> MDState:
    """A state at ``positions`` with Maxwell–Boltzmann velocities (or the ones given, in Å/fs);
    ``derived``: see :func:`start_state`."""
    key, v_key = jax.random.split(jax.random.PRNGKey(seed))
    x = jnp.asarray(positions, jnp.float64)
    if velocities is None:
        v = maxwell_boltzmann(v_key, system.masses, ensemble.temperature, system.degrees_of_freedom)
    else:
        v = jnp.asarray(velocities, jnp.float64) / units.fs
    return start_state(x, v, jnp.asarray(system.cell), energy_fn, spec, ensemble, key,
                       derived=derived)


def start_state(positions, velocities, cell, energy_fn: EnergyFn, spec: nl.NeighbourSpec,
                ensemble: Ensemble, key, chain=None, cell_momentum=None,
                barostat_chain=None, derived=None) -> MDState:
    """A state from positions (Å), velocities (ASE units) and cell (Å), with neighbours,
    energy, forces and (NPT) virial computed; thermostat and barostat variables zero unless
    given (restarts). ``derived``: the jitted ``derive(energy_fn, virial=...)`` to reuse
    (the engine keeps one; default: one compiled here)."""
    if derived is None:
        derived = jax.jit(derive(energy_fn, virial=ensemble.kind == "npt"))
    nbrs = nl.build(positions, cell, spec)
    out = derived(positions, cell, nbrs)
    zeros_chain = jnp.zeros((2, ensemble.chain_length))
    return MDState(
        positions, velocities, out.forces, out.energy, cell,
        zeros_chain if chain is None else jnp.asarray(chain), key, nbrs,
        jnp.zeros((3, 3)) if out.virial is None else out.virial,
        jnp.zeros((3, 3)) if cell_momentum is None else jnp.asarray(cell_momentum),
        zeros_chain if barostat_chain is None else jnp.asarray(barostat_chain),
    )
