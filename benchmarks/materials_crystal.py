"""Diamond-Si properties and costs of the materials benchmark (``materials.py``): equation of
state, elastic constants from the stress, and the cost of the stress per call."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from materials_common import EV_A3_IN_GPA, MODEL_OVERRIDES, PUBLISHED, log

# ---------------------------------------------------------------------------------------------
# diamond Si: equation of state and elastic constants
# ---------------------------------------------------------------------------------------------
def elastic_from_stress(calc, a0: float, delta: float = 0.005, fmax: float = 1e-3,
                        relax: bool = True) -> dict[str, Any]:
    """C11, C12 (strain xx) and C44 (strain yz) in GPa: central differences of the stress of
    the 8-atom cubic cell at +-``delta``, atoms relaxed at fixed cell (``relax``)."""
    from ase.build import bulk
    from ase.optimize import BFGS

    def stress_at(eps: np.ndarray) -> tuple[np.ndarray, int]:
        atoms = bulk("Si", "diamond", a=a0, cubic=True)
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
        atoms.calc = calc
        steps = 0
        if relax:
            opt = BFGS(atoms, logfile=None)
            opt.run(fmax=fmax, steps=500)
            steps = opt.get_number_of_steps()
        return atoms.get_stress(voigt=True) * EV_A3_IN_GPA, steps

    out: dict[str, Any] = {"strain": delta, "relaxed": relax, "fmax_eV_per_A": fmax if relax else None}
    e_xx = np.zeros((3, 3))
    e_xx[0, 0] = delta
    e_yz = np.zeros((3, 3))
    e_yz[1, 2] = e_yz[2, 1] = delta / 2  # engineering shear strain gamma_yz = delta
    sp, n1 = stress_at(e_xx)
    sm, n2 = stress_at(-e_xx)
    ds = (sp - sm) / (2 * delta)
    out["C11_GPa"] = float(ds[0])
    out["C12_GPa"] = float(0.5 * (ds[1] + ds[2]))
    sp, n3 = stress_at(e_yz)
    sm, n4 = stress_at(-e_yz)
    ds_shear = (sp - sm) / (2 * delta)
    out["C44_GPa"] = float(ds_shear[3])
    out["B_from_Cij_GPa"] = (out["C11_GPa"] + 2 * out["C12_GPa"]) / 3
    out["bfgs_steps"] = [n1, n2, n3, n4]
    return out

def phase_eos(args, model_dir: Path) -> dict[str, Any]:
    from ase import units
    from ase.build import bulk
    from ase.eos import EquationOfState

    from so3krates.model_io import load_model

    model = load_model(model_dir, dtype="float64")
    calc = model.calculator()
    a_guess = PUBLISHED["si_dft_properties"]["dft"]["a0_A"]
    scales = np.linspace(0.94, 1.06, 13)  # volume factors, +-6 %
    vols, energies, pressures = [], [], []
    for s in scales:
        atoms = bulk("Si", "diamond", a=a_guess * s ** (1 / 3), cubic=True)
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        vols.append(atoms.get_volume())
        pressures.append(-float(np.mean(atoms.get_stress(voigt=True)[:3])) * EV_A3_IN_GPA)
    eos = EquationOfState(vols, energies, eos="birchmurnaghan")
    v0, e0, b0 = eos.fit()
    a0 = v0 ** (1 / 3)
    at0 = bulk("Si", "diamond", a=a0, cubic=True)
    at0.calc = calc
    residual = at0.get_stress(voigt=True) * EV_A3_IN_GPA
    log(f"EOS: a0 {a0:.4f} Å, B0 {b0 / units.GPa:.1f} GPa; elastic constants at a0")
    relaxed = elastic_from_stress(calc, a0, relax=True)
    clamped = elastic_from_stress(calc, a0, relax=False)
    dft = PUBLISHED["si_dft_properties"]["dft"]
    ours = {"a0_A": a0, "C11_GPa": relaxed["C11_GPa"], "C12_GPa": relaxed["C12_GPa"],
            "C44_GPa": relaxed["C44_GPa"], "B0_GPa": b0 / units.GPa}
    rel = {k: 100 * (ours[k] - dft[k]) / dft[k] for k in ("a0_A", "C11_GPa", "C12_GPa", "C44_GPa")}
    rel["B0_GPa_vs_B_VRH"] = 100 * (ours["B0_GPa"] - dft["B_VRH_GPa"]) / dft["B_VRH_GPa"]
    return {
        "model_dir": str(model_dir), "dtype": "float64", "cell": "8-atom cubic diamond",
        "eos": {"volume_factors": scales.tolist(), "volumes_A3": vols,
                "energies_eV": [float(e) for e in energies],
                "pressure_from_stress_GPa": pressures, "V0_A3_per_atom": v0 / 8, "a0_A": a0,
                "E0_eV_per_atom": e0 / 8, "B0_GPa": b0 / units.GPa,
                "residual_stress_at_a0_GPa": residual.tolist()},
        "elastic_relaxed": relaxed, "elastic_clamped_ions": clamped,
        "summary": ours, "dft": dft, "percent_deviation_from_dft": rel,
    }

# ---------------------------------------------------------------------------------------------
# timing: forces vs forces + stress
# ---------------------------------------------------------------------------------------------
def phase_timing(args, model_dir: Path | None, a0: float) -> dict[str, Any]:
    import jax
    from ase.build import bulk

    from so3krates.batching import single_graph
    from so3krates.model_io import load_model

    if model_dir is not None and (model_dir / "model.yaml").exists():
        model, which = load_model(model_dir), "trained"
    else:
        model, which = fresh_si_model(args), "random"
    out: dict[str, Any] = {"model": which, "model_dir": None if model_dir is None else str(model_dir),
                           "model_config": model.config.model_dump(),
                           "dtype": model.dtype, "a_A": a0, "reps": args.timing_reps,
                           "warmup": args.timing_warmup, "systems": {}}
    rng = np.random.default_rng(args.seed)
    for n in args.timing_repeats:
        atoms = bulk("Si", "diamond", a=a0, cubic=True).repeat((n, n, n))
        atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
        graph, cap = single_graph(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc,
                                  model.cutoff, dtype=np.dtype(model.dtype), pair_halves=True)
        graph = jax.device_put(graph)
        n_pairs = int(np.asarray(graph.pair_mask).sum())
        log(f"timing {len(atoms)} atoms ({n_pairs} directed pairs, capacity {cap.pairs})")
        first: dict[str, float] = {}
        times: dict[str, list[float]] = {"forces": [], "forces_stress": []}
        for k in range(args.timing_warmup + args.timing_reps):
            for name, stress in (("forces", False), ("forces_stress", True)):
                t0 = time.perf_counter()
                jax.block_until_ready(model.predict(graph, pair_halves=True, stress=stress))
                dt = time.perf_counter() - t0
                if k == 0:
                    first[name] = dt
                if k >= args.timing_warmup:
                    times[name].append(dt)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        out["systems"][f"atoms{len(atoms)}"] = {
            "n_atoms": len(atoms), "n_pairs": n_pairs, "supercell": [n, n, n],
            "median_ms": med, "min_ms": {k: 1e3 * min(v) for k, v in times.items()},
            "all_ms": {k: [round(1e3 * t, 2) for t in v] for k, v in times.items()},
            "first_call_s_incl_compile": first,
            "ratio_stress_over_forces": med["forces_stress"] / med["forces"],
        }
        log(f"  forces {med['forces']:.1f} ms, forces+stress {med['forces_stress']:.1f} ms, "
            f"ratio {med['forces_stress'] / med['forces']:.3f}")
    return out

def fresh_si_model(args):
    """A randomly initialised model of the benchmark's configuration (Si only; the energy
    head's last kernel random too, as in ``aspirin.fresh_model``)."""
    from ase.build import bulk

    from so3krates.batching import single_graph
    from so3krates.config import load_config
    from so3krates.model_io import Model, build_module, init_params

    cfg = load_config(None, [*MODEL_OVERRIDES, *(o for o in args.set if o.startswith("model."))]).model
    cfg = cfg.model_copy(update={"output_init": "lecun_normal"})
    atoms = bulk("Si", "diamond", a=5.47, cubic=True)
    g, _ = single_graph(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc, cfg.cutoff,
                        dtype=np.dtype(cfg.dtype))
    params = init_params(build_module(cfg, 1.0), g, args.seed)
    return Model(directory=args.work_dir / "random", config=cfg, params=params,
                 reference_energies={14: 0.0}, energy_scale=1.0, dtype=cfg.dtype)
