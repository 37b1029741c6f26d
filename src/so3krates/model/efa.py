"""Euclidean fast attention (EFA): global attention between all atoms of a structure at a cost
linear in their number (Frank, Chmiela, Müller, Unke, "Euclidean fast attention", 2024).

Queries and keys are split into P feature pairs; pair p of atom i is rotated by the angle
``θ_p (u · R_i)`` for each direction ``u_m`` of a Lebedev grid (Euclidean rotary positional
encodings, ERoPE, :func:`erope`). For one direction the rotated pair kernel is

    q̃_i · k̃_j = Σ_p cos(θ_p u·r_ij) (q_a k_a + q_b k_b)_p + sin(θ_p u·r_ij) (q_b k_a - q_a k_b)_p

with ``r_ij = R_j - R_i``: it depends on positions through differences only (translation
invariance, exact for every direction). Averaged over the sphere, cos(θ u·r) becomes
``sinc(θ |r|) = sin(θ r) / (θ r)`` and sin(θ u·r) becomes 0, so the kernel becomes the rotation-
and translation-invariant ``Σ_p (q_a k_a + q_b k_b)_p sinc(θ_p d_ij)``. The Lebedev grid does that
average as a quadrature ``Σ_m w_m (...)`` (weights normalised to sum 1), and since the rotated
kernel factorises into a term of i and a term of j, the messages

    y_i = Σ_m w_m q̃_im^T S_{s(i),m},    S_{s,m} = Σ_{j∈s} k̃_jm ⊗ v_j

cost O(N·M·P·F) instead of the O(N²·P·F) of the pair sum (:func:`efa_messages_direct`).

Accuracy: the quadrature is exact for the sine terms (Lebedev grids contain -u with u, and the
sine is odd) and approximates sinc well up to a phase ``θ · d`` that grows with the grid's
degree (:func:`resolvable_phase`; about 6.1 for degree 11 and 33 for degree 41 at a tolerance
of 1e-3). Rotation invariance is therefore approximate: each pair term is within the
tolerance of its invariant value while θ_p d_ij stays below that phase, and the error grows
fast beyond it. Pick the degree for ``max_frequency × (largest interatomic distance)`` with
:func:`choose_degree`.

Not handled here: periodic systems. ERoPE needs the positions of all atoms of a structure in
one frame, and a sum of the sinc kernel over periodic images does not converge absolutely
(it decays as 1/d while the number of images grows as d²); callers must refuse periodic
structures.

Terminology: the Lebedev *degree* here is the rule's algebraic degree of exactness (it
integrates spherical polynomials up to that degree exactly), which ``scipy.integrate.
lebedev_rule`` calls its *order* ``n``; M is the number of grid directions.

Units: positions in Å, frequencies θ in 1/Å, phases θ·d dimensionless (radians).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import lebedev_rule

from so3krates.model.layers import Dense, full_precision_matmuls

SUPPORTED_DEGREES: tuple[int, ...] = (
    3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 35,
    41, 47, 53, 59, 65, 71, 77, 83, 89, 95, 101, 107, 113, 119, 125, 131)
"""Degrees of the Lebedev rules that ``scipy.integrate.lebedev_rule`` provides (6 to 5810
directions)."""

# Directions of r at which resolvable_phase probes the quadrature: random ones (fixed seed)
# plus three symmetry axes of the (octahedrally symmetric) grids.
_PROBE_DIRECTIONS = 64
_PROBE_SEED = 0
# The phase scan (see resolvable_phase): its step, phases per batch, bisections of the last step.
_PHASE_STEP = 0.25
_PHASE_BATCH = 32
_PHASE_BISECTIONS = 20
# Elements of one chunk of the per-atom outer products k̃ ⊗ v in a batch of several structures.
_CHUNK_ELEMENTS = 1 << 22


@functools.cache
def _lebedev_grid(degree: int) -> tuple[np.ndarray, np.ndarray]:
    if degree not in SUPPORTED_DEGREES:
        raise ValueError(f"no Lebedev grid of degree {degree}; supported degrees: "
                         f"{', '.join(map(str, SUPPORTED_DEGREES))}")
    points, weights = lebedev_rule(degree)
    directions = np.ascontiguousarray(points.T, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)  # a sphere average
    directions.setflags(write=False)  # cached: shared by every caller
    weights.setflags(write=False)
    return directions, weights


def lebedev_grid(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """The Lebedev rule of algebraic degree ``degree`` (one of :data:`SUPPORTED_DEGREES`).

    Returns:
        directions: unit vectors u_m, (M, 3) float64 (read-only numpy array);
        weights: w_m, (M,) float64 summing to 1, so that ``Σ_m w_m f(u_m)`` approximates the
            *average* of f over the unit sphere (exact for polynomials up to ``degree``).
    """
    return _lebedev_grid(int(degree))


def _probe_directions() -> np.ndarray:
    """Unit vectors (D, 3): the grids' symmetry axes and random directions (fixed seed)."""
    axes = np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    random = np.random.default_rng(_PROBE_SEED).normal(size=(_PROBE_DIRECTIONS, 3))
    r = np.concatenate([axes, random])
    return r / np.linalg.norm(r, axis=1, keepdims=True)


