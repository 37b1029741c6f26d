"""The potential: one energy function of positions and cell; everything else is derived.

Two shapes of the same contract, in the spirit of jax-md and glp:

- on padded graphs (training, evaluation, the calculator): ``energy_fn(params, graph) -> (S,)``
  total energies in float64 eV (:func:`make_energy_fn`), and :func:`make_predict_fn`, which
  derives forces, stress and per-atom stresses from it;
- on one structure (MD, relaxation): any ``energy_fn(positions (N, 3), cell (3, 3), *args)``
  returning the total energy () or per-atom energies (N,), and :func:`derive`, which turns it
  into energy, forces and virial.

Forces are ``-dE/dR``; the virial is ``dE/dε`` for a symmetric strain ε applied to positions
*and* cell together (``R -> R (1 + ε)``, ``cell -> cell (1 + ε)``), so every term that depends
on the cell (images, Ewald sums) is covered without a hand-written derivative; the stress is
the virial over the cell volume, in ASE's sign (tension positive, eV/Å³). Per-atom stresses
split each pair's contribution ``r_ij ⊗ dE/dr_ij`` between its two atoms (the pair-vector
virial of glp; it sums to the strain virial for any energy of pair vectors).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from so3krates.batching import Graph


class Prediction(NamedTuple):
    """Model output for a padded batch (padding entries are zero).

    Attributes:
        energy: total energies in eV, (S,) float64.
        forces: forces in eV/Å, (N, 3), model dtype.
        atomic_energies: per-atom energies in eV, (N,) float64.
        stress: stress in eV/Å³ (ASE sign: tension positive), (S, 3, 3), or None when not
            requested; zero for structures without volume (molecules, padding).
        atomic_stresses: per-atom stresses in eV/Å³ (N, 3, 3), summing to ``stress`` over a
            structure's atoms, or None when not requested.
        energy_terms: with physical terms, each term's energy per structure, (S,) float64 eV
            by name ("network", "zbl", "electrostatics", "dispersion"); else None.
        charges: partial charges in e (N,) of a model with electrostatics, else None.
        dipole: Σ q_i R_i per structure (S, 3) in e Å of such a model, else None.
        hirshfeld_ratios: (N,) of a model with learned dispersion, else None.
    """

    energy: jnp.ndarray
    forces: jnp.ndarray
    atomic_energies: jnp.ndarray
    stress: jnp.ndarray | None = None
    atomic_stresses: jnp.ndarray | None = None
    energy_terms: dict | None = None
    charges: jnp.ndarray | None = None
    dipole: jnp.ndarray | None = None
    hirshfeld_ratios: jnp.ndarray | None = None


def pair_vectors(graph: Graph) -> jnp.ndarray:
    """r_ij = R_j - R_i + S_ij @ cell, (P, 3) in Å."""
    cell = graph.cells[graph.structure[graph.centers]]
    offset = jnp.einsum("pk,pkl->pl", graph.shifts.astype(cell.dtype), cell)
    return graph.positions[graph.neighbours] - graph.positions[graph.centers] + offset


def deform(positions: jnp.ndarray, cells: jnp.ndarray, strain: jnp.ndarray,
           structure: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Positions and cells under the symmetric strain ``(strain + strain^T) / 2``.

    Args:
        positions: (N, 3) Å; cells: (S, 3, 3) lattice vectors as rows (or (3, 3) for one
            structure); strain: (S, 3, 3) (or (3, 3)); structure: (N,) the structure of each
            atom (None: one structure).

    Returns ``(positions @ (1 + ε), cells @ (1 + ε))`` per structure.
    """
    eps = 0.5 * (strain + jnp.swapaxes(strain, -1, -2))
    if structure is None:
        return positions + positions @ eps, cells + cells @ eps
    per_atom = eps[structure]
    return (positions + jnp.einsum("na,nab->nb", positions, per_atom),
            cells + jnp.einsum("sia,sab->sib", cells, eps))


def cell_volume(cells: jnp.ndarray) -> jnp.ndarray:
    """|det(cell)|, (S,) or () in Å³ (zero for molecules)."""
    return jnp.abs(jnp.linalg.det(cells))


def stress_from_virial(virial: jnp.ndarray, cells: jnp.ndarray) -> jnp.ndarray:
    """``virial / volume`` (eV/Å³; virial = dE/dε in eV), zero where the cell has no volume."""
    volume = cell_volume(cells)[..., None, None]
    return jnp.where(volume > 0, virial / jnp.where(volume > 0, volume, 1.0), 0.0)


