"""The physical energy terms a model adds to its network (SpookyNet / SO3LR), as one
configurable sum: nuclear repulsion (ZBL), electrostatics of learned partial charges and
dispersion from learned Hirshfeld-volume ratios.

:class:`PhysicalTerms` says which terms are on (``model.zbl``, ``model.electrostatics``,
``model.dispersion`` in ``model.yaml``) and maps a padded graph plus the network's per-atom
outputs to per-atom energies of each term. ZBL uses the network's pairs (it is switched off
at the network's cutoff); electrostatics and dispersion use the graph's long-range pairs
(``Graph.long_range``, a half list: within ``model.long_range_cutoff``, or all pairs of a
molecule). The electrostatics of 3D-periodic structures is an Ewald sum: real space over the
long-range pairs, reciprocal space over the graph's k-vectors (``Graph.ewald``) or, for one
large structure, on a particle-mesh grid (``so3krates.terms.pme``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from so3krates.batching import Graph, PairSet
from so3krates.terms import d3
from so3krates.terms.coulomb import conserve_charge, coulomb_pair_energy, dipole_moment
from so3krates.terms.dispersion import free_atom_parameters, ts_pair_energy
from so3krates.terms.ewald import ewald_pair_energy, ewald_split, kspace_atomic_energies
from so3krates.terms.pme import pme_atomic_energies
from so3krates.terms.zbl import zbl_pair_energy


class Electronic(NamedTuple):
    """Per-atom electronic quantities of a prediction (padding atoms zero).

    Attributes:
        charges: partial charges in e summing to each structure's total charge, (N,), or None.
        hirshfeld_ratios: Hirshfeld-volume ratios, (N,), or None.
    """

    charges: jnp.ndarray | None = None
    hirshfeld_ratios: jnp.ndarray | None = None


class PhysicalTerms(NamedTuple):
    """Which physical terms a model has, and their ranges.

    Attributes:
        zbl: ZBL repulsion on the network's pairs, switched off at ``cutoff``.
        electrostatics: damped Coulomb energy of the partial charges (the network's "charge"
            head, shifted to sum to the total charge): ``1/sqrt(r² + 1)`` below
            ``cutoff / 4``, exactly ``1/r`` beyond ``3 cutoff / 4`` (SpookyNet's switch),
            shifted-force to zero at ``long_range_cutoff`` when that is set; in 3D-periodic
            structures the Ewald sum of the same damped energy, without a cutoff (real space
            within ``long_range_cutoff``, reciprocal space balanced by ``ewald_accuracy``).
        dispersion: "none"; "learned": Tkatchenko–Scheffler dispersion with the network's
            Hirshfeld-volume ratios (softplus of its "hirshfeld" head); "d3": DFT-D3(BJ)
            two-body dispersion with the parameters of ``d3_functional`` (no parameters
            learned; coordination numbers from the same pairs). Both switched off over the
            last 2 Å before ``long_range_cutoff`` when that is set.
        cutoff: the network's cutoff in Å.
        long_range_cutoff: Å, or None (every pair of a molecule).
        ewald_accuracy: ``erfc(α long_range_cutoff)`` of the Ewald sums (see
            ``so3krates.terms.ewald.ewald_split``).
        kspace_method: the reciprocal sum of a single periodic structure: "ewald" (its
            k-vectors), "pme" (a particle-mesh grid, ``so3krates.terms.pme``) or "auto" (the
            mesh for large N·K, ``so3krates.neighbours.kspace.use_pme``). Training batches
            always use k-vectors.
    """

    zbl: bool = False
    electrostatics: bool = False
    dispersion: str = "none"
    cutoff: float = 5.0
    long_range_cutoff: float | None = None
    ewald_accuracy: float = 1e-6
    kspace_method: str = "auto"
    d3_functional: str = "pbe"

    @classmethod
    def from_config(cls, config) -> "PhysicalTerms":
        """From a :class:`so3krates.config.ModelConfig`."""
        return cls(config.zbl, config.electrostatics, config.dispersion, config.cutoff,
                   config.long_range_cutoff, config.ewald_accuracy, config.kspace_method,
                   config.d3_functional)

    @property
    def active(self) -> bool:
        return self.zbl or self.long_range

    @property
    def long_range(self) -> bool:
        """True if a term needs the long-range pairs (``Graph.long_range``)."""
        return self.electrostatics or self.dispersion != "none"

    @property
    def heads(self) -> tuple[str, ...]:
        """The per-atom network outputs the terms read."""
        return (("charge",) if self.electrostatics else ()) + (
            ("hirshfeld",) if self.dispersion == "learned" else ())

    @property
    def names(self) -> tuple[str, ...]:
        """The terms that are on, in the order of :meth:`atomic_energies`."""
        return tuple(name for name, on in (("zbl", self.zbl),
                                           ("electrostatics", self.electrostatics),
                                           ("dispersion", self.dispersion != "none")) if on)

    def check_periodic(self, pbc) -> None:
        """Raise for a structure (``pbc`` (3,) or (S, 3)) these terms cannot handle: the
        electrostatics of slabs and wires (periodic in one or two directions) would need a
        2D or 1D Ewald sum, and a truncated Coulomb sum there would be a silent
        approximation; 3D-periodic structures need ``long_range_cutoff`` (the real-space
        cutoff of their Ewald sums)."""
        pbc = np.asarray(pbc, dtype=bool).reshape(-1, 3)
        if not self.electrostatics:
            return
        if (pbc.any(axis=1) & ~pbc.all(axis=1)).any():
            raise ValueError("electrostatics of structures periodic in only one or two "
                             "directions (slabs, wires) is not available: make them fully "
                             "periodic (with vacuum) or switch model.electrostatics off")
        if pbc.any() and self.long_range_cutoff is None:
            raise ValueError("electrostatics of periodic structures (an Ewald sum) needs "
                             "model.long_range_cutoff, its real-space cutoff (e.g. 10 Å)")

    def check_elements(self, numbers) -> None:
        """Raise, naming them, for elements these terms have no data for (learned dispersion:
        the free-atom table), so that training refuses them up front; ``numbers``: a list of
        per-structure atomic-number arrays. A trained model then only meets elements it has
        data for (the calculator and MD refuse the others as unknown to the model)."""
        if self.dispersion != "none" and len(numbers):
            elements = np.unique(np.concatenate([np.ravel(z) for z in numbers]))
            if self.dispersion == "learned":
                free_atom_parameters(elements)
            else:
                d3.check_elements(elements)
                d3.d3_bj_parameters(self.d3_functional)

    @property
    def ewald_alpha(self) -> float | None:
        """The Ewald splitting parameter (1/Å) of periodic electrostatics, or None."""
        if not self.electrostatics or self.long_range_cutoff is None:
            return None
        return ewald_split(self.long_range_cutoff, self.ewald_accuracy)[0]

    def graph_options(self) -> dict:
        """What a graph for these terms needs: keyword arguments of
        ``so3krates.batching.single_graph`` and ``GraphDataset`` (long-range pairs; k-vectors
        for the Ewald sums of 3D-periodic structures)."""
        k_cutoff = None
        if self.ewald_alpha is not None:
            k_cutoff = ewald_split(self.long_range_cutoff, self.ewald_accuracy)[1]
        return {"long_range": self.long_range, "long_range_cutoff": self.long_range_cutoff,
                "kspace_cutoff": k_cutoff}

    def single_graph_options(self) -> dict:
        """:meth:`graph_options` plus the k-space method of a single structure (keyword
        arguments of ``so3krates.batching.single_graph``: the calculator's graphs)."""
        return {**self.graph_options(), "kspace_method": self.kspace_method,
                "ewald_alpha": self.ewald_alpha}

    def parameter_free_energies(self, data) -> np.ndarray:
        """Energies (S,) in eV of the terms without parameters (ZBL, D3 dispersion) for each
        structure of a :class:`so3krates.data.Dataset`: the reference energies are fitted to
        the labels minus these, so that the network does not start tens of eV off."""
        from so3krates.neighbours import long_range_list, neighbour_list

        out = np.zeros(len(data))
        for k in range(len(data) if self.zbl or self.dispersion == "d3" else 0):
            positions, cell, pbc, z = (data.positions[k], data.cells[k], data.pbc[k],
                                       data.numbers[k])
            if self.zbl:
                nl = neighbour_list(positions, cell, pbc, self.cutoff)
                vec = positions[nl.neighbours] - positions[nl.centers] + nl.shifts @ cell
                e = zbl_pair_energy(jnp.asarray(np.linalg.norm(vec, axis=1)), z[nl.centers],
                                    z[nl.neighbours], self.cutoff, jnp.ones(len(vec), bool))
                out[k] += 0.5 * float(jnp.sum(e))
            if self.dispersion == "d3":  # the model's pairs: a half list, as in the model
                lr = long_range_list(positions, cell, pbc, self.long_range_cutoff)
                out[k] += float(d3.d3_energy_from_pairs(
                    jnp.asarray(positions), jnp.asarray(cell), jnp.asarray(z), lr.centers,
                    lr.neighbours, lr.shifts, np.ones(len(lr.centers), bool),
                    self.d3_functional, self.long_range_cutoff, self.long_range_cutoff))
        return out

    def electronic(self, graph: Graph, heads: dict) -> Electronic:
        """Partial charges (summing to ``graph.charge``) and Hirshfeld ratios from the
        network's raw per-atom outputs ``heads``."""
        charges = ratios = None
        if self.electrostatics:
            total = (jnp.zeros(graph.cells.shape[0]) if graph.charge is None else graph.charge)
            charges = conserve_charge(heads["charge"].astype(jnp.float64), graph.structure,
                                      jnp.asarray(total, jnp.float64), graph.atom_mask)
        if self.dispersion == "learned":
            # softplus: positive, and smooth where |h| would have a kink (and a cube root of 0
            # an infinite slope); the head starts at softplus^-1(1), the free atom.
            ratios = jnp.where(graph.atom_mask, jax.nn.softplus(heads["hirshfeld"].astype(
                jnp.float64)), 0.0)
        return Electronic(charges, ratios)

    def atomic_energies(self, graph: Graph, vectors: jnp.ndarray,
                        electronic: Electronic) -> dict[str, jnp.ndarray]:
        """Per-atom energies (N,) in eV (float64) of each term that is on.

        Args:
            graph: the padded graph (with ``long_range`` pairs if a term needs them).
            vectors: the network's pair vectors r_ij (P, 3), Å.
            electronic: from :meth:`electronic`.
        """
        n_atoms = graph.positions.shape[0]

        def per_atom(pair_energy, centers):  # full lists: half of each listing to its centre
            return 0.5 * jax.ops.segment_sum(pair_energy.astype(jnp.float64), centers, n_atoms)

        def per_atom_half(pair_energy, i, j):  # half lists: half of each pair to each atom
            e = 0.5 * pair_energy.astype(jnp.float64)
            return jax.ops.segment_sum(e, i, n_atoms) + jax.ops.segment_sum(e, j, n_atoms)

        out = {}
        if self.zbl:
            r = _distances(vectors, graph.pair_mask)
            z = graph.numbers
            out["zbl"] = per_atom(zbl_pair_energy(r, z[graph.centers], z[graph.neighbours],
                                                  self.cutoff, graph.pair_mask), graph.centers)
        if self.long_range:
            pairs = graph.long_range
            if pairs is None:
                raise ValueError("the graph has no long-range pairs: build it with the model's "
                                 "long_range settings")
            # Pair energies in the model's precision (float32 transcendentals cost a third of
            # float64 on a CPU), summed per atom in float64.
            r = _distances(long_range_vectors(graph, pairs), pairs.mask)
            i, j = pairs.centers, pairs.neighbours
            if self.electrostatics:
                out["electrostatics"] = self._electrostatics(graph, electronic.charges, r,
                                                             per_atom_half)
            if self.dispersion == "learned":
                h, z = electronic.hirshfeld_ratios.astype(r.dtype), graph.numbers
                out["dispersion"] = per_atom_half(ts_pair_energy(
                    r, z[i], z[j], h[i], h[j], pairs.mask, self.long_range_cutoff), i, j)
            elif self.dispersion == "d3":
                out["dispersion"] = per_atom_half(self._d3(graph, r, pairs), i, j)
        return {k: jnp.where(graph.atom_mask, v, 0.0) for k, v in out.items()}

    def _d3(self, graph: Graph, r: jnp.ndarray, pairs: PairSet) -> jnp.ndarray:
        """D3(BJ) energy of each long-range pair (P,), coordination numbers counted over the
        same pairs (a half list) with the same switch: the counting function is ~1e-4 at
        twice the covalent distance, so a 10 Å list misses nothing of it."""
        z, i, j = graph.numbers, pairs.centers, pairs.neighbours
        cn = d3.coordination_numbers(r, z[i], z[j], i, graph.positions.shape[0], pairs.mask,
                                     j, self.long_range_cutoff)
        return d3.d3_pair_energy(r, z[i], z[j], cn[i], cn[j], pairs.mask,
                                 d3.d3_bj_parameters(self.d3_functional), self.long_range_cutoff)

    def _electrostatics(self, graph: Graph, q: jnp.ndarray, r: jnp.ndarray,
                        per_atom_half) -> jnp.ndarray:
        """Per-atom electrostatic energies (N,): the damped Coulomb pair sum of molecules, the
        Ewald sum of 3D-periodic structures (those flagged in ``graph.ewald``)."""
        pairs, on, off = graph.long_range, 0.25 * self.cutoff, 0.75 * self.cutoff
        i, j = pairs.centers, pairs.neighbours
        qp = q.astype(r.dtype)  # the pair terms' precision; the k-space sums keep float64
        if graph.ewald is None:
            return per_atom_half(coulomb_pair_energy(r, qp[i], qp[j], pairs.mask, on, off,
                                                     self.long_range_cutoff), i, j)
        periodic = graph.ewald.periodic[graph.structure[i]]
        alpha = self.ewald_alpha
        pair = (coulomb_pair_energy(r, qp[i], qp[j], pairs.mask & ~periodic, on, off,
                                    self.long_range_cutoff)
                + ewald_pair_energy(r, qp[i], qp[j], pairs.mask & periodic, alpha, on, off))
        positions = graph.positions.astype(jnp.float64)
        if graph.ewald.mesh is not None:  # one periodic structure (index 0) on a PME grid
            kspace = pme_atomic_energies(positions, q, graph.cells[0], graph.atom_mask
                                         & (graph.structure == 0), alpha, graph.ewald.mesh.shape)
        else:
            kspace = kspace_atomic_energies(positions, q, graph.structure, graph.cells,
                                            graph.ewald.kvectors, graph.ewald.periodic,
                                            graph.atom_mask, alpha)
        return per_atom_half(pair, i, j) + kspace

    def dipole(self, graph: Graph, electronic: Electronic) -> jnp.ndarray | None:
        """Σ q_i R_i per structure, (S, 3) e Å, or None without electrostatics."""
        if electronic.charges is None:
            return None
        return dipole_moment(graph.positions.astype(jnp.float64), electronic.charges,
                             graph.structure, graph.cells.shape[0])


def long_range_vectors(graph: Graph, pairs: PairSet) -> jnp.ndarray:
    """r_ij = R_j - R_i + S_ij @ cell of the long-range pairs, (L, 3) in Å."""
    cell = graph.cells[graph.structure[pairs.centers]]
    offset = jnp.einsum("pk,pkl->pl", pairs.shifts.astype(cell.dtype), cell)
    return graph.positions[pairs.neighbours] - graph.positions[pairs.centers] + offset


def _distances(vectors: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """|r| of real pairs, 1 for padding pairs (no 0 under a square root's derivative)."""
    safe = jnp.where(mask[:, None], vectors, 1.0)
    return jnp.where(mask, jnp.sqrt(jnp.sum(safe * safe, axis=-1)), 1.0)