def _half_grid(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """One of each antipodal pair of the grid's directions, (M/2, 3), with doubled weights:
    the quadrature of an even function (cos(x u·r)) over half the points."""
    directions, weights = lebedev_grid(degree)
    # A generic direction, orthogonal to no grid point: it picks one of u and -u.
    keep = directions @ np.array([0.3141, 0.5926, 0.7418]) > 0
    assert 2 * np.count_nonzero(keep) == weights.size  # checked for every supported degree
    return directions[keep], 2.0 * weights[keep]


def quadrature_error(degree: int, phases: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """Largest error of the grid's average of cos(x u·r̂) against sinc(x), (X,) per phase.

    Args:
        degree: Lebedev degree.
        phases: x = θ·|r|, (X,) dimensionless.
        probes: unit vectors r̂, (D, 3); the maximum is over them.
    """
    directions, weights = _half_grid(degree)
    projections = directions @ probes.T  # (M/2, D)
    phases = np.asarray(phases, dtype=np.float64)
    # Chunks of phases keep the (X, M/2, D) cosines within a few MB for the finest grids.
    chunk = max(1, (1 << 19) // projections.size)
    out = []
    for start in range(0, phases.size, chunk):
        x = phases[start:start + chunk]
        quad = np.einsum("m,xmd->xd", weights, np.cos(x[:, None, None] * projections))
        out.append(np.max(np.abs(quad - np.sinc(x / np.pi)[:, None]), axis=1))
    return np.concatenate(out) if out else np.zeros(0)


def taylor_phase(degree: int, tolerance: float) -> float:
    """A phase up to which the grid provably resolves sinc within ``tolerance``.

    The grid integrates the Taylor polynomial of cos(x u·r̂) of degree n = ``degree``
    exactly, and the remainder is at most x^(n+1) / (n+1)! in size, so the error is at most
    ``(1 + Σ|w_m|) x^(n+1) / (n+1)!`` (Σ|w_m| > 1 for the rules with negative weights).
    """
    weights = lebedev_grid(degree)[1]
    log_bound = np.log(tolerance / (1.0 + np.sum(np.abs(weights))))
    return float(np.exp((log_bound + math.lgamma(degree + 2)) / (degree + 1)))


@functools.cache
def resolvable_phase(degree: int, tolerance: float = 1e-3) -> float:
    """The largest phase x = θ·d that the Lebedev grid of ``degree`` resolves: its average of
    cos(θ u·r) is within ``tolerance`` (absolute) of sinc(θ|r|) for every x' ≤ x, measured on
    the host at the grid's symmetry axes and 64 random directions of r (fixed seed).

    The error stays near rounding level up to a point and then grows steeply, so directions
    not probed exceed the tolerance only marginally at the returned phase. Examples at 1e-3:
    degree 5 → 1.8, 11 → 6.1, 17 → 11.2, 41 → 33.1, 131 → 120.1. Measuring takes
    milliseconds for small grids and seconds for the finest; the result is cached per
    (degree, tolerance).
    """
    if not tolerance > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    probes = _probe_directions()
    # Proven up to taylor_phase; scanned from there. The error is a band-limited function of
    # x (cosines of frequency |u·r̂| ≤ 1, and sinc): steps of 0.25 sample it 12 times faster
    # than its Nyquist rate (a scan in steps of 0.01 finds the same phases). The scan ends by
    # 2n + 10 (a degree-n grid fails before x = n).
    start = taylor_phase(degree, tolerance)
    grid = start + np.arange(0.0, 2.0 * degree + 10.0 - start, _PHASE_STEP)
    passed = start
    for begin in range(0, grid.size, _PHASE_BATCH):
        x = grid[begin:begin + _PHASE_BATCH]
        bad = np.nonzero(quadrature_error(degree, x, probes) > tolerance)[0]
        if bad.size == 0:
            passed = float(x[-1])
            continue
        failed = float(x[bad[0]])
        passed = float(x[bad[0] - 1]) if bad[0] > 0 else passed
        # Bisection of the last step (within which the error passes the tolerance).
        for _ in range(_PHASE_BISECTIONS):
            mid = 0.5 * (passed + failed)
            if quadrature_error(degree, np.array([mid]), probes)[0] > tolerance:
                failed = mid
            else:
                passed = mid
        return passed
    return passed


def choose_degree(max_phase: float, tolerance: float = 1e-3) -> int:
    """The smallest Lebedev degree whose :func:`resolvable_phase` is at least ``max_phase``.

    ``max_phase`` is the largest ``θ_max · d`` that occurs (the attention's largest frequency in
    1/Å times the largest interatomic distance in Å). Raises ValueError when even the finest
    grid does not resolve it.
    """
    if not max_phase >= 0:
        raise ValueError(f"max_phase must be non-negative, got {max_phase}")
    finest = SUPPORTED_DEGREES[-1]
    largest = resolvable_phase(finest, tolerance)
    if max_phase > largest:
        raise ValueError(
            f"a phase θ·d = {max_phase:.4g} is beyond every Lebedev grid: the finest (degree "
            f"{finest}, {lebedev_grid(finest)[1].size} directions) resolves θ·d ≤ "
            f"{largest:.4g} to within {tolerance:g}; lower the largest frequency or the extent "
            "of the structures")
    for degree in SUPPORTED_DEGREES:
        if resolvable_phase(degree, tolerance) >= max_phase:
            return degree
    return finest  # not reached: the finest grid resolves max_phase


def erope(x: jnp.ndarray, positions: jnp.ndarray, directions: jnp.ndarray,
          frequencies: jnp.ndarray) -> jnp.ndarray:
    """Euclidean rotary positional encoding of features, (N, M, 2P).

    Feature pair p of atom i, ``(x[i, 2p], x[i, 2p + 1])``, rotated by the angle
    ``θ_p (u_m · R_i)`` for each direction u_m.

    Args:
        x: features, (N, 2P).
        positions: R_i, (N, 3) Å.
        directions: unit vectors u_m, (M, 3).
        frequencies: θ_p, (P,) 1/Å.
    """
    n, two_p = x.shape
    # Both members of a pair share the angle: repeat θ instead of slicing the (N, M, 2P) result.
    theta = jnp.repeat(frequencies, 2)  # (2P,)
    phase = (positions @ directions.T)[:, :, None] * theta  # (N, M, 2P)
    # The pair rotated by 90°, (a, b) -> (-b, a): R(φ) x = cos φ x + sin φ (J x).
    pairs = x.reshape(n, two_p // 2, 2)
    x_perp = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(n, two_p)
    return jnp.cos(phase) * x[:, None, :] + jnp.sin(phase) * x_perp[:, None, :]


def centre_positions(positions: jnp.ndarray, structure: jnp.ndarray, n_structures: int,
                     atom_mask: jnp.ndarray) -> jnp.ndarray:
    """Positions relative to the mean of their structure's real atoms, (N, 3) Å; 0 for
    padding atoms (whatever their positions)."""
    w = atom_mask.astype(positions.dtype)
    count = jax.ops.segment_sum(w, structure, n_structures)
    total = jax.ops.segment_sum(positions * w[:, None], structure, n_structures)
    centroid = total / jnp.where(count > 0, count, 1.0)[:, None]
    return jnp.where(atom_mask[:, None], positions - centroid[structure], 0.0)


def _structure_messages(q_rot: jnp.ndarray, k_rot: jnp.ndarray, v: jnp.ndarray,
                        structure: jnp.ndarray, n_structures: int) -> jnp.ndarray:
    """``Σ_m q̃_im^T S_{s(i),m}`` for several structures, (N, F), in rematerialised chunks of
    directions (so that no (N, M, 2P, F) array of outer products is ever stored)."""
    n, m, two_p = q_rot.shape
    chunk = int(max(1, min(m, _CHUNK_ELEMENTS // (n * two_p * v.shape[1]))))

    @jax.checkpoint  # keeps only the inputs for the backward pass, not each chunk's products
    def one_direction(qk):
        q_m, k_m = qk  # (N, 2P) each
        sums = jax.ops.segment_sum(k_m[:, :, None] * v[:, None, :], structure,
                                   n_structures)  # (S, 2P, F)
        return jnp.einsum("nc,ncf->nf", q_m, sums[structure])

    per_direction = jax.lax.map(one_direction, (q_rot.swapaxes(0, 1), k_rot.swapaxes(0, 1)),
                                batch_size=chunk)  # (M, N, F)
    return jnp.sum(per_direction, axis=0)


def efa_messages(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, positions: jnp.ndarray,
                 structure: jnp.ndarray, n_structures: int, atom_mask: jnp.ndarray,
                 directions: Any, weights: Any, frequencies: Any) -> jnp.ndarray:
    """EFA messages ``y_i = Σ_m w_m q̃_im^T Σ_{j∈s(i)} k̃_jm ⊗ v_j``, (N, F).

    Atoms interact only within their structure (segment sums over ``structure``); padding atoms
    (``atom_mask`` False) contribute nothing and receive 0. Positions are centred per structure
    first: the messages do not depend on the origin, and centring keeps float32 phases small.
    Cost O(N·M·P·F): two matmuls for a single structure (``n_structures`` = 1); for several,
    segment sums of per-atom outer products k̃_jm ⊗ v_j in rematerialised chunks of directions
    (memory bound, about 2^22 elements at a time). No (N, N) array is formed.

    Args:
        q, k: queries and keys, (N, 2P) (P feature pairs).
        v: values, (N, F).
        positions: (N, 3) Å.
        structure: structure index of each atom, (N,) int.
        n_structures: S, a static int.
        atom_mask: True for real atoms, (N,) bool.
        directions, weights: the Lebedev grid, (M, 3) and (M,) summing to 1
            (:func:`lebedev_grid`).
        frequencies: θ_p, (P,) 1/Å.
    """
    dtype = q.dtype
    directions = jnp.asarray(directions, dtype)
    weights = jnp.asarray(weights, dtype)
    frequencies = jnp.asarray(frequencies, dtype)
    centred = centre_positions(positions.astype(dtype), structure, n_structures, atom_mask)
    # Weights on the query side: the key side is summed over atoms before it meets them.
    q_rot = erope(q, centred, directions, frequencies) * weights[None, :, None]  # (N, M, 2P)
    k_rot = erope(k, centred, directions, frequencies)
    v = jnp.where(atom_mask[:, None], v, 0.0)
    m, two_p, f = q_rot.shape[1], q_rot.shape[2], v.shape[1]
    if n_structures == 1:
        sums = jnp.einsum("nmc,nf->mcf", k_rot, v)  # (M, 2P, F)
        y = jnp.einsum("nmc,mcf->nf", q_rot, sums)
    elif n_structures * m * two_p * f <= _CHUNK_ELEMENTS:
        # Few structures (training batches, a structure and its padding): per-structure sums
        # by a one-hot matmul, S times the flops but matmuls instead of memory-bound segment
        # sums (a training run of 800 steps of a 16-feature model on ethanol, batch 4:
        # 95 s with the chunked segment sums below).
        onehot = (structure[:, None] == jnp.arange(n_structures)[None, :]).astype(dtype)
        by_structure = jnp.einsum("ns,nf->nsf", onehot, v)  # v_j in its structure's slot
        sums = jnp.einsum("nmc,nsf->smcf", k_rot, by_structure)  # (S, M, 2P, F), one matmul
        per_structure = jnp.einsum("nmc,smcf->nsf", q_rot, sums)  # (N, S, F)
        y = jnp.einsum("nsf,ns->nf", per_structure, onehot)
    else:
        y = _structure_messages(q_rot, k_rot, v, structure, n_structures)
    return jnp.where(atom_mask[:, None], y, 0.0)


def efa_messages_direct(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray,
                        positions: jnp.ndarray, structure: jnp.ndarray,
                        atom_mask: jnp.ndarray, frequencies: Any) -> jnp.ndarray:
    """What :func:`efa_messages` approximates, as an O(N²) pair sum (a reference), (N, F):

    ``y_i = Σ_{j∈s(i)} Σ_p (q_ia k_ja + q_ib k_jb)_p sinc(θ_p d_ij) v_j`` (j = i included),

    the exact sphere average of the ERoPE kernel. Arguments as for :func:`efa_messages`.
    """
    dtype = q.dtype
    n, two_p = q.shape
    frequencies = jnp.asarray(frequencies, dtype)
    diff = positions[None, :, :] - positions[:, None, :]  # (N, N, 3)
    r2 = jnp.sum(diff * diff, axis=-1)
    same = jnp.eye(n, dtype=bool)
    # d = 0 on the diagonal with a NaN-free derivative (sinc is flat there).
    d = jnp.where(same, 0.0, jnp.sqrt(jnp.where(same, 1.0, r2)))
    pair = jnp.einsum("ipt,jpt->ijp", q.reshape(n, two_p // 2, 2), k.reshape(n, two_p // 2, 2))
    kernel = jnp.sum(pair * jnp.sinc(d[:, :, None] * frequencies / jnp.pi), axis=-1)  # (N, N)
    real = atom_mask[:, None] & atom_mask[None, :] & (structure[:, None] == structure[None, :])
    return jnp.where(real, kernel, 0.0) @ v


def linear_frequencies(n: int, max_frequency: float) -> np.ndarray:
    """θ_p = θ_max · p / n for p = 1 … n, (n,) 1/Å.

    Evenly spaced multiples of θ_1 = θ_max / n: ``sinc(p θ_1 d) ∝ sin(p θ_1 d) / d`` are the
    l = 0 spherical Bessel (sine) functions on lengths up to π / θ_1, the radial basis of
    DimeNet/PaiNN; θ_max sets the finest distance resolution and θ_1 the longest range. A zero
    frequency (a distance-blind mean field) is left out.
    """
    return max_frequency * np.arange(1, n + 1, dtype=np.float64) / n


class EuclideanFastAttention(nn.Module):
    """An EFA update of per-atom features: a LayerNorm, Dense projections to queries and keys (2P
    features each) and values (F), :func:`efa_messages` averaged over the structure's atoms
    and scaled by 1/sqrt(2P) (as dot-product attention), and a Dense output projection.

    ``degree`` must resolve ``max_frequency × (largest interatomic distance)`` (see
    :func:`choose_degree`); beyond that the update is only approximately rotation invariant.
    Non-periodic structures only (see the module docstring).

    Attributes:
        frequencies: P, the number of feature pairs (one frequency each).
        max_frequency: θ_max in 1/Å; θ_p from :func:`linear_frequencies`.
        degree: Lebedev degree (one of :data:`SUPPORTED_DEGREES`).
        dtype: parameter and computation dtype (float32 or float64).
    """

    frequencies: int = 16
    max_frequency: float = 1.0
    degree: int = 11
    dtype: Any = jnp.float32

    @nn.compact
    @full_precision_matmuls
    def __call__(self, x: jnp.ndarray, positions: jnp.ndarray, structure: jnp.ndarray,
                 n_structures: int, atom_mask: jnp.ndarray) -> jnp.ndarray:
        """The update, (N, F), from features x (N, F), positions (N, 3) Å, structure indices
        (N,) int, the static structure count S and the real-atom mask (N,); 0 for padding."""
        directions, weights = lebedev_grid(self.degree)
        theta = linear_frequencies(self.frequencies, self.max_frequency)
        f = x.shape[-1]
        # Pre-normalised (as a pre-LN transformer): queries and keys enter the messages as a
        # product, which without it grows as |x|^2 from block to block.
        x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.dtype, name="norm")(
            x.astype(self.dtype))
        q = Dense(2 * self.frequencies, self.dtype, name="query")(x)
        k = Dense(2 * self.frequencies, self.dtype, name="key")(x)
        v = Dense(f, self.dtype, name="value")(x)
        y = efa_messages(q, k, v, positions.astype(self.dtype), structure, n_structures,
                         atom_mask, directions, weights, theta)
        # A mean over the structure's atoms with the dot-product scale 1/sqrt(2P): the raw sum
        # grows with the atom count, and fed into the next block's attention it overflowed
        # (a 12-atom pair of molecules with perturbed parameters: energies of 1e19 eV).
        count = jax.ops.segment_sum(atom_mask.astype(self.dtype), structure, n_structures)
        y = y / (jnp.maximum(count, 1.0)[structure, None] * float(np.sqrt(2 * self.frequencies)))
        return jnp.where(atom_mask[:, None], Dense(f, self.dtype, name="output")(y), 0.0)


def structure_extent(positions: np.ndarray) -> float:
    """Twice the largest distance of an atom from the centroid, Å: a bound on the largest
    interatomic distance (at most twice it), cheap for any size."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(positions) < 2:
        return 0.0
    return 2.0 * float(np.max(np.linalg.norm(positions - positions.mean(axis=0), axis=1)))


def check_structures(max_extent: float, positions, pbc) -> None:
    """Raise ``ValueError`` for structures an EFA model cannot take: periodic ones (the
    plane-wave kernel has no periodic form here, and a minimum-image version would be silently
    wrong) and those whose extent (:func:`structure_extent`) exceeds ``max_extent`` (Å, what
    the Lebedev grid was chosen to resolve). ``positions``: one (n, 3) array, a list of
    them, or None (periodicity only); ``pbc``: (3,) or (S, 3)."""
    if np.asarray(pbc, dtype=bool).any():
        raise ValueError("Euclidean fast attention (model.efa) is for molecules: periodic "
                         "structures are not supported")
    if positions is None:  # periodicity only (e.g. MD, before positions are known)
        return
    many = positions if isinstance(positions, (list, tuple)) else [positions]
    for k, r in enumerate(many):
        extent = structure_extent(r)
        if extent > max_extent:
            raise ValueError(f"structure {k} spans {extent:.1f} Å, more than model.efa."
                             f"max_extent = {max_extent:g} Å that the EFA grid resolves: raise "
                             "max_extent (a finer grid) when training")
