"""Committees of independently trained models, evaluated in one compiled call.

An ensemble directory holds ``ensemble.yaml`` (human-readable, no pickle: the format, the
member directories relative to it, each member's parameter checksum) and the members, each an
ordinary model directory (``members/0``, ``members/1``, ... when :func:`write_ensemble`
copies them there)::

    committee/
      ensemble.yaml
      members/0/model.yaml, params.msgpack
      members/1/...

The members' parameters are stacked along a leading axis and the one prediction function of
the architecture is mapped over them inside one compiled function: every member on one graph
in one call, never a Python loop over models. How it is mapped is ``Ensemble(batching=...)``:

- ``"vmap"``: ``jax.vmap`` over the stacked parameters, every operation batched over the
  members (what fills a GPU);
- ``"map"``: ``jax.lax.map``, the members one after another inside the compiled call;
- ``"auto"`` (default): ``"map"`` on the CPU, ``"vmap"`` elsewhere. On the 2-core AMD EPYC
  VM (loaded by other work, calls interleaved; ``benchmarks/ensemble.py``) energy and forces
  of 4 members of the reference architecture in float32 cost 1.4-1.8x more with ``vmap``
  than with ``map`` at 105 and 1,008 atoms (e.g. 1,145 vs 824 ms for 1,008 atoms, one model
  227 ms); ``map`` cost about what 4 separate calls cost. Energies alone (no forces) were
  faster with ``vmap`` (22 vs 30 ms, 105 atoms): the batched backward pass is what is slow.
  GPUs were not measured.

Definitions (M members, ``ddof=0``: the committee's own spread, zero for M = 1):

- energy, forces, per-atom energies, stress: the members' mean. The mean energy's gradient is
  the mean force, so the mean is a conservative potential (MD on it conserves energy).
- ``energy_uncertainty`` per structure (eV): ``sqrt(mean_m (E_m - E)^2)``, the standard
  deviation of the members' energies (multiply by ``sqrt(M / (M - 1))`` for the sample
  standard deviation).
- ``forces_uncertainty`` per atom (eV/Å): ``sqrt(mean_c mean_m (F_mic - F_ic)^2)``, the root
  mean square over the three components of the per-component standard deviation, i.e.
  ``sqrt(mean_m |F_m,i - F_i|^2 / 3)``: comparable with force-component errors (an RMSE of
  force components).
- ``stress_uncertainty`` per structure (eV/Å³): the same over the nine stress components.

Members must share the architecture (``model.yaml``'s model settings other than ``dtype`` and
``output_init``, which set only a training precision and initial values; the cutoff is one of
them), the loaded dtype and the elements. Reference energies may differ (members trained on
different splits fit their own): each member's energy is computed with its own reference
energies (the differences to the first member's, per atom, are added to its energies inside
the mapped call; they do not change forces or stress). The energy scale sets only the initial
per-element scales (the trained values are parameters), so it may differ too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from so3krates.compile import jit
from so3krates.config import dump_yaml
from so3krates.model_io import (
    MODEL_FILE,
    Model,
    ModelFileError,
    load_model,
    read_versioned_yaml,
    reference_table,
)
from so3krates.potential import Prediction, derive

ENSEMBLE_FILE = "ensemble.yaml"
ENSEMBLE_FORMAT = "so3krates-ensemble/1"
MEMBERS_DIR = "members"
# Model settings that may differ between members: they do not change the function the
# parameters compute (the dtype is checked on the loaded members instead).
IGNORED_SETTINGS = ("dtype", "output_init")
# What write_ensemble leaves behind when it copies a model directory: the training state
# (parameters and optimiser moments, for resuming), which prediction never reads.
NOT_COPIED = ("checkpoints",)


class EnsembleFileError(ModelFileError):
    """An ensemble directory that is missing, incomplete or inconsistent."""


class EnsemblePrediction(NamedTuple):
    """An ensemble's output for a padded batch: the :class:`~so3krates.potential.Prediction`
    fields as the members' mean, their spread, and every member's prediction.

    The fields of :class:`~so3krates.potential.Prediction` (``energy``, ``forces``,
    ``atomic_energies``, ``stress``, ``atomic_stresses``, ``energy_terms``, ``charges``,
    ``dipole``, ``hirshfeld_ratios``) are the members' mean (None where the members give
    none), so that code reading a ``Prediction`` reads the mean; then:

    Attributes:
        energy_uncertainty: (S,) eV, standard deviation of the members' energies (ddof=0).
        forces_uncertainty: (N,) eV/Å, ``sqrt(mean over components of the per-component
            variance)``; zero for padding atoms.
        stress_uncertainty: (S,) eV/Å³, the same over the nine stress components, or None.
        members: every member's :class:`~so3krates.potential.Prediction`, stacked along a
            leading axis (``members.energy``: (M, S)).
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
    energy_uncertainty: jnp.ndarray | None = None
    forces_uncertainty: jnp.ndarray | None = None
    stress_uncertainty: jnp.ndarray | None = None
    members: Prediction | None = None

    @property
    def member_energies(self) -> jnp.ndarray:
        """(M, S) eV: each member's energy per structure."""
        return self.members.energy


