"""How the network walks over pairs: in chunks above a backend-dependent size, and in an order
whose second half reverses the first (so that functions of the distance are evaluated once
per couple of pairs)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from so3krates.neighbours import reverse_partners

# Up to this many pairs, a block's pair work runs in one piece; above it, in chunks of at most
# this many pairs. CPUs: small chunks keep intermediates in cache and spare fresh large buffers'
# page faults. GPUs: every chunk is a round of small kernels, run one after another; on an H100
# (reference model, MD steps) chunks of 1,024 / 16,384 pairs / none took 5.3 / 1.9 / 1.2 ms for
# 1,008 atoms and 45 / 9.5 / 4.8 ms for 10,080 atoms, so there chunks only bound the memory.
PAIR_CHUNK = {"cpu": 1024}
PAIR_CHUNK_OTHER = 1 << 22  # ~70,000 atoms of a dense molecular system at 5 Å


def pair_chunk() -> int:
    """:data:`PAIR_CHUNK` for JAX's default backend."""
    return PAIR_CHUNK.get(jax.default_backend(), PAIR_CHUNK_OTHER)


# Up to this many pairs, reverse pairs are found by comparing all keys (O(P^2) work in one
# kernel), above it by binary search.
COMPARE_ALL_MAX_PAIRS = 1024


def is_halves_layout(
    centers: jnp.ndarray, neighbours: jnp.ndarray, vectors: jnp.ndarray, pair_mask: jnp.ndarray,
) -> jnp.ndarray:
    """True (scalar bool) if pairs [P/2, P) are the exact reverses of pairs [0, P/2), padding
    opposite padding: the layout :func:`reverse_pair_order` makes (and ``so3krates.batching``
    can make on the host). O(P)."""
    h = centers.shape[0] // 2
    return (jnp.all(centers[:h] == neighbours[h:]) & jnp.all(neighbours[:h] == centers[h:])
            & jnp.all(pair_mask[:h] == pair_mask[h:])
            & jnp.all((vectors[:h] == -vectors[h:]) | ~pair_mask[:h, None]))


def reverse_pair_order(
    centers: jnp.ndarray, neighbours: jnp.ndarray, vectors: jnp.ndarray, pair_mask: jnp.ndarray,
    n_atoms: int,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """A pair order whose second half holds the exact reverses of its first half.

    In a full neighbour list each pair (i, j, r) has a reverse (j, i, -r), with bitwise the
    same distance, which moreover is the same function of the positions: functions of d_ij
    need only be evaluated on the first half, gradients stay exact. Reverses are looked up
    assuming pairs sorted by (center, neighbour) and then checked exactly, so nothing is
    assumed about the input. Padding pairs are split between both halves. Pairs already in
    that layout (:func:`is_halves_layout`) keep their order.

    Returns ``order`` (P,), indices into the pairs, and ``valid`` (scalar bool), False unless
    every real pair has exactly one exact reverse (not so for half lists, or for several
    periodic images of one (i, j)); ``order`` is then the identity.
    """
    n_pairs = centers.shape[0]
    idx = jnp.arange(n_pairs, dtype=centers.dtype)
    key = centers * n_atoms + neighbours
    reverse_key = neighbours * n_atoms + centers
    # O(P^2) / O(P log P) work
    method = "compare_all" if n_pairs <= COMPARE_ALL_MAX_PAIRS else "scan"
    partner = jnp.searchsorted(key, reverse_key, method=method)
    partner = jnp.minimum(partner, n_pairs - 1)
    found = (key[partner] == reverse_key) & (partner[partner] == idx) & pair_mask[partner]
    found &= jnp.all(vectors[partner] == -vectors, axis=1)
    order, valid = halves_order(partner, found, pair_mask)
    already = is_halves_layout(centers, neighbours, vectors, pair_mask)
    return jnp.where(already, idx, order), valid | already


def reverse_pair_order_by_shifts(
    centers: jnp.ndarray, neighbours: jnp.ndarray, shifts: jnp.ndarray, pair_mask: jnp.ndarray,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """:func:`reverse_pair_order` for pairs in any order, several periodic images of one
    (i, j) included: the reverse of (i, j, S) is (j, i, -S), found by sorting (O(P log P),
    :func:`so3krates.neighbours.reverse_partners`).

    ``shifts`` (P, 3) hold integers (any dtype). Returns ``(order, valid)`` as
    :func:`reverse_pair_order`, ``valid`` False unless every real pair's reverse is there.
    """
    partner, found = reverse_partners(centers, neighbours, shifts, pair_mask, xp=jnp)
    return halves_order(partner, found, pair_mask)


def halves_order(
    partner: jnp.ndarray, found: jnp.ndarray, pair_mask: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The halves layout from each pair's reverse: ``(order, valid)``.

    Args:
        partner: (P,) index of each pair's reverse; found: (P,) bool, True where it is one
            and is paired back (``partner[partner] == index``), checked by the caller;
            pair_mask: (P,) True for real pairs.

    Returns ``order`` (P,): the first member of each couple (the one with the lower index)
    in [0, P/2) in their order, its reverse at the same place in [P/2, P), padding split
    between the halves; and ``valid`` (scalar bool), False if some real pair has no
    reverse or the padding cannot be split, ``order`` then the identity.
    """
    n_pairs = partner.shape[0]
    half = n_pairs // 2
    idx = jnp.arange(n_pairs, dtype=partner.dtype)
    first = pair_mask & (idx < partner)
    # Ranks among the first members and among the padding pairs (one cumsum for both).
    rank, pad_rank = jnp.cumsum(jnp.stack([first, ~pair_mask]), axis=1, dtype=idx.dtype) - 1
    n_first, n_pad = rank[-1] + 1, pad_rank[-1] + 1
    pad_pos = n_first + jnp.where(pad_rank < n_pad // 2, pad_rank, half + pad_rank - n_pad // 2)
    pos = jnp.where(pair_mask, jnp.where(first, rank, half + rank[partner]), pad_pos)
    valid = jnp.all(found | ~pair_mask) & (2 * n_first + n_pad == n_pairs) & (n_pad % 2 == 0)
    order = jnp.zeros_like(idx).at[jnp.where(valid, pos, idx)].set(idx, unique_indices=True)
    return order, valid
