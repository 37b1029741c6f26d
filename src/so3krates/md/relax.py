"""Geometry optimisation: FIRE in pure JAX (batched), and any ASE optimiser.

:func:`fire_relax` is the Fast Inertial Relaxation Engine of Bitzek et al., Phys. Rev. Lett.
97, 170201 (2006), with the parameters and the step (semi-implicit Euler, displacement cap)
of ``ase.optimize.FIRE``. Several structures are relaxed together: each keeps its own FIRE
state (time step, mixing ``alpha``, convergence flag) and stops moving once converged; one
``lax.while_loop`` runs until all are converged or ``max_steps`` is reached.

:func:`relax_ase` runs ``ase.optimize`` as-is through any ASE calculator.

Units are ASE's: Å, eV, eV/Å, amu, and ASE's internal time unit (1 = 10.18 fs).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from so3krates.compile import jit

# One structure's ``positions (N, 3) -> (energy, forces)``; unlike ``system.ForceFn`` it builds
# its own neighbours (see ``system.positions_force_fn``). It is vmapped over a batch, which
# turns the model's reverse-pair ``lax.cond`` into a select: batched relaxations do not get
# that saving.
PositionsForceFn = Callable[[jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray]]


class RelaxResult(NamedTuple):
    """Outcome of a relaxation; leading axis (B,) for a batch, none for one structure.

    Attributes:
        positions: relaxed positions in Å, shape ([B,] N, 3).
        energy: energy at ``positions`` in eV, shape ([B]).
        fmax: largest atomic force norm at ``positions`` in eV/Å, shape ([B]).
        converged: whether ``fmax <= fmax`` tolerance was reached, shape ([B]), bool.
        steps: optimiser steps taken (force evaluations after the first), shape ([B]), int.
    """

    positions: jnp.ndarray
    energy: jnp.ndarray
    fmax: jnp.ndarray
    converged: jnp.ndarray
    steps: jnp.ndarray


class FireState(NamedTuple):
    """Per-structure FIRE state (one structure; vmapped over a batch)."""

    positions: jnp.ndarray  # (N, 3) Å
    velocities: jnp.ndarray  # (N, 3) Å / ASE time
    energy: jnp.ndarray  # () eV
    forces: jnp.ndarray  # (N, 3) eV/Å, zero on masked atoms
    dt: jnp.ndarray  # () ASE time
    alpha: jnp.ndarray  # () mixing parameter
    n_pos: jnp.ndarray  # () int, steps since the last uphill (P <= 0) step
    converged: jnp.ndarray  # () bool
    steps: jnp.ndarray  # () int


def _fmax(forces: jnp.ndarray) -> jnp.ndarray:
    """Largest atomic force norm of (N, 3) forces (0 for no atoms)."""
    return jnp.max(jnp.linalg.norm(forces, axis=-1), initial=0.0)


def fire_init(
    force_fn: PositionsForceFn, positions: jnp.ndarray, atom_mask: jnp.ndarray, fmax: float, dt_start: float, alpha_start: float
) -> FireState:
    """FIRE state of one structure at rest; ``atom_mask`` (N,) bool marks the real atoms."""
    energy, forces = force_fn(positions)
    forces = jnp.where(atom_mask[:, None], forces, 0.0)
    return FireState(
        positions=positions,
        velocities=jnp.zeros_like(positions),
        energy=jnp.asarray(energy),  # kept in its own dtype (float64 for so3krates)
        forces=forces.astype(positions.dtype),
        dt=jnp.asarray(dt_start, positions.dtype),
        alpha=jnp.asarray(alpha_start, positions.dtype),
        n_pos=jnp.asarray(0, jnp.int32),
        converged=_fmax(forces) <= fmax,
        steps=jnp.asarray(0, jnp.int32),
    )


def fire_step(
    force_fn: PositionsForceFn,
    state: FireState,
    masses: jnp.ndarray,
    atom_mask: jnp.ndarray,
    fmax: float,
    dt_max: float,
    n_min: int,
    f_inc: float,
    f_dec: float,
    alpha_start: float,
    f_alpha: float,
    maxstep: float,
) -> FireState:
    """One FIRE step of one structure (as ``ase.optimize.FIRE.step``); a no-op once converged.

    Args:
        force_fn: ``positions (N, 3) -> (energy (), forces (N, 3))`` in eV and eV/Å.
        state: the current state.
        masses: (N,) in amu (ones for "unit masses", as ASE's FIRE).
        atom_mask: (N,) bool; False atoms (padding) never move.
        The rest: see :func:`fire_relax`.
    """
    f, v = state.forces, state.velocities
    power = jnp.vdot(f, v)
    f_norm = jnp.sqrt(jnp.vdot(f, f))
    v_norm = jnp.sqrt(jnp.vdot(v, v))
    downhill = power > 0
    # The first step starts at rest (P = 0): neither accelerate nor reset, as ASE does.
    uphill = (power <= 0) & (state.steps > 0)
    # Downhill: steer the velocity towards the force; after N_min such steps grow dt and
    # shrink alpha (more inertia). Uphill: stop, restart cautiously with a smaller dt.
    mixed = (1.0 - state.alpha) * v + state.alpha * f / jnp.where(f_norm > 0, f_norm, 1.0) * v_norm
    accelerate = downhill & (state.n_pos > n_min)
    v = jnp.where(downhill, mixed, jnp.where(uphill, 0.0, v))
    dt = jnp.where(accelerate, jnp.minimum(state.dt * f_inc, dt_max), jnp.where(uphill, state.dt * f_dec, state.dt))
    alpha = jnp.where(accelerate, state.alpha * f_alpha, jnp.where(uphill, alpha_start, state.alpha))
    n_pos = jnp.where(downhill, state.n_pos + 1, jnp.where(uphill, 0, state.n_pos))

    v = v + dt * f / masses[:, None]
    dr = dt * v
    # Cap the largest atomic displacement at ``maxstep`` (uniform scaling keeps the direction).
    largest = _fmax(dr)
    dr = dr * jnp.minimum(1.0, maxstep / jnp.where(largest > 0, largest, 1.0))
    dr = jnp.where(atom_mask[:, None], dr, 0.0)
    positions = state.positions + dr

    energy, forces = force_fn(positions)
    forces = jnp.where(atom_mask[:, None], forces, 0.0).astype(positions.dtype)
    new = FireState(
        positions=positions,
        velocities=jnp.where(atom_mask[:, None], v, 0.0),
        energy=jnp.asarray(energy),  # kept in its own dtype (float64 for so3krates)
        forces=forces,
        dt=dt,
        alpha=alpha,
        n_pos=n_pos.astype(jnp.int32),
        converged=_fmax(forces) <= fmax,
        steps=state.steps + 1,
    )
    # Converged structures of a batch keep their state (they stop moving and counting).
    return jax.tree_util.tree_map(lambda old, upd: jnp.where(state.converged, old, upd), state, new)


@jit(static_argnames=("force_fn",))
def _fire_loop(force_fn, positions, masses, atom_mask, fmax, max_steps, dt_start, dt_max, n_min, f_inc, f_dec,
               alpha_start, f_alpha, maxstep):
    """Batched FIRE: positions (B, N, 3), masses (B, N), atom_mask (B, N)."""
    init = jax.vmap(fire_init, in_axes=(None, 0, 0, None, None, None))
    state = init(force_fn, positions, atom_mask, fmax, dt_start, alpha_start)
    step = jax.vmap(fire_step, in_axes=(None, 0, 0, 0) + (None,) * 8)

    def cond(carry):
        i, s = carry
        return (i < max_steps) & ~jnp.all(s.converged)

    def body(carry):
        i, s = carry
        s = step(force_fn, s, masses, atom_mask, fmax, dt_max, n_min, f_inc, f_dec, alpha_start, f_alpha, maxstep)
        return i + 1, s

    _, state = jax.lax.while_loop(cond, body, (jnp.asarray(0, jnp.int32), state))
    return RelaxResult(
        positions=state.positions,
        energy=state.energy,
        fmax=jax.vmap(_fmax)(state.forces),
        converged=state.converged,
        steps=state.steps,
    )


def fire_relax(
    force_fn: PositionsForceFn,
    positions: jnp.ndarray,
    masses: jnp.ndarray | None = None,
    fmax: float = 0.01,
    max_steps: int = 2000,
    atom_mask: jnp.ndarray | None = None,
    dt_start: float = 0.1,
    dt_max: float = 1.0,
    maxstep: float = 0.2,
    n_min: int = 5,
    f_inc: float = 1.1,
    f_dec: float = 0.5,
    alpha_start: float = 0.1,
    f_alpha: float = 0.99,
) -> RelaxResult:
    """Relax one structure or a batch with FIRE until the largest atomic force is <= ``fmax``.

    The defaults are those of ``ase.optimize.FIRE`` (and Bitzek et al. 2006). Compiled once per
    ``force_fn`` object and input shape: pass the same function object to reuse the compilation.

    Args:
        force_fn: ``positions (N, 3) -> (energy (), forces (N, 3))``, eV and eV/Å, for ONE
            structure; a pure JAX function (it is vmapped over the batch and traced).
        positions: start positions in Å, shape (N, 3) or (B, N, 3).
        masses: atomic masses in amu, shape (N,) or (B, N); None: unit masses, as in ASE's
            FIRE (the path then does not depend on the elements).
        fmax: convergence threshold on the largest atomic force norm in eV/Å.
        max_steps: maximum number of FIRE steps (force evaluations after the first).
        atom_mask: shape (N,) or (B, N), bool; False marks padding atoms: they never move and
            do not count for convergence. Default: all atoms real.
        dt_start: initial time step in ASE time units (0.1 ~ 1 fs).
        dt_max: largest time step in ASE time units (1.0 ~ 10 fs).
        maxstep: largest displacement of any atom in one step in Å.
        n_min: downhill steps before ``dt`` may grow.
        f_inc, f_dec: factors by which ``dt`` grows (downhill) / shrinks (uphill).
        alpha_start, f_alpha: initial velocity-mixing parameter and its decay factor.

    Returns:
        A :class:`RelaxResult`, batched like ``positions``.
    """
    positions = jnp.asarray(positions)
    if not jnp.issubdtype(positions.dtype, jnp.floating):
        positions = positions.astype(jnp.float64)
    single = positions.ndim == 2
    batch = positions[None] if single else positions
    b, n = batch.shape[:2]
    masses = jnp.ones((n,), batch.dtype) if masses is None else jnp.asarray(masses, batch.dtype)
    atom_mask = jnp.ones((n,), bool) if atom_mask is None else jnp.asarray(atom_mask, bool)
    masses = jnp.broadcast_to(masses, (b, n))
    atom_mask = jnp.broadcast_to(atom_mask, (b, n))
    masses = jnp.where(atom_mask, masses, 1.0)  # padding may carry mass 0: avoid 0/0
    result = _fire_loop(
        force_fn, batch, masses, atom_mask, fmax, max_steps, dt_start, dt_max, n_min, f_inc, f_dec,
        alpha_start, f_alpha, maxstep,
    )
    return jax.tree_util.tree_map(lambda x: x[0], result) if single else result


class AseRelaxResult(NamedTuple):
    """Outcome of :func:`relax_ase`.

    Attributes:
        atoms: the relaxed structure (a copy; the calculator attached).
        positions: relaxed positions in Å, (N, 3).
        energy: potential energy in eV.
        fmax: largest atomic force norm in eV/Å (constraints applied, as the optimiser sees it).
        converged: whether ``fmax`` (and with ``cell``, ``smax``) was reached within ``steps``.
        steps: optimiser steps taken.
        smax: with ``cell``, the largest deviation of the stress from ``-pressure`` in eV/Å³.
    """

    atoms: object
    positions: np.ndarray
    energy: float
    fmax: float
    converged: bool
    steps: int
    smax: float | None = None


def relax_ase(
    atoms,
    calculator,
    optimizer: str = "BFGS",
    fmax: float = 0.01,
    steps: int = 1000,
    trajectory: str | None = None,
    logfile: str | None = None,
    cell: bool = False,
    pressure: float = 0.0,
    smax: float = 1e3 * 1e-4 / 160.21766208,
    **optimizer_kwargs,
) -> AseRelaxResult:
    """Relax ``atoms`` with an ``ase.optimize`` optimiser through any ASE calculator.

    Args:
        atoms: ``ase.Atoms``; not modified (a copy is relaxed; constraints are kept).
        calculator: any ASE calculator (e.g. ``So3kratesCalculator``).
        optimizer: a class name in ``ase.optimize``: "BFGS", "FIRE", "LBFGS", ...
        fmax: convergence threshold on the largest atomic force norm in eV/Å.
        steps: maximum number of optimiser steps.
        trajectory: optional ``.traj`` path to write the optimisation to.
        logfile: optional log path ("-" for stdout); None: silent.
        cell: relax the cell too (``ase.filters.FrechetCellFilter``), to ``|σ + P| <= smax``.
        pressure: external pressure in eV/Å³ (with ``cell``).
        smax: stress threshold in eV/Å³ (with ``cell``; default 0.1 GPa): the filter's cell
            factor is chosen so that ``fmax`` on its cell degrees of freedom means this.
        **optimizer_kwargs: passed to the optimiser (e.g. ``maxstep``).
    """
    import ase.optimize

    try:
        cls = getattr(ase.optimize, optimizer)
    except AttributeError:
        raise ValueError(f"unknown ASE optimizer {optimizer!r}; e.g. 'BFGS', 'FIRE', 'LBFGS'") from None
    atoms = atoms.copy()
    atoms.calc = calculator
    target = atoms
    if cell:
        from ase.filters import FrechetCellFilter

        if not atoms.pbc.all():
            raise ValueError("a cell relaxation needs a cell periodic in all three directions")
        target = FrechetCellFilter(atoms, scalar_pressure=pressure,
                                   exp_cell_factor=smax * atoms.get_volume() / fmax)
    opt = cls(target, trajectory=trajectory, logfile=logfile, **optimizer_kwargs)
    try:
        opt.run(fmax=fmax, steps=steps)
    finally:
        if getattr(opt, "trajectory", None) is not None and hasattr(opt.trajectory, "close"):
            opt.trajectory.close()
    forces = atoms.get_forces()
    f = float(np.linalg.norm(forces, axis=1).max()) if len(atoms) else 0.0
    s = None
    if cell:
        s = float(np.abs(atoms.get_stress(voigt=False) + pressure * np.eye(3)).max())
    return AseRelaxResult(
        atoms=atoms,
        positions=atoms.get_positions(),
        energy=float(atoms.get_potential_energy()),
        fmax=f,
        converged=f <= fmax and (s is None or s <= smax * (1 + 1e-9)),
        steps=int(opt.nsteps),
        smax=s,
    )