class Derived(NamedTuple):
    """What :func:`derive` returns for one structure.

    Attributes:
        energy: total energy, eV, float64 scalar.
        forces: (N, 3) eV/Å, in the positions' dtype.
        atomic_energies: (N,) eV if the energy function returns them, else None.
        virial: dE/dε (3, 3) in eV if requested, else None (stress = virial / volume).
    """

    energy: jnp.ndarray
    forces: jnp.ndarray
    atomic_energies: jnp.ndarray | None
    virial: jnp.ndarray | None


def derive(energy_fn: Callable, virial: bool = False) -> Callable[..., Derived]:
    """``fn(positions, cell, *args) -> Derived`` from ``energy_fn(positions, cell, *args)``
    (total energy () or per-atom energies (N,)): forces in one backward pass, with ``virial``
    the strain derivative in the same pass."""

    def total(positions, cell, strain, *args):
        if strain is not None:
            positions, cell = deform(positions, cell, strain)
        e = energy_fn(positions, cell, *args)
        return jnp.sum(e), (e if e.ndim else None)

    def fn(positions, cell, *args) -> Derived:
        if not virial:
            (e, atomic), g = jax.value_and_grad(total, has_aux=True)(positions, cell, None, *args)
            return Derived(e, -g, atomic, None)
        strain = jnp.zeros((3, 3), positions.dtype)
        (e, atomic), (g, w) = jax.value_and_grad(total, argnums=(0, 2), has_aux=True)(
            positions, cell, strain, *args)
        return Derived(e, -g, atomic, w)

    return fn


def hessian(energy_fn: Callable) -> Callable:
    """``fn(positions, cell, *args) -> (N, 3, N, 3)`` second derivatives d²E/dR dR in eV/Å² of
    ``energy_fn(positions, cell, *args)`` (total or per-atom energies), forward over reverse
    mode: the energy function must support ``jax.jvp`` (for a trained model, its
    ``exact_module``)."""
    return jax.hessian(lambda positions, cell, *args: jnp.sum(energy_fn(positions, cell, *args)))


def with_exact_tangents(fast_fn: Callable, exact_fn: Callable,
                        exact_params: Callable[[dict], dict]) -> Callable:
    """``fn(params, graph)`` whose values are ``fast_fn``'s and whose derivatives, forward
    and reverse, are ``exact_fn``'s (``jax.custom_jvp``).

    ``fast_fn`` may contain reverse-mode-only rules (an inference model's custom VJPs and
    fused kernels), which ``jax.jvp`` cannot go through; ``exact_fn`` computes the same
    function without them (the exact network). A call that is not differentiated costs what
    ``fast_fn`` costs. ``exact_params(params)`` maps ``fast_fn``'s parameters to
    ``exact_fn``'s (the same, less what is derived from them); derivatives in the derived
    parameters themselves are not taken. Only the perturbed inputs are carried in forward
    mode (symbolic zeros), so the tangent of a prediction along the positions alone costs one
    forward-mode pass of the exact network.
    """
    fn = jax.custom_jvp(fast_fn)

    def jvp(primals, tangents):
        params, graph = primals
        leaves, tree = jax.tree.flatten((exact_params(params), graph))
        t_leaves = jax.tree.leaves((exact_params(tangents[0]), tangents[1]), is_leaf=_is_zero)
        moved = [i for i, t in enumerate(t_leaves) if not _is_zero(t)]

        def along(*xs):
            full = list(leaves)
            for i, x in zip(moved, xs):
                full[i] = x
            return exact_fn(*tree.unflatten(full))

        out = fast_fn(params, graph)
        if not moved:
            return out, jax.tree.map(jnp.zeros_like, out)
        _, d_out = jax.jvp(along, [leaves[i] for i in moved], [t_leaves[i] for i in moved])
        return out, d_out

    fn.defjvp(jvp, symbolic_zeros=True)
    return fn


def _is_zero(t) -> bool:
    return isinstance(t, jax.custom_derivatives.SymbolicZero)


def restrict_to(tree: dict, like: dict) -> dict:
    """The entries of a nested dict ``tree`` whose keys are in ``like`` (the network's
    parameters out of an inference model's, which add derived ones)."""
    return {k: restrict_to(tree[k], v) if isinstance(v, dict) else tree[k]
            for k, v in like.items()}


def electronic_inputs(graph: Graph) -> tuple:
    """The network's ``electronic`` input of a graph: ``(structure (N,), charge (S,), spin
    (S,), atom_mask (N,))``, neutral and closed-shell where the graph has no values."""
    zeros = jnp.zeros(graph.cells.shape[0], graph.positions.dtype)
    return (graph.structure, zeros if graph.charge is None else graph.charge,
            zeros if graph.spin is None else graph.spin, graph.atom_mask)


