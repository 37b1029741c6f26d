"""Frozen parameters of a fine-tuning run (``training.freeze``).

A strategy names groups of the network's parameters, found by their paths:

- ``embedding``: the element embedding (``Embed_0``) and what depends on nothing but the
  element and the structure's charge and spin (``charge_embedding``, ``spin_embedding``);
- block ``t``: ``attention_t``, ``exchange_t`` and ``efa_t``;
- the readout: the output MLP (``Dense_0``, ``Dense_1``), the per-element scale and shift
  (``element_scale``, ``element_shift``) and the per-atom heads (``*_head``).

``none`` trains everything, ``embedding`` freezes the embedding, ``blocks:K`` the embedding and
blocks 0..K-1, ``all_but_readout`` everything but the readout. :func:`freeze_labels` gives each
parameter array the label ``"trainable"`` or ``"frozen"``; rows of the per-element tables
(embedding, scale, shift, head offsets) of elements the initial model never saw are trainable
whatever the strategy (:func:`trainable_mask`): they still hold their initial values.

The trainer keeps its parameters as flat vectors (``so3krates.training.step``); with frozen
parameters as two, ``{"trainable": ..., "frozen": ...}`` (:func:`partitioned_training_state`),
and the optimiser is ``optax.multi_transform`` with ``optax.set_to_zero()`` for the frozen one
(:func:`freezing_optimizer`): no gradient statistics, no weight decay, no update. The step
passes the frozen vector and its EMA through unchanged (:func:`keep_frozen`), so frozen
parameters end bitwise equal to the initial model's.
"""

from __future__ import annotations

import re
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from so3krates.config import FREEZE_STRATEGIES as STRATEGIES  # noqa: F401
from so3krates.config import parse_freeze_strategy as parse_strategy

TRAINABLE, FROZEN = "trainable", "frozen"

EMBEDDING = ("Embed_0", "charge_embedding", "spin_embedding")
READOUT = ("Dense_0", "Dense_1", "element_scale", "element_shift")
BLOCK = re.compile(r"(attention|exchange|efa)_(\d+)")
# Per-element tables (first axis: the atomic number) whose rows of new elements always train.
ELEMENT_TABLES = ("embedding", "element_scale", "element_shift", "element_offset")


def check_blocks(strategy: str, num_layers: int, where: str = "the model") -> None:
    """Raise ValueError if ``strategy`` is ``blocks:K`` with K above ``num_layers``."""
    kind, k = parse_strategy(strategy)
    if kind == "blocks" and k > num_layers:
        raise ValueError(f"training.freeze={strategy}: {where} has {num_layers} interaction "
                         f"block{'s' if num_layers != 1 else ''} (K may be 0..{num_layers})")


def parameter_group(name: str) -> str | int:
    """``"embedding"``, ``"readout"`` or the block index of a top-level parameter name."""
    if name in EMBEDDING:
        return "embedding"
    if name in READOUT or name.endswith("_head"):
        return "readout"
    m = BLOCK.fullmatch(name)
    if m:
        return int(m.group(2))
    raise ValueError(f"parameter {name!r} belongs to no freezing group (embedding, blocks, readout)")


def _is_frozen(group: str | int, kind: str, k: int) -> bool:
    if kind == "none":
        return False
    if kind == "embedding":
        return group == "embedding"
    if kind == "blocks":
        return group == "embedding" or (isinstance(group, int) and group < k)
    return group != "readout"  # all_but_readout


def _key(entry) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", entry)))


def freeze_labels(params, strategy: str, num_layers: int):
    """A tree like ``params`` with ``"trainable"`` or ``"frozen"`` for each parameter array,
    from its path (see the module docstring)."""
    kind, k = parse_strategy(strategy)
    check_blocks(strategy, num_layers)

    def label(path, _):
        if kind == "none":  # nothing to classify
            return TRAINABLE
        return FROZEN if _is_frozen(parameter_group(_key(path[0])), kind, k) else TRAINABLE

    return jax.tree_util.tree_map_with_path(label, params)


