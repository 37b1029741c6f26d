"""Model directories: a human-readable ``model.yaml`` plus parameters in msgpack (no pickle).

A model directory holds everything needed to predict: hyperparameters, the elements the
model was trained on, float64 per-element reference energies, and the (EMA) parameters, with
their SHA-256 checksum in ``model.yaml`` (verified at load).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import serialization
from pydantic import ValidationError

from so3krates.compile import jit
from so3krates.config import ModelConfig, dump_yaml
from so3krates.fileio import atomic_write_bytes
from so3krates.model import So3krates, inference_params
from so3krates.model.radial_table import DEFAULT_KNOTS
from so3krates.potential import make_predict_fn, restrict_to, with_exact_tangents
from so3krates.terms.physical import PhysicalTerms

MODEL_FILE = "model.yaml"
PARAMS_FILE = "params.msgpack"
MODEL_FORMAT = "so3krates-model/1"
NUM_ELEMENTS = 119


class ModelFileError(ValueError):
    """A model directory that is missing, incomplete or inconsistent."""


def build_module(
    config: ModelConfig, energy_scale: float = 1.0, dtype: str | None = None, radial_knots: int = 0
) -> So3krates:
    """The flax module for ``config`` (``dtype`` overrides the configured one; ``radial_knots``
    > 0 evaluates the radial filters from spline tables, for inference)."""
    return So3krates(
        features=config.features,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        degrees=tuple(config.degrees),
        cutoff=config.cutoff,
        num_radial=config.num_radial,
        radial_basis=config.radial_basis,
        cutoff_fn=config.cutoff_fn,
        layer_norm=config.layer_norm,
        residual_mlp=config.residual_mlp,
        energy_scale=energy_scale,
        num_elements=NUM_ELEMENTS,
        dtype=jnp.dtype(dtype or config.dtype),
        radial_knots=radial_knots,
        output_init=config.output_init,
        charge_spin=config.charge_spin,
        heads=PhysicalTerms.from_config(config).heads,
        **efa_settings(config),
    )


def check_efa_structures(config: ModelConfig, positions, pbc) -> None:
    """Raise for structures a model with EFA cannot take (see
    ``so3krates.model.efa.check_structures``); nothing without EFA."""
    if config.efa.enabled:
        from so3krates.model.efa import check_structures

        check_structures(config.efa.max_extent, positions, pbc)


def efa_settings(config: ModelConfig) -> dict:
    """The ``So3krates`` attributes of ``config.efa`` (no blocks when it is off); the Lebedev
    degree, when not set, the smallest resolving ``max_frequency x max_extent``."""
    efa = config.efa
    if not efa.enabled:
        return {"efa_blocks": ()}
    from so3krates.model.efa import choose_degree

    blocks = tuple(range(config.num_layers)) if efa.blocks is None else tuple(efa.blocks)
    if any(not 0 <= b < config.num_layers for b in blocks):
        raise ValueError(f"model.efa.blocks {list(blocks)}: blocks are 0..{config.num_layers - 1}")
    degree = efa.degree or choose_degree(efa.max_frequency * efa.max_extent)
    return {"efa_frequencies": efa.frequencies, "efa_max_frequency": efa.max_frequency,
            "efa_degree": int(degree), "efa_blocks": blocks}


def default_radial_knots(dtype: str) -> int:
    """Spline intervals of the radial filters for inference: ``DEFAULT_KNOTS`` in float32 (the
    interpolation error is below float32 resolution), 0 (the exact network) in float64."""
    return DEFAULT_KNOTS if jnp.dtype(dtype) == jnp.float32 else 0


def init_params(module: So3krates, graph, seed: int):
    """Freshly initialised parameters for ``module`` (jit-compiled: eager init is slow)."""
    from so3krates.potential import electronic_inputs, pair_vectors

    @jit
    def init(key, g):
        return module.init(key, g.numbers, pair_vectors(g), g.centers, g.neighbours, g.pair_mask,
                           False, electronic_inputs(g), g.positions)

    return init(jax.random.PRNGKey(seed), graph)["params"]


def reference_table(reference_energies: dict[int, float]) -> np.ndarray:
    """Per-element reference energies as a float64 lookup table indexed by atomic number."""
    table = np.zeros(NUM_ELEMENTS, dtype=np.float64)
    for z, e in reference_energies.items():
        table[int(z)] = float(e)
    return table


def save_model(
    directory: str | os.PathLike,
    config: ModelConfig,
    params: Any,
    reference_energies: dict[int, float],
    energy_scale: float,
    extra: dict | None = None,
) -> None:
    """Write ``model.yaml`` and ``params.msgpack`` (atomically) into ``directory``."""
    directory = Path(directory)
    blob = serialization.msgpack_serialize(
        jax.tree.map(np.asarray, serialization.to_state_dict(params)))
    meta = {
        "format": MODEL_FORMAT,
        "model": config.model_dump(),
        "elements": sorted(int(z) for z in reference_energies),
        # repr-exact floats: YAML round-trips Python floats without loss.
        "reference_energies_eV": {int(z): float(e) for z, e in sorted(reference_energies.items())},
        "energy_scale": float(energy_scale),
        "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom",
                  "stress": "eV/Angstrom^3"},
        # Verified at load: a truncated or altered params file is named, not mis-loaded.
        "params_sha256": hashlib.sha256(blob).hexdigest(),
    }
    if extra:
        meta.update(extra)
    atomic_write_bytes(directory / PARAMS_FILE, blob)
    dump_yaml(meta, directory / MODEL_FILE)


@dataclass
class Model:
    """A trained model: config, parameters and the jitted prediction function.

    Use :meth:`calculator` for an ASE calculator, or ``predict(graph)`` on padded graphs.
    ``predict_fn(params, graph)`` takes pairs in any order; ``predict_halves_fn`` takes graphs
    in the halves layout (``single_graph(..., pair_halves=True)``, ``GraphDataset`` batches;
    see ``so3krates.batching.pack``) and is faster: the filters of a pair and its reverse are
    evaluated once, with nothing to reorder (one aspirin on the CPU: see the README). Given a
    graph in another layout it returns NaN.

    ``params`` are the network's parameters (what is saved); ``module`` and ``predict_fn``
    take ``inference_params``: the same plus, with ``radial_knots`` > 0, the spline tables of
    the radial filters (see ``so3krates.model.radial_table``). ``radial_knots=None`` picks
    :func:`default_radial_knots`; 0 runs the exact network.
    """

    directory: Path
    config: ModelConfig
    params: Any
    reference_energies: dict[int, float]
    energy_scale: float
    dtype: str
    meta: dict = field(default_factory=dict)
    radial_knots: int | None = None

    def __post_init__(self) -> None:
        if self.radial_knots is None:
            self.radial_knots = default_radial_knots(self.dtype)
        self.module = build_module(self.config, self.energy_scale, self.dtype, self.radial_knots)
        self.inference_params = inference_params(self.module, self.params)
        self._refs = reference_table(self.reference_energies)
        self.terms = PhysicalTerms.from_config(self.config)
        self._fns: dict = {}
        self._predict: dict = {}
        self.predict_fn = self.predict_function(pair_halves=False)
        self.predict_halves_fn = self.predict_function(pair_halves=True)

    def predict_function(self, pair_halves: bool = False, stress: bool = False,
                         atomic_stresses: bool = False):
        """The jitted ``predict(params, graph) -> Prediction`` for these outputs (see
        ``so3krates.potential.make_predict_fn``); one compiled variant per choice, so
        stress costs nothing unless requested. Takes :attr:`inference_params`."""
        key = (pair_halves, stress, atomic_stresses)
        if key not in self._fns:
            self._fns[key] = jit(self._predict_fn(pair_halves, stress, atomic_stresses))
        return self._fns[key]

    def _predict_fn(self, pair_halves: bool, stress: bool, atomic_stresses: bool):
        """The unjitted predict function of :meth:`predict_function`: the inference
        network's values, and, where it has reverse-mode-only rules (``radial_knots`` > 0),
        the exact network's derivatives, so that ``jax.jvp`` and Hessian-vector products of
        a prediction work on every path (see ``so3krates.potential.with_exact_tangents``)."""
        fast = make_predict_fn(self.module, self._refs, pair_halves, stress, atomic_stresses,
                               self.terms)
        if not self.radial_knots:
            return fast
        exact = make_predict_fn(self.exact_module(), self._refs, pair_halves, stress,
                                atomic_stresses, self.terms)
        return with_exact_tangents(fast, exact, lambda p: restrict_to(p, self.params))

    def exact_module(self):
        """The network without spline tables or custom derivative rules (``radial_knots=0``):
        the module to differentiate in forward mode (Hessians, ``jax.jvp``); it takes
        :attr:`params`."""
        return build_module(self.config, self.energy_scale, self.dtype, 0)

    @property
    def elements(self) -> list[int]:
        return sorted(self.reference_energies)

    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    def predict(self, graph, pair_halves: bool = False, stress: bool = False,
                atomic_stresses: bool = False):
        """``Prediction`` (energy, forces, atomic energies; stress and per-atom stresses when
        asked) for a padded graph; with ``pair_halves``, of a graph in the halves layout (see
        :attr:`predict_halves_fn`). Jitted with the parameters as constants (the fastest
        call)."""
        key = (pair_halves, stress, atomic_stresses)
        if key not in self._predict:
            # Closing over the parameters, so that a call passes the graph alone: one aspirin
            # 1.68 -> 1.50 ms (median, interleaved) against passing 69 parameter arrays.
            fn = self._predict_fn(pair_halves, stress, atomic_stresses)
            self._predict[key] = jit(_with_params(fn, self.inference_params))
        return self._predict[key](graph)

    def compiled_variants(self, pair_halves: bool = False, stress: bool = False) -> int:
        """How many graph shapes :meth:`predict` has compiled for (in that layout, with or
        without stress)."""
        fn = self._predict.get((pair_halves, stress, False))
        return 0 if fn is None else fn._cache_size()

    def exact_atomic_energy_fn(self):
        """``atomic_energy_fn(params, graph) -> (N,)`` of :meth:`exact_module` (forward-mode
        differentiable), to be called with :attr:`params`."""
        from so3krates.potential import make_atomic_energy_fn

        return make_atomic_energy_fn(self.exact_module(), self._refs, terms=self.terms)

    def heat_flux(self, atoms):
        """A :class:`so3krates.heat_flux.HeatFlux` of this model for ``atoms`` (periodic):
        ``flux(positions, velocities Å/fs, cell) -> (J, J_pot, J_conv)`` in eV·Å/fs."""
        from so3krates.heat_flux import HeatFlux

        self.check_elements(atoms.numbers)
        if self.terms.long_range or self.config.efa.enabled:
            raise NotImplementedError("the heat flux of long-range terms and of EFA is not "
                                      "available")
        return HeatFlux(self.exact_atomic_energy_fn(), self.params, atoms.numbers,
                        atoms.get_masses(), atoms.pbc,
                        reach=self.config.num_layers * self.cutoff, cutoff=self.cutoff,
                        dtype=np.dtype(self.dtype))

    def hessian(self, atoms) -> np.ndarray:
        """d²E/dR dR (N, 3, N, 3) in eV/Å² of an ``ase.Atoms`` (normal modes, phonons),
        differentiated in forward over reverse mode through :meth:`exact_module`."""
        from so3krates.potential import hessian

        self.check_elements(atoms.numbers)
        graph, _ = self.graph(atoms, dtype=np.dtype(self.dtype))
        atomic = self.exact_atomic_energy_fn()
        n = len(atoms)

        def energy(positions, cell, graph):
            del cell  # the graph holds it
            return atomic(self.params, graph._replace(positions=graph.positions.at[:n].set(positions)))

        h = jit(hessian(energy))(graph.positions[:n], graph.cells[0], graph)
        return np.asarray(h, dtype=np.float64)

    def graph(self, atoms, capacity=None, dtype=None, pair_halves: bool = False):
        """``(graph, capacity)`` of an ``ase.Atoms`` for this model: its pairs, and with
        long-range terms its long-range pairs; the total charge and unpaired electrons from
        ``atoms.info`` ("charge" or "total_charge"; "spin", or "multiplicity" as 2S + 1).
        See :func:`so3krates.batching.single_graph`."""
        from so3krates.batching import single_graph

        self.terms.check_periodic(atoms.pbc)
        check_efa_structures(self.config, atoms.positions, atoms.pbc)
        charge, spin = electronic_state(atoms.info)
        return single_graph(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc,
                            self.cutoff, capacity, dtype=dtype or np.dtype(self.dtype),
                            pair_halves=pair_halves, charge=charge, spin=spin,
                            **self.terms.single_graph_options())

    def check_elements(self, numbers: np.ndarray) -> None:
        """Raise ``ValueError`` naming any element the model was not trained on."""
        unknown = sorted(set(np.unique(numbers).tolist()) - set(self.reference_energies))
        if unknown:
            raise ValueError(
                f"elements {unknown} were never seen in training; "
                f"this model knows {self.elements}"
            )

    def calculator(self, **kwargs):
        """An ASE calculator for this model (see :class:`so3krates.calculator.So3kratesCalculator`)."""
        from so3krates.calculator import So3kratesCalculator

        return So3kratesCalculator(self, **kwargs)


def electronic_state(info: dict) -> tuple[float, float]:
    """``(total charge e, unpaired electrons)`` from an ``atoms.info`` (zeros if absent)."""
    charge = float(info.get("charge", info.get("total_charge", 0.0)))
    if "spin" in info:
        spin = float(info["spin"])
    elif "multiplicity" in info:
        spin = float(info["multiplicity"]) - 1.0
    else:
        spin = 0.0
    return charge, spin


def _with_params(predict_fn, params):
    """``predict_fn(params, graph)`` as a function of the graph alone."""
    return lambda graph: predict_fn(params, graph)


def load_model(
    directory: str | os.PathLike, dtype: str | None = None, radial_knots: int | None = None
) -> Model:
    """Load a model directory written by training.

    Args:
        directory: the model directory (contains ``model.yaml`` and ``params.msgpack``).
        dtype: ``"float32"`` or ``"float64"``; default: the dtype the model was trained in.
        radial_knots: spline intervals of the radial filters (0: the exact network); default
            :func:`default_radial_knots` (tabulated in float32, exact in float64).

    Raises:
        ModelFileError: a file missing, not YAML, of another format version, parameters that
            fail the checksum in ``model.yaml`` (directories written before it had one load
            without the check), cannot be read, or do not fit the network ``model.yaml``
            describes; the message names the file.
    """
    directory = Path(directory)
    meta_path = directory / MODEL_FILE
    params_path = directory / PARAMS_FILE
    for p in (meta_path, params_path):
        if not p.exists():
            raise ModelFileError(f"{directory} is not a model directory: {p.name} is missing")
    meta = _read_meta(meta_path)
    try:
        config = ModelConfig.model_validate(meta["model"])
    except ValidationError as err:
        raise ModelFileError(f"{meta_path}: invalid model settings: {one_line(err)}") from None
    dtype = dtype or config.dtype
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    state = _read_params(params_path, meta.get("params_sha256"))
    _check_param_shapes(state, config, params_path)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype=dtype), state)
    refs = {int(z): float(e) for z, e in meta["reference_energies_eV"].items()}
    return Model(
        directory=directory,
        config=config,
        params=params,
        reference_energies=refs,
        energy_scale=float(meta["energy_scale"]),
        dtype=dtype,
        meta=meta,
        radial_knots=radial_knots,
    )


def one_line(err: ValidationError) -> str:
    """A pydantic error as one line: ``location: message`` per problem."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'value'}: {e['msg']}"
                     for e in err.errors())


