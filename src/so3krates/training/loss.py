"""Weighted energy and force losses (mean squared error or Huber), with NaN/padding masks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from so3krates.batching import Labels
from so3krates.config import TrainingConfig
from so3krates.potential import Prediction


def huber_delta(cfg: TrainingConfig) -> float | None:
    """The configured Huber threshold, None for the mean squared error."""
    return cfg.huber_delta if cfg.loss == "huber" else None


def huber(err: jnp.ndarray, delta: float | None) -> jnp.ndarray:
    """Elementwise squared error, or with ``delta`` the Huber loss scaled to match it for small
    errors: ``err^2`` for ``|err| <= delta``, ``delta (2 |err| - delta)`` beyond (linear)."""
    if delta is None:
        return err * err
    a = jnp.abs(err)
    return jnp.where(a <= delta, err * err, delta * (2.0 * a - delta))


def masked_mean_loss(err: jnp.ndarray, mask: jnp.ndarray, delta: float | None = None) -> jnp.ndarray:
    """Mean of :func:`huber` of the errors ``err`` over ``mask`` entries (0 if the mask is
    empty); without ``delta`` the mean squared error."""
    err = jnp.where(mask, err, 0.0)
    return jnp.sum(huber(err, delta)) / jnp.maximum(jnp.sum(mask), 1)


def weighted_loss(
    energy_errors: jnp.ndarray,
    energy_mask: jnp.ndarray,
    force_errors: jnp.ndarray,
    forces_mask: jnp.ndarray,
    energy_weight: float,
    forces_weight: float,
    huber_delta: float | None = None,
) -> tuple[jnp.ndarray, dict]:
    """``w_E * L(E per structure) + w_F * L(F per component)`` of errors (eV, eV/Å) over their
    masks, L the mean squared error (eV^2, (eV/Å)^2) or, with ``huber_delta``, :func:`huber`."""
    e = masked_mean_loss(energy_errors, energy_mask, huber_delta)
    f = masked_mean_loss(force_errors, forces_mask, huber_delta)
    return energy_weight * e + forces_weight * f, {"energy_loss": e, "forces_loss": f}


def energy_forces_loss(
    pred: Prediction,
    labels: Labels,
    energy_weight: float,
    forces_weight: float,
    huber_delta: float | None = None,
) -> tuple[jnp.ndarray, dict]:
    """:func:`weighted_loss` of a batch's predictions against its labels (NaN and padding
    labels masked)."""
    return weighted_loss(
        pred.energy - labels.energy, labels.energy_mask,
        pred.forces.astype(jnp.float64) - labels.forces, labels.forces_mask,
        energy_weight, forces_weight, huber_delta,
    )


def errors_loss(
    energy_errors: np.ndarray, force_errors: np.ndarray, cfg: TrainingConfig
) -> float:
    """The training loss of given errors: energies (S,) in eV, force components (any shape) in
    eV/Å, those of NaN labels already left out; used for the validation loss. A NaN
    prediction makes it NaN."""
    de, df = (np.ravel(a) for a in (energy_errors, force_errors))
    loss, _ = weighted_loss(de, np.ones(de.shape, bool), df, np.ones(df.shape, bool),
                            cfg.energy_weight, cfg.forces_weight, huber_delta(cfg))
    return float(loss)
