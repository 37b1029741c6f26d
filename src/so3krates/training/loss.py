"""Weighted mean-squared-error loss of energies and forces, with NaN/padding masks."""

from __future__ import annotations

import jax.numpy as jnp

from so3krates.batching import Labels
from so3krates.potential import Prediction


def masked_mse(pred: jnp.ndarray, ref: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Mean of squared errors over ``mask`` entries (0 if the mask is empty)."""
    err = jnp.where(mask, pred - ref, 0.0)
    return jnp.sum(err * err) / jnp.maximum(jnp.sum(mask), 1)


def energy_forces_loss(
    pred: Prediction, labels: Labels, energy_weight: float, forces_weight: float
) -> tuple[jnp.ndarray, dict]:
    """``w_E * MSE(E per structure) + w_F * MSE(F per component)``; units eV^2 and (eV/Å)^2."""
    e = masked_mse(pred.energy, labels.energy, labels.energy_mask)
    f = masked_mse(pred.forces.astype(jnp.float64), labels.forces, labels.forces_mask)
    loss = energy_weight * e + forces_weight * f
    return loss, {"energy_mse": e, "forces_mse": f}
