"""Geometry embedding: radial basis, smooth cutoff, real spherical harmonics.

All functions are pure and act on the last axis of per-pair arrays.
"""

from __future__ import annotations

import math
from typing import Sequence

import e3x
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln


def bernstein_basis(d: jnp.ndarray, num: int, gamma: float = 0.9448630629184640) -> jnp.ndarray:
    """Bernstein polynomials of ``exp(-gamma d)``; ``d`` in Å, (P,) -> (P, num).

    Evaluated in log space so that high orders stay finite; ``d`` must be > 0.
    """
    k = np.arange(num)
    log_binom = gammaln(num) - gammaln(k + 1) - gammaln(num - k)
    log_x = -gamma * d[..., None]
    log_1mx = jnp.log(-jnp.expm1(log_x))
    return jnp.exp(log_binom.astype(d.dtype) + k * log_x + (num - 1 - k) * log_1mx)


def gaussian_basis(d: jnp.ndarray, num: int, cutoff: float) -> jnp.ndarray:
    """Gaussians with centres evenly spaced on [0, cutoff]; (P,) -> (P, num)."""
    centres = jnp.linspace(0.0, cutoff, num, dtype=d.dtype)
    width = cutoff / num
    return jnp.exp(-0.5 * ((d[..., None] - centres) / width) ** 2)


def bessel_basis(d: jnp.ndarray, num: int, cutoff: float) -> jnp.ndarray:
    """Spherical Bessel functions sin(n pi d / rc) / d; (P,) -> (P, num)."""
    n = jnp.arange(1, num + 1, dtype=d.dtype)
    return jnp.sqrt(2.0 / cutoff) * jnp.sin(n * jnp.pi * d[..., None] / cutoff) / d[..., None]


def radial_basis(name: str, d: jnp.ndarray, num: int, cutoff: float) -> jnp.ndarray:
    """Dispatch on the configured radial basis name."""
    if name == "bernstein":
        return bernstein_basis(d, num)
    if name == "gaussian":
        return gaussian_basis(d, num, cutoff)
    if name == "bessel":
        return bessel_basis(d, num, cutoff)
    raise ValueError(f"unknown radial basis {name!r}")


def cosine_cutoff(d: jnp.ndarray, cutoff: float) -> jnp.ndarray:
    """0.5 (cos(pi d / rc) + 1) inside the cutoff, 0 outside; value and slope vanish at rc."""
    return jnp.where(d < cutoff, 0.5 * (jnp.cos(jnp.pi * d / cutoff) + 1.0), 0.0)


def polynomial_cutoff(d: jnp.ndarray, cutoff: float) -> jnp.ndarray:
    """1 - 6u^5 + 15u^4 - 10u^3 with u = d / rc, 0 outside."""
    u = d / cutoff
    return jnp.where(d < cutoff, 1.0 - 6.0 * u**5 + 15.0 * u**4 - 10.0 * u**3, 0.0)


def cutoff_function(name: str, d: jnp.ndarray, cutoff: float) -> jnp.ndarray:
    """Dispatch on the configured cutoff function name."""
    if name == "cosine":
        return cosine_cutoff(d, cutoff)
    if name == "polynomial":
        return polynomial_cutoff(d, cutoff)
    raise ValueError(f"unknown cutoff function {name!r}")


def degree_index(degrees: Sequence[int]) -> np.ndarray:
    """For each component of a concatenated EV vector, the position of its degree in ``degrees``."""
    return np.concatenate([np.full(2 * l + 1, k) for k, l in enumerate(degrees)])


def _racah_harmonics(x: jnp.ndarray, y: jnp.ndarray, z: jnp.ndarray, l: int) -> list[jnp.ndarray]:
    """Real spherical harmonics of degree ``l`` <= 4 on the unit sphere, Racah normalised.

    Written out as Cartesian polynomials (one fused elementwise kernel instead of e3x's generic
    evaluation). The basis is the standard real one (m = -l..l); it differs from e3x's only by
    a fixed orthogonal matrix per degree, which no invariant of the model can see.
    """
    # Constants are Python floats (weakly typed), so float32 inputs stay float32.
    if l == 1:
        return [x, y, z]
    x2, y2, z2 = x * x, y * y, z * z
    if l == 2:
        s3 = math.sqrt(3.0)
        return [s3 * x * y, s3 * y * z, 1.5 * z2 - 0.5, s3 * x * z, 0.5 * s3 * (x2 - y2)]
    if l == 3:
        a, b, c = math.sqrt(10.0) / 4, math.sqrt(15.0), math.sqrt(6.0) / 4
        return [
            a * y * (3 * x2 - y2),
            b * x * y * z,
            c * y * (5 * z2 - 1),
            0.5 * z * (5 * z2 - 3),
            c * x * (5 * z2 - 1),
            0.5 * b * z * (x2 - y2),
            a * x * (x2 - 3 * y2),
        ]
    if l == 4:
        a, b, c = math.sqrt(35.0), math.sqrt(70.0) / 4, math.sqrt(10.0) / 4
        e = math.sqrt(5.0)
        return [
            0.5 * a * x * y * (x2 - y2),
            b * y * z * (3 * x2 - y2),
            0.5 * e * x * y * (7 * z2 - 1),
            c * y * z * (7 * z2 - 3),
            (35 * z2 * z2 - 30 * z2 + 3) / 8,
            c * x * z * (7 * z2 - 3),
            0.25 * e * (x2 - y2) * (7 * z2 - 1),
            b * x * z * (x2 - 3 * y2),
            a / 8 * (x2 * x2 - 6 * x2 * y2 + y2 * y2),
        ]
    raise ValueError(f"no closed form for degree {l}")


def spherical_harmonics(unit_vectors: jnp.ndarray, degrees: Sequence[int]) -> jnp.ndarray:
    """Real spherical harmonics (Racah normalised) of the given degrees, concatenated.

    (P, 3) unit vectors -> (P, sum(2l+1)). Each degree block has unit norm for unit input, and
    rotations act on it by an orthogonal matrix, so squared norms per degree are invariant.
    Degrees up to 4 use closed-form polynomials; higher degrees fall back to e3x.
    """
    if max(degrees) > 4:
        ylm = e3x.so3.spherical_harmonics(
            unit_vectors, max_degree=max(degrees), r_is_normalized=True
        )
        return jnp.concatenate([ylm[..., l * l : (l + 1) * (l + 1)] for l in degrees], axis=-1)
    x, y, z = unit_vectors[..., 0], unit_vectors[..., 1], unit_vectors[..., 2]
    return jnp.stack([c for l in degrees for c in _racah_harmonics(x, y, z, l)], axis=-1)

