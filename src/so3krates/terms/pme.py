"""Particle-mesh Ewald (PME): the reciprocal part of an Ewald sum on a grid, for large cells.

The plain Ewald sum (:mod:`so3krates.terms.ewald`) evaluates ``S(k) = Σ_j q_j exp(i k·R_j)`` for
every k-vector: O(N K), and at a fixed real-space cutoff K grows with the volume, so the cost
grows as N². PME spreads the charges onto a regular grid in fractional coordinates with
cardinal B-splines, takes the structure factor by FFT, multiplies by the Ewald kernel and
interpolates the potential back to the atoms with the same splines: O(N p³ + M log M) for a
mesh of M points and splines of order p.

    E_i = ½ q_i φ(R_i),  φ = IFFT[ (4π/V) exp(-k²/4α²) / k² / U²(m) · FFT[Σ_j q_j W(R_j)] ]

``U²(m) = Π_a sinc(m_a / n_a)^(2p)`` undoes the splines' smoothing (the simple P3M influence
function); it depends only on the integer mesh frequencies ``m``, so it is a constant of the
mesh. The k-vectors are computed from the traced cell (``k = 2π m inv(cell)ᵀ``) and the
charges are spread at fractional coordinates ``R inv(cell)``, so forces and the strain
derivative (stress) are exact derivatives of this energy. The spline weights and the
spreading/interpolation come from ``jax-pme`` (``jaxpme.mesh.bspline``); the self and
neutralising-background terms are those of the Ewald sum.

Accuracy is set by the mesh spacing relative to the Gaussian width ``1/(√2 α)``:
:func:`so3krates.neighbours.kspace.mesh_shape` uses a quarter of that width with order-5
splines, which reproduces the Ewald sum's reciprocal forces to ~1e-5 relative (measured in
``tests/test_pme.py``).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxpme.mesh import bspline

from so3krates.neighbours.kspace import PME_ORDER
from so3krates.terms.ewald import COULOMB_CONSTANT, reciprocal_cell, self_and_background

_spline_weights, _spread, _gather = bspline(PME_ORDER)


def _influence(shape: tuple[int, int, int], dtype) -> jnp.ndarray:
    """1/U²(m) on the rfft grid, (n0, n1, n2//2 + 1): undoes the splines' smoothing."""
    axes = [jnp.fft.fftfreq(shape[0]), jnp.fft.fftfreq(shape[1]), jnp.fft.rfftfreq(shape[2])]
    u = [jnp.sinc(a.astype(dtype)) ** (2 * PME_ORDER) for a in axes]
    return 1.0 / (u[0][:, None, None] * u[1][None, :, None] * u[2][None, None, :])


def _frequencies(shape: tuple[int, int, int], dtype) -> jnp.ndarray:
    """Integer mesh frequencies m (n0, n1, n2//2 + 1, 3) in the rfft layout."""
    m0 = jnp.fft.fftfreq(shape[0]) * shape[0]
    m1 = jnp.fft.fftfreq(shape[1]) * shape[1]
    m2 = jnp.fft.rfftfreq(shape[2]) * shape[2]
    grid = jnp.meshgrid(m0, m1, m2, indexing="ij")
    return jnp.round(jnp.stack(grid, axis=-1)).astype(dtype)


def pme_atomic_energies(positions: jnp.ndarray, charges: jnp.ndarray, cell: jnp.ndarray,
                        on: jnp.ndarray, alpha: float | jnp.ndarray,
                        mesh: tuple[int, int, int]) -> jnp.ndarray:
    """The reciprocal, self and background parts of one periodic structure's Ewald energy per
    atom, (N,) in eV, by particle-mesh Ewald (0 for atoms with ``on`` False).

    Args:
        positions: (N, 3) Å; charges: (N,) e; cell: (3, 3) lattice vectors as rows, Å.
        on: (N,) True for the structure's real atoms (padding and other structures False).
        alpha: the Ewald splitting parameter, 1/Å; mesh: grid points per lattice vector
            (``so3krates.neighbours.kspace.mesh_shape``).

    Equals :func:`so3krates.terms.ewald.kspace_atomic_energies` of the same structure up to
    the mesh's discretisation error; the real-space part is the caller's.
    """
    dtype = positions.dtype
    q = jnp.where(on, charges.astype(dtype), 0.0)
    cell = cell.astype(dtype)
    volume, reciprocal = reciprocal_cell(cell)
    # Atoms outside the structure sit anywhere: zero charge, and wrapped indices keep them on
    # the grid. The spline weights follow the fractional coordinates R inv(cell) = R bᵀ/2π.
    grid = jnp.zeros(mesh, jnp.int8)  # jax-pme reads only the shape
    weights = _spline_weights(reciprocal.T / (2.0 * jnp.pi), jnp.where(on[:, None], positions,
                                                                       0.0), grid)
    rho = jnp.fft.rfftn(_spread(q, weights), s=mesh)
    k = _frequencies(mesh, dtype) @ reciprocal  # (n0, n1, n2//2+1, 3) 1/Å
    k2 = jnp.sum(k * k, axis=-1)
    zero = k2 == 0.0  # k = 0: excluded (tin-foil boundary; the background term covers Q ≠ 0)
    k2 = jnp.where(zero, 1.0, k2)
    kernel = jnp.where(zero, 0.0, 4.0 * jnp.pi / volume * jnp.exp(-k2 / (4.0 * alpha**2)) / k2)
    potential = jnp.fft.irfftn(rho * kernel * _influence(mesh, dtype), s=mesh, norm="forward")
    phi = _gather(potential, weights)
    structure = jnp.zeros(positions.shape[0], jnp.int32)
    e = 0.5 * COULOMB_CONSTANT * q * phi + self_and_background(
        q, structure, volume[None], on, alpha, 1)
    return jnp.where(on, e, 0.0)