def read_versioned_yaml(path: Path, expected: str, kind: str,
                        error: type[Exception] = ValueError) -> dict:
    """A YAML file whose ``format`` entry must be ``expected`` (``"so3krates-<kind>/<version>"``)
    as a dict; ``error`` with one line for bad YAML, another version or another kind of file."""
    try:
        meta = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise error(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    family = expected.split("/")[0] + "/"
    if isinstance(fmt, str) and fmt.startswith(family) and fmt != expected:
        raise error(f"{path}: written in format {fmt} by another so3krates version; "
                    f"this version reads {expected}")
    if fmt != expected:
        raise error(f"{path}: not a so3krates {kind} file")
    return meta


def _read_meta(path: Path) -> dict:
    """``model.yaml`` as a dict, with one-line errors for files that are not model files
    (bad YAML, another format version, missing entries)."""
    meta = read_versioned_yaml(path, MODEL_FORMAT, "model", ModelFileError)
    missing = [k for k in ("model", "reference_energies_eV", "energy_scale") if k not in meta]
    if missing:
        raise ModelFileError(f"{path}: incomplete model file, missing {missing}")
    return meta


def _read_params(path: Path, sha256: str | None) -> dict:
    """The saved parameters; the checksum is checked when ``model.yaml`` has one (model
    directories written before it had none, and load without the check)."""
    blob = path.read_bytes()
    if sha256 is not None and hashlib.sha256(blob).hexdigest() != sha256:
        raise ModelFileError(f"{path} is corrupt: its SHA-256 checksum differs from the one in "
                             f"{MODEL_FILE} (truncated or overwritten; {len(blob)} bytes)")
    try:
        state = serialization.msgpack_restore(blob)
    except Exception:  # msgpack's own messages ("incomplete input") do not name the file
        raise ModelFileError(f"{path} is truncated or corrupt: not a readable parameter file "
                             f"({len(blob)} bytes)") from None
    if not isinstance(state, dict):
        raise ModelFileError(f"{path} is not a parameter file (holds a {type(state).__name__})")
    return state


def _check_param_shapes(state: dict, config: ModelConfig, path: Path) -> None:
    """Refuse parameters that do not fit the network ``model.yaml`` describes (traced only,
    nothing computed: ~0.1 s), instead of a shape error deep inside the first prediction."""
    module = build_module(config, 1.0, "float32", 0)
    electronic = (jnp.zeros(2, jnp.int32), jnp.zeros(1), jnp.zeros(1), jnp.ones(2, bool))
    want = jax.eval_shape(lambda: module.init(
        jax.random.PRNGKey(0), jnp.array([1, 6], jnp.int32), jnp.ones((1, 3), jnp.float32),
        jnp.array([0]), jnp.array([1]), jnp.array([True]), False, electronic,
        jnp.zeros((2, 3))))["params"]
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(want)}
    got = {jax.tree_util.keystr(k): np.shape(v)
           for k, v in jax.tree_util.tree_leaves_with_path(state)}
    for key in sorted(set(want) | set(got)):
        if want.get(key) != got.get(key):
            raise ModelFileError(f"{path} does not match {MODEL_FILE}: parameter {key} has shape "
                                 f"{got.get(key)}, the model needs {want.get(key)}")