def trainable_mask(params, labels, new_elements: Iterable[int] = ()):
    """A tree like ``params`` of boolean arrays (True: trained): the ``labels`` of
    :func:`freeze_labels` per array, and True on the rows of ``new_elements`` (atomic numbers)
    in the per-element tables."""
    rows = np.asarray(sorted(int(z) for z in new_elements), dtype=np.int64)

    def mask(path, leaf, label):
        m = np.full(np.shape(leaf), label == TRAINABLE)
        if rows.size and _key(path[-1]) in ELEMENT_TABLES and np.ndim(leaf) >= 1:
            m[rows[rows < np.shape(leaf)[0]]] = True
        return m

    return jax.tree_util.tree_map_with_path(mask, params, labels)


def count(mask) -> tuple[int, int]:
    """``(trainable, frozen)`` numbers of parameters of a :func:`trainable_mask`."""
    flat = np.concatenate([np.ravel(m) for m in jax.tree.leaves(mask)])
    return int(flat.sum()), int(flat.size - flat.sum())


class Partition:
    """The entries of a flat parameter vector split into a trainable and a frozen vector by a
    boolean ``mask`` (its runs of equal values become slices: joining the two is a
    concatenation of static slices, nothing gathered)."""

    def __init__(self, mask: np.ndarray):
        self.mask = np.asarray(mask, dtype=bool)
        edges = np.flatnonzero(np.diff(self.mask.astype(np.int8))) + 1
        starts = np.concatenate([[0], edges]).astype(int)
        stops = np.concatenate([edges, [self.mask.size]]).astype(int)
        self.runs: list[tuple[str, int, int]] = []  # (which vector, start in it, stop in it)
        offset = {TRAINABLE: 0, FROZEN: 0}
        for a, b in zip(starts, stops):
            which = TRAINABLE if self.mask[a] else FROZEN
            self.runs.append((which, offset[which], offset[which] + b - a))
            offset[which] += b - a

    def split(self, flat) -> dict:
        """``{"trainable": ..., "frozen": ...}`` of a flat vector (NumPy or JAX)."""
        return {TRAINABLE: flat[self.mask], FROZEN: flat[~self.mask]}

    def join(self, parts: dict):
        """The flat vector of :meth:`split`'s two parts (traceable)."""
        pieces = [parts[which][a:b] for which, a, b in self.runs]
        return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)


def partitioned_training_state(predict, params, mask):
    """Like ``so3krates.training.step.flat_training_state``, with the frozen parameters apart:
    ``(parts, parts_predict, unravel, partition)``. ``parts`` is ``{"trainable": flat,
    "frozen": flat}``; ``parts_predict(parts, graph)`` is ``predict`` of the whole tree, with no
    gradient through the frozen part; ``unravel(parts)`` the parameter tree."""
    from jax.flatten_util import ravel_pytree

    flat, unravel_flat = ravel_pytree(params)
    partition = Partition(np.concatenate([np.ravel(m) for m in jax.tree.leaves(mask)]))

    def unravel(parts):
        return unravel_flat(partition.join(parts))

    def parts_predict(parts, graph):
        fixed = {TRAINABLE: parts[TRAINABLE], FROZEN: jax.lax.stop_gradient(parts[FROZEN])}
        return predict(unravel(fixed), graph)

    return partition.split(flat), parts_predict, unravel, partition


def freezing_optimizer(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optimizer`` on the trainable vector, ``optax.set_to_zero()`` on the frozen one (of
    :func:`partitioned_training_state`'s parts)."""
    return optax.multi_transform({TRAINABLE: optimizer, FROZEN: optax.set_to_zero()},
                                 {TRAINABLE: TRAINABLE, FROZEN: FROZEN})


def is_partitioned(tree) -> bool:
    """True for the two-vector layout of :func:`partitioned_training_state`."""
    return isinstance(tree, dict) and set(tree) == {TRAINABLE, FROZEN}


def keep_frozen(new, old):
    """``new`` with the frozen vector of ``old`` (in the two-vector layout; else ``new``):
    ``p + 0`` would turn a -0.0 into 0.0, and the EMA's ``d p + (1 - d) p`` may round."""
    if is_partitioned(new):
        return {**new, FROZEN: old[FROZEN]}
    return new


def frozen_summary(mask) -> str:
    """A one-line description of a :func:`trainable_mask`'s counts."""
    trainable, frozen = count(mask)
    total = trainable + frozen
    return f"{trainable:,} of {total:,} parameters trainable, {frozen:,} frozen"