def make_atomic_energy_fn(
    model, reference_energies: np.ndarray, pair_halves: bool = False, terms=None,
    aux: bool = False,
) -> Callable[..., jnp.ndarray]:
    """``atomic_energy_fn(params, graph, vectors=None) -> (N,)`` float64 per-atom energies
    (``vectors``: the pair vectors (P, 3) to use instead of :func:`pair_vectors`): the
    network's plus those of the physical ``terms``
    (:class:`so3krates.terms.physical.PhysicalTerms`, None: none). With ``aux`` it returns
    ``(energies, aux)``, ``aux`` a dict with each term's per-atom energies ("energy_terms")
    and the :class:`~so3krates.terms.physical.Electronic` quantities ("electronic").

    Args:
        model: the network: a flax module mapping ``(numbers, vectors, centers, neighbours,
            pair_mask, pair_halves)`` to per-atom energies (see ``so3krates.model``).
        reference_energies: per-element reference energies e_Z in eV, indexed by atomic
            number, shape (num_elements,); kept in float64.
        pair_halves: the graphs' pairs are in the halves layout (``GraphDataset.pair_halves``;
            faster; NaN energies and forces for graphs that are not, see ``So3krates``).
    """
    ref = jnp.asarray(np.asarray(reference_energies, dtype=np.float64))
    charge_spin = getattr(model, "charge_spin", False)
    efa = bool(getattr(model, "efa_blocks", ()))

    def atomic_energy_fn(params: dict, graph: Graph, vectors=None) -> jnp.ndarray:
        v = pair_vectors(graph) if vectors is None else vectors
        electronic = electronic_inputs(graph) if charge_spin or efa else None
        out = model.apply({"params": params}, graph.numbers, v, graph.centers, graph.neighbours,
                          graph.pair_mask, pair_halves, electronic,
                          graph.positions if efa else None)
        e, heads = out if isinstance(out, tuple) else (out, {})
        e = jnp.where(graph.atom_mask, e.astype(jnp.float64) + ref[graph.numbers], 0.0)
        if terms is None or not terms.active:
            return (e, {"energy_terms": {"network": e}, "electronic": None}) if aux else e
        electronic_out = terms.electronic(graph, heads)
        parts = {"network": e, **terms.atomic_energies(graph, v, electronic_out)}
        total = sum(parts.values())
        return (total, {"energy_terms": parts, "electronic": electronic_out}) if aux else total

    return atomic_energy_fn


def make_energy_fn(model, reference_energies: np.ndarray, pair_halves: bool = False, terms=None):
    """``energy_fn(params, graph) -> (S,)`` float64 total energies per structure
    (``pair_halves``, ``terms``: see :func:`make_atomic_energy_fn`)."""
    atomic_energy_fn = make_atomic_energy_fn(model, reference_energies, pair_halves, terms)

    def energy_fn(params: dict, graph: Graph) -> jnp.ndarray:
        e = atomic_energy_fn(params, graph)
        return jax.ops.segment_sum(e, graph.structure, num_segments=graph.cells.shape[0])

    return energy_fn


def make_predict_fn(model, reference_energies: np.ndarray, pair_halves: bool = False,
                    stress: bool = False, atomic_stresses: bool = False, terms=None):
    """:func:`predict_fn` of a network and its physical ``terms`` (``pair_halves``, ``terms``:
    see :func:`make_atomic_energy_fn`)."""
    with_terms = terms is not None and terms.active
    if atomic_stresses and with_terms and terms.long_range:
        raise NotImplementedError("per-atom stresses of long-range terms are not available")
    if atomic_stresses and getattr(model, "efa_blocks", ()):
        raise NotImplementedError("per-atom stresses of a model with EFA are not available")
    return predict_fn(make_atomic_energy_fn(model, reference_energies, pair_halves, terms,
                                            aux=with_terms), stress, atomic_stresses,
                      aux=with_terms, terms=terms)