class EnsembleDerived(NamedTuple):
    """:meth:`Ensemble.derived_fn`'s output for one structure.

    Attributes:
        energy: mean total energy, eV (float64 scalar).
        forces: mean forces (N, 3) eV/Å (the gradient of the mean energy).
        atomic_energies: mean per-atom energies (N,) eV.
        virial: mean dE/dε (3, 3) eV if requested, else None.
        energy_uncertainty: standard deviation of the members' energies (ddof=0), eV.
        forces_uncertainty: (N,) eV/Å, as in :class:`EnsemblePrediction`.
        member_energies: (M,) eV.
    """

    energy: jnp.ndarray
    forces: jnp.ndarray
    atomic_energies: jnp.ndarray
    virial: jnp.ndarray | None
    energy_uncertainty: jnp.ndarray
    forces_uncertainty: jnp.ndarray
    member_energies: jnp.ndarray


def spread(x: jnp.ndarray, axes: tuple[int, ...] = ()) -> jnp.ndarray:
    """``sqrt(mean (x - mean_m x)^2)`` over the members (axis 0) and ``axes`` (of ``x``, each
    > 0): the standard deviation (ddof=0) over members, and the root mean square of it over
    ``axes`` (components)."""
    dev = x - jnp.mean(x, axis=0)
    return jnp.sqrt(jnp.mean(dev * dev, axis=(0, *axes)))


def summarise(members: Prediction) -> EnsemblePrediction:
    """The :class:`EnsemblePrediction` of stacked member predictions (leading axis M)."""
    mean = jax.tree.map(lambda x: jnp.mean(x, axis=0), members)
    s_unc = None if members.stress is None else spread(members.stress, (2, 3))
    return EnsemblePrediction(*mean, energy_uncertainty=spread(members.energy),
                              forces_uncertainty=spread(members.forces, (2,)),
                              stress_uncertainty=s_unc, members=members)


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _flat_settings(model: Model) -> dict:
    """The model settings that must agree, flattened one level (``efa.degree``)."""
    out = {}
    for key, value in model.config.model_dump().items():
        if key in IGNORED_SETTINGS:
            continue
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _name(model: Model, k: int) -> str:
    return f"member {k} ({model.directory})"


def check_compatible(members: Sequence[Model]) -> None:
    """Raise ``ValueError`` unless the members can form one ensemble: the same architecture
    and cutoff (every model setting but ``dtype`` and ``output_init``), loaded dtype, spline
    tables (``radial_knots``) and elements; the message names what differs and where."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    first = members[0]
    want = _flat_settings(first)
    for k, m in enumerate(members[1:], 1):
        got = _flat_settings(m)
        diff = [key for key in sorted(set(want) | set(got)) if want.get(key) != got.get(key)]
        if diff:
            details = "; ".join(f"model.{key}: {want.get(key)!r} vs {got.get(key)!r}"
                                for key in diff)
            raise ValueError(f"ensemble members must share the architecture: {_name(first, 0)} "
                             f"and {_name(m, k)} differ in {details}")
        if m.dtype != first.dtype:
            raise ValueError(f"ensemble members must share the dtype: {_name(first, 0)} is "
                             f"{first.dtype}, {_name(m, k)} is {m.dtype} (load them with the "
                             f"same dtype=)")
        if m.radial_knots != first.radial_knots:
            raise ValueError(f"ensemble members must share radial_knots: {_name(first, 0)} has "
                             f"{first.radial_knots}, {_name(m, k)} has {m.radial_knots}")
        if m.elements != first.elements:
            raise ValueError(f"ensemble members must know the same elements: {_name(first, 0)} "
                             f"knows {first.elements}, {_name(m, k)} knows {m.elements}")


class Ensemble:
    """A committee of models with one architecture, evaluated together.

    Offers what a :class:`~so3krates.model_io.Model` offers for prediction (``predict``,
    ``predict_function``, ``graph``, ``check_elements``, ``calculator``), with an
    :class:`EnsemblePrediction` in place of a ``Prediction``, and for the MD engine
    :meth:`energy_fn`, :meth:`derived_fn` and :meth:`uncertainty_fn`. The definitions of the
    mean and the uncertainties are in the module's docstring.

    Args:
        members: loaded models (see :func:`check_compatible`); :func:`load_ensemble` reads
            them from an ensemble directory.
        directory: the ensemble directory, if any.
        batching: how the one compiled call runs the members: ``"vmap"`` (batched),
            ``"map"`` (one after another), ``"auto"``: ``"map"`` on the CPU, else ``"vmap"``
            (see the module docstring). The results agree to rounding.

    Attributes:
        params: the members' :attr:`~so3krates.model_io.Model.params`, stacked (leading axis
            M).
        inference_params: their ``inference_params``, stacked: what :meth:`predict_function`
            takes.
    """

    def __init__(self, members: Sequence[Model], directory: str | os.PathLike | None = None,
                 batching: str = "auto"):
        members = list(members)
        check_compatible(members)
        if batching not in ("auto", "vmap", "map"):
            raise ValueError(f"batching must be 'auto', 'vmap' or 'map', got {batching!r}")
        if batching == "auto":
            batching = "map" if jax.default_backend() == "cpu" else "vmap"
        self.batching = batching
        self.members = members
        self.directory = None if directory is None else Path(directory)
        first = members[0]
        self.config, self.dtype, self.radial_knots = first.config, first.dtype, first.radial_knots
        self.terms, self.module = first.terms, first.module
        self.reference_energies = first.reference_energies
        self.params = _stack([m.params for m in members])
        self.inference_params = _stack([m.inference_params for m in members])
        # Per member, per element: its reference energies minus the first member's (None when
        # they agree: nothing is added).
        refs = np.stack([reference_table(m.reference_energies) for m in members])
        offsets = refs - refs[0]
        self._offsets = jnp.asarray(offsets) if np.any(offsets) else None
        self._fns: dict = {}
        self._predict: dict = {}
        self.predict_fn = self.predict_function(pair_halves=False)
        self.predict_halves_fn = self.predict_function(pair_halves=True)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def elements(self) -> list[int]:
        return self.members[0].elements

    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    def check_elements(self, numbers: np.ndarray) -> None:
        """Raise ``ValueError`` naming any element the members were not trained on."""
        self.members[0].check_elements(numbers)

    def graph(self, atoms, capacity=None, dtype=None, pair_halves: bool = False):
        """``(graph, capacity)`` of an ``ase.Atoms`` (see
        :meth:`so3krates.model_io.Model.graph`; the same for every member)."""
        return self.members[0].graph(atoms, capacity, dtype, pair_halves)

    # -- padded graphs -------------------------------------------------------------------------

    def _member_fn(self, pair_halves: bool, stress: bool, atomic_stresses: bool) -> Callable:
        """``fn(params, offset, graph) -> Prediction`` of one member (``offset``: (119,) its
        reference energies minus the first member's, or None)."""
        predict = self.members[0]._predict_fn(pair_halves, stress, atomic_stresses)

        def member(params, offset, graph):
            pred = predict(params, graph)
            if offset is None:
                return pred
            d = jnp.where(graph.atom_mask, offset[graph.numbers], 0.0)
            de = jax.ops.segment_sum(d, graph.structure, num_segments=graph.cells.shape[0])
            terms = pred.energy_terms
            if terms is not None:
                terms = {**terms, "network": terms["network"] + de}
            return pred._replace(energy=pred.energy + de, atomic_energies=pred.atomic_energies + d,
                                 energy_terms=terms)

        return member

    def over_members(self, fn: Callable, params: Any = None) -> Callable:
        """``g(*args)``: ``fn(params_m, offset_m, *args)`` of every member, outputs stacked
        along a leading axis, mapped as :attr:`batching` says (``params``: stacked, default
        :attr:`inference_params`; ``offset_m``: the member's reference energies minus the
        first member's, (119,), or None when they agree)."""
        params = self.inference_params if params is None else params
        offsets = self._offsets
        if self.batching == "vmap":
            if offsets is None:
                return lambda *args: jax.vmap(lambda p: fn(p, None, *args))(params)
            return lambda *args: jax.vmap(lambda p, o: fn(p, o, *args))(params, offsets)
        if offsets is None:
            return lambda *args: jax.lax.map(lambda p: fn(p, None, *args), params)
        return lambda *args: jax.lax.map(lambda po: fn(po[0], po[1], *args), (params, offsets))

    def _predict_fn(self, pair_halves: bool, stress: bool, atomic_stresses: bool) -> Callable:
        member = self._member_fn(pair_halves, stress, atomic_stresses)

        def predict(params, graph) -> EnsemblePrediction:
            return summarise(self.over_members(member, params)(graph))

        return predict

    def predict_function(self, pair_halves: bool = False, stress: bool = False,
                         atomic_stresses: bool = False) -> Callable:
        """The jitted ``predict(params, graph) -> EnsemblePrediction``: every member
        (``params``: :attr:`inference_params`, stacked) on one padded graph in one call
        (see :attr:`batching`); one compiled variant per choice of outputs, as
        :meth:`so3krates.model_io.Model.predict_function`."""
        key = (pair_halves, stress, atomic_stresses)
        if key not in self._fns:
            self._fns[key] = jit(self._predict_fn(pair_halves, stress, atomic_stresses))
        return self._fns[key]

    def predict(self, graph, pair_halves: bool = False, stress: bool = False,
                atomic_stresses: bool = False) -> EnsemblePrediction:
        """:class:`EnsemblePrediction` of a padded graph, jitted with the parameters as
        constants (see :meth:`so3krates.model_io.Model.predict`)."""
        key = (pair_halves, stress, atomic_stresses)
        if key not in self._predict:
            fn = self._predict_fn(pair_halves, stress, atomic_stresses)
            params = self.inference_params
            self._predict[key] = jit(lambda g: fn(params, g))
        return self._predict[key](graph)

    def compiled_variants(self, pair_halves: bool = False, stress: bool = False) -> int:
        """How many graph shapes :meth:`predict` has compiled for (in that layout, with or
        without stress)."""
        fn = self._predict.get((pair_halves, stress, False))
        return 0 if fn is None else fn._cache_size()

    # -- one structure: the MD engine's shape ----------------------------------------------------

    def member_energy_fn(self, system, module=None) -> Callable:
        """``fn(params, offset, positions, cell, nbrs) -> (N,)`` per-atom energies (eV) of the
        member with ``params`` (one slice of :attr:`inference_params`) and reference-energy
        ``offset`` ((119,) or None) on in-loop neighbours (see
        :func:`so3krates.md.system.model_energy_fn`)."""
        from so3krates.md.system import model_energy_fn

        first = self.members[0]
        model_energy_fn(first, system, module)  # its errors (elements, periodicity) now
        numbers = np.asarray(system.numbers)

        def fn(params, offset, positions, cell, nbrs):
            e = model_energy_fn(first, system, module, params)(positions, cell, nbrs)
            return e if offset is None else e + offset[numbers]

        return fn

    def energy_fn(self, system):
        """``energy_fn(positions (N, 3), cell (3, 3), nbrs) -> (N,)``: the members' mean
        per-atom energies in eV, the MD engine's energy function (its gradient is the mean
        force; see :func:`so3krates.md.system.model_energy_fn`)."""
        members = self.over_members(self.member_energy_fn(system))

        def energy_fn(positions, cell, nbrs):
            return jnp.mean(members(positions, cell, nbrs), axis=0)

        return energy_fn

    def derived_fn(self, system, virial: bool = False) -> Callable[..., EnsembleDerived]:
        """``fn(positions, cell, nbrs) -> EnsembleDerived``: mean energy, forces, per-atom
        energies (and virial) and the members' spread, from one mapped evaluation of every
        member's energy and forces (pure; jit it, or call it inside a compiled loop)."""
        member = self.member_energy_fn(system)

        def one(params, offset, positions, cell, nbrs):
            out = derive(lambda r, c, n: member(params, offset, r, c, n), virial)(
                positions, cell, nbrs)
            return out.energy, out.forces, out.atomic_energies, out.virial

        members = self.over_members(one)

        def fn(positions, cell, nbrs) -> EnsembleDerived:
            e, f, ei, w = members(positions, cell, nbrs)
            return EnsembleDerived(
                jnp.mean(e), jnp.mean(f, axis=0), jnp.mean(ei, axis=0),
                None if w is None else jnp.mean(w, axis=0), spread(e), spread(f, (2,)), e)

        return fn

    def uncertainty_fn(self, system) -> Callable:
        """``fn(positions, cell, nbrs) -> (energy_uncertainty () eV, forces_uncertainty (N,)
        eV/Å)`` (pure): for recording the spread along a trajectory driven by
        :meth:`energy_fn`. It evaluates every member's energy and forces again: call it on
        recorded frames only, or use :meth:`derived_fn` for everything in one pass."""
        derived = self.derived_fn(system)

        def fn(positions, cell, nbrs):
            out = derived(positions, cell, nbrs)
            return out.energy_uncertainty, out.forces_uncertainty

        return fn

    def calculator(self, **kwargs):
        """An ASE calculator of the ensemble (see
        :class:`so3krates.calculator.EnsembleCalculator`)."""
        from so3krates.calculator import EnsembleCalculator

        return EnsembleCalculator(self, **kwargs)


def is_ensemble(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ensemble directory (holds ``ensemble.yaml``)."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


def _read_ensemble_file(path: Path) -> dict:
    meta = read_versioned_yaml(path, ENSEMBLE_FORMAT, "ensemble", EnsembleFileError)
    members = meta.get("members")
    if not isinstance(members, list) or not members or not all(
            isinstance(m, dict) and isinstance(m.get("path"), str) for m in members):
        raise EnsembleFileError(f"{path}: 'members' must be a non-empty list of entries with a "
                                f"'path'")
    return meta


def load_ensemble(directory: str | os.PathLike, dtype: str | None = None,
                  radial_knots: int | None = None, batching: str = "auto") -> Ensemble:
    """Load an ensemble directory (see the module docstring).

    Args:
        directory: holds ``ensemble.yaml``; member paths in it are relative to it.
        dtype: ``"float32"`` or ``"float64"`` for every member; default: the dtype the members
            were trained in (which must then agree).
        radial_knots: as for :func:`so3krates.model_io.load_model`.
        batching: see :class:`Ensemble`.

    Raises:
        EnsembleFileError: ``ensemble.yaml`` missing, unreadable or of another format
            version; a member directory missing, or whose parameters changed after the
            ensemble was written (their checksum differs from the recorded one).
        ModelFileError: a member that is not a readable model directory.
        ValueError: members that cannot form an ensemble (:func:`check_compatible`).
    """
    directory = Path(directory)
    path = directory / ENSEMBLE_FILE
    if not path.is_file():
        raise EnsembleFileError(f"{directory} is not an ensemble directory: {ENSEMBLE_FILE} is "
                                f"missing")
    meta = _read_ensemble_file(path)
    members = []
    for k, entry in enumerate(meta["members"]):
        member_dir = directory / entry["path"]
        if not (member_dir / MODEL_FILE).is_file():
            raise EnsembleFileError(f"{path}: member {k} ({entry['path']}) is not a model "
                                    f"directory ({member_dir / MODEL_FILE} is missing)")
        model = load_model(member_dir, dtype=dtype, radial_knots=radial_knots)
        recorded, actual = entry.get("params_sha256"), model.meta.get("params_sha256")
        if recorded is not None and recorded != actual:
            raise EnsembleFileError(
                f"{path}: member {k} ({entry['path']}) changed after the ensemble was written "
                f"(params_sha256 {actual} vs {recorded} recorded); write the ensemble again "
                f"(so3krates.ensemble.write_ensemble) if the new member is intended")
        members.append(model)
    return Ensemble(members, directory, batching)


def write_ensemble(directory: str | os.PathLike, member_dirs: Sequence[str | os.PathLike],
                   copy: bool = True, extra: dict | None = None) -> Path:
    """Write an ensemble directory from model directories; returns ``directory/ensemble.yaml``.

    The members are loaded and checked (:func:`check_compatible`) before anything is written.
    With ``copy`` (default) each member directory outside ``directory`` is copied to
    ``directory/members/K`` (a self-contained ensemble), without its ``checkpoints/``
    (training state); one already inside ``directory`` (as ``so3krates train --ensemble``
    will write them) stays where it is. Without ``copy`` the members are
    referenced by their path relative to ``directory`` (``../runs/model_a``): the ensemble
    then needs them to stay where they are. ``ensemble.yaml`` is written last and atomically,
    so an interrupted write leaves no ensemble behind.

    Args:
        directory: the ensemble directory (created if needed).
        member_dirs: model directories written by training (:func:`so3krates.model_io.save_model`).
        copy: copy members from elsewhere into ``directory/members``.
        extra: more entries for ``ensemble.yaml`` (e.g. how the members were trained).

    Raises:
        ValueError: no members, or members that cannot form an ensemble.
        FileExistsError: ``directory/members/K`` exists and is not the member given.
    """
    directory = Path(directory)
    member_dirs = [Path(d) for d in member_dirs]
    if not member_dirs:
        raise ValueError("an ensemble needs at least one member")
    # Load in the members' own dtype only to compare them (a float32 and a float64 member of
    # one architecture are compatible when loaded alike).
    models = [load_model(d, dtype="float64", radial_knots=0) for d in member_dirs]
    check_compatible(models)
    directory.mkdir(parents=True, exist_ok=True)
    root = directory.resolve()
    entries = []
    for k, (src, model) in enumerate(zip(member_dirs, models)):
        resolved = src.resolve()
        inside = resolved == root or root in resolved.parents
        if copy and not inside:
            target = directory / MEMBERS_DIR / str(k)
            if target.exists():
                raise FileExistsError(f"{target} exists: write the ensemble into a new "
                                      f"directory, or pass the members already there")
            shutil.copytree(src, target, ignore=shutil.ignore_patterns(*NOT_COPIED))
            rel = f"{MEMBERS_DIR}/{k}"
        else:
            rel = Path(os.path.relpath(resolved, root)).as_posix()
        entries.append({"path": rel, "params_sha256": model.meta.get("params_sha256")})
    meta = {
        "format": ENSEMBLE_FORMAT,
        "n_members": len(entries),
        "members": entries,
        "uncertainty": {
            "energy": "standard deviation of the members' energies (ddof=0), eV",
            "forces": "per atom: sqrt(mean over x, y, z of the members' variance (ddof=0)), "
                      "eV/Angstrom",
        },
    }
    if extra:
        meta.update(extra)
    path = directory / ENSEMBLE_FILE
    dump_yaml(meta, path)
    return path


def load_model_or_ensemble(path: str | os.PathLike, dtype: str | None = None,
                           radial_knots: int | None = None) -> Model | Ensemble:
    """:func:`load_ensemble` for an ensemble directory (:func:`is_ensemble`), else
    :func:`so3krates.model_io.load_model`."""
    if is_ensemble(path):
        return load_ensemble(path, dtype=dtype, radial_knots=radial_knots)
    return load_model(path, dtype=dtype, radial_knots=radial_knots)