def predict_fn(atomic_energy_fn: Callable, stress: bool = False, atomic_stresses: bool = False,
               aux: bool = False, terms=None):
    """``predict(params, graph) -> Prediction`` of any ``atomic_energy_fn(params, graph,
    vectors=None) -> (N,)`` (per-atom energies, padding atoms zero; ``vectors`` the pair
    vectors to use instead of :func:`pair_vectors`): forces = -dE/dR in one backward pass;
    with ``stress`` the strain derivative in the same pass; with ``atomic_stresses`` per-atom
    stresses (and the stress, their sum) from the pair-vector gradient, for energies that
    depend on the positions through the pair vectors only. What is not requested is not
    computed (each choice is its own compiled function).

    ``aux``: ``atomic_energy_fn`` returns ``(energies, aux)`` as with
    :func:`make_atomic_energy_fn`'s ``aux``; the prediction then reports each term's energy,
    and the partial charges, dipoles and Hirshfeld ratios (``terms``: the physical terms)."""
    if atomic_stresses:
        return _pair_virial_predict_fn(atomic_energy_fn, aux, terms)

    def predict(params: dict, graph: Graph) -> Prediction:
        n_struct = graph.cells.shape[0]

        def total(positions, strain):
            cells = graph.cells
            if strain is not None:
                positions, cells = deform(positions, cells, strain, graph.structure)
            out = atomic_energy_fn(params, graph._replace(positions=positions, cells=cells))
            e, extra = out if aux else (out, None)
            return jnp.sum(e), (e, extra)

        if stress:
            strain = jnp.zeros((n_struct, 3, 3), graph.positions.dtype)
            (_, (atomic, extra)), (grad, virial) = jax.value_and_grad(
                total, (0, 1), has_aux=True)(graph.positions, strain)
            sigma = stress_from_virial(virial.astype(jnp.float64), graph.cells)
        else:
            (_, (atomic, extra)), grad = jax.value_and_grad(total, has_aux=True)(
                graph.positions, None)
            sigma = None
        energy = jax.ops.segment_sum(atomic, graph.structure, num_segments=n_struct)
        forces = jnp.where(graph.atom_mask[:, None], -grad, 0.0)
        return Prediction(energy, forces, atomic, sigma,
                          **_aux_fields(extra, graph, n_struct, terms))

    return predict


def _aux_fields(extra, graph: Graph, n_struct: int, terms) -> dict:
    """The :class:`Prediction` fields of a potential's aux output (empty without one)."""
    if extra is None:
        return {}
    fields = {"energy_terms": {
        name: jax.ops.segment_sum(e, graph.structure, num_segments=n_struct)
        for name, e in extra["energy_terms"].items()}}
    el = extra["electronic"]
    if el is not None:
        fields.update(charges=el.charges, hirshfeld_ratios=el.hirshfeld_ratios,
                      dipole=terms.dipole(graph, el))
    return fields


def _pair_virial_predict_fn(atomic_energy_fn, aux: bool = False, terms=None):
    """:func:`make_predict_fn` with per-atom stresses: the gradient in the pair vectors gives
    the forces (``r_ij`` moves with ``R_j`` and against ``R_i``) and each pair's virial
    ``r_ij ⊗ dE/dr_ij``, half to each of its atoms."""

    def predict(params: dict, graph: Graph) -> Prediction:
        n_atoms, n_struct = graph.positions.shape[0], graph.cells.shape[0]
        vectors = pair_vectors(graph)

        def total(v):
            out = atomic_energy_fn(params, graph, v)
            e, extra = out if aux else (out, None)
            return jnp.sum(e), (e, extra)

        (_, (atomic, extra)), g = jax.value_and_grad(total, has_aux=True)(vectors)
        g = jnp.where(graph.pair_mask[:, None], g, 0.0)
        grad = (jax.ops.segment_sum(g, graph.neighbours, n_atoms)
                - jax.ops.segment_sum(g, graph.centers, n_atoms))
        pair_w = 0.5 * jnp.einsum("pa,pb->pab", vectors, g).astype(jnp.float64)
        pair_w = 0.5 * (pair_w + jnp.swapaxes(pair_w, 1, 2))
        atom_w = (jax.ops.segment_sum(pair_w, graph.centers, n_atoms)
                  + jax.ops.segment_sum(pair_w, graph.neighbours, n_atoms))
        atom_w = jnp.where(graph.atom_mask[:, None, None], atom_w, 0.0)
        volume = cell_volume(graph.cells)[graph.structure]
        atom_sigma = jnp.where(volume[:, None, None] > 0,
                               atom_w / jnp.where(volume > 0, volume, 1.0)[:, None, None], 0.0)
        energy = jax.ops.segment_sum(atomic, graph.structure, num_segments=n_struct)
        sigma = jax.ops.segment_sum(atom_sigma, graph.structure, num_segments=n_struct)
        forces = jnp.where(graph.atom_mask[:, None], -grad, 0.0)
        return Prediction(energy, forces, atomic, sigma, atom_sigma,
                          **_aux_fields(extra, graph, n_struct, terms))

    return predict
