"""The short text table of the materials benchmark's report (``materials.py``)."""

from __future__ import annotations

from materials_common import PHASES

# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)

def table(report: dict) -> str:
    lines = ["", "Si test split (25 structures): E MAE meV/atom | F MAE eV/Å | stress MAE GPa"]
    si = report.get("si") or {}
    for run in si.get("runs", []):
        t = run["test"]
        lines.append(f"  SO3krates {run['label']} (E weight {run['energy_weight']:g}, {run['steps']} steps)"
                     f"  {t['energy_mae_meV_per_atom']:8.2f} | {t['forces_mae_eV_per_A']:.4f} | "
                     f"{fmt(t.get('stress_mae_GPa'), '.3f')}")
    mace = report.get("mace") or {}
    if "test" in mace:
        t = mace["test"]
        lines.append(f"  MACE {mace['versions'].get('mace-torch')} ({mace['epochs_done']} epochs)"
                     f"            {t['energy_mae_meV_per_atom']:8.2f} | {t['forces_mae_eV_per_A']:.4f} | "
                     f"{t['stress_mae_GPa']:.3f}")
    elif mace:
        lines.append(f"  MACE: {mace.get('skipped')}")
    for name, v in report["published"]["si_other_models_same_split"]["models"].items():
        lines.append(f"  {name:36s}  {v['energy_mae_meV_per_atom']:8.2f} | "
                     f"{v['forces_mae_eV_per_A']:.4f} | {v['stress_mae_GPa']:.3f}")
    pub = report["published"]["si_mlearn_test_errors"]
    for name, v in pub["models"].items():
        if v["energy_mae_meV_per_atom"] is not None:
            lines.append(f"  {name:36s}  {v['energy_mae_meV_per_atom']:8.2f} | "
                         f"{fmt(v['forces_mae_eV_per_A'], '.4f')} | -")
    if not pub["found"]:
        lines.append("  (mlearn paper GAP/MTP/NNP/SNAP/qSNAP numbers: not found, see JSON)")
    ta = report.get("ta")
    if ta and "test" in ta:
        t = ta["test"]
        lines.append(f"Ta test ({ta['n_test']} structures, seeded split), primary run "
                     f"{ta.get('primary_run')}: "
                     f"{t['energy_mae_meV_per_atom']:.2f} meV/atom | {t['forces_mae_eV_per_A']:.4f} eV/Å | "
                     f"{fmt(t.get('stress_mae_GPa'), '.3f')} GPa ({ta['steps']} steps)")
        for run in ta.get("runs", []):
            t = run["test"]
            lines.append(f"  SO3krates {run['label']} (E weight {run['energy_weight']:g}, {run['steps']} steps, "
                         f"{run.get('rollbacks')} rollbacks): {t['energy_mae_meV_per_atom']:.2f} meV/atom | "
                         f"{t['forces_mae_eV_per_A']:.4f} eV/Å | {fmt(t.get('stress_mae_GPa'), '.3f')} GPa")
        snap = report["published"]["ta_snap_errors"]
        lines.append(f"  SNAP Ta (FitSNAP example, training-set errors, all 363): "
                     f"{snap['energy_mae_meV_per_atom']:.1f} meV/atom | "
                     f"{snap['forces_mae_eV_per_A']:.4f} eV/Å | {snap['stress_mae_GPa']:.2f} GPa")
    so = report.get("stress_order") or {}
    for label, per in (so.get("models") or {}).items():
        for g, v in per.get("train_valid", {}).items():
            a, b = v["mae_as_labelled_GPa"], v["mae_yz_xz_swapped_GPa"]
            if sum(b[1:]) < 0.5 * sum(a[1:]):
                lines.append(f"stress labels: {g} (train, {label} model): yz/xz MAE {a[1]:.2f}/{a[2]:.2f} GPa as "
                             f"labelled, {b[1]:.2f}/{b[2]:.2f} with yz and xz swapped (xy {a[0]:.2f})")
    eos = report.get("eos")
    if eos and "summary" in eos:
        s, d = eos["summary"], eos["dft"]
        lines.append(f"diamond Si: a0 {s['a0_A']:.4f} Å (DFT {d['a0_A']}), B0 {s['B0_GPa']:.1f} GPa "
                     f"(DFT B_VRH {d['B_VRH_GPa']}), C11 {s['C11_GPa']:.1f} ({d['C11_GPa']}), "
                     f"C12 {s['C12_GPa']:.1f} ({d['C12_GPa']}), C44 {s['C44_GPa']:.1f} ({d['C44_GPa']}); "
                     f"C44 clamped ions {eos['elastic_clamped_ions']['C44_GPa']:.1f}")
    for label, other in ((eos or {}).get("other_models") or {}).items():
        o = other["summary"]
        lines.append(f"  ({label} model: a0 {o['a0_A']:.4f}, B0 {o['B0_GPa']:.1f}, C11 {o['C11_GPa']:.1f}, "
                     f"C12 {o['C12_GPa']:.1f}, C44 {o['C44_GPa']:.1f} GPa)")
    tm = report.get("timing")
    for label, tmod in ((tm or {}).get("models") or {}).items():
        cfg = tmod.get("model_config") or {}
        for name, v in tmod["systems"].items():
            lines.append(f"timing {label} ({cfg.get('features')} features, {cfg.get('num_layers')} "
                         f"layers) {name}: forces {v['median_ms']['forces']:.1f} ms, +stress "
                         f"{v['median_ms']['forces_stress']:.1f} ms, ratio "
                         f"{v['ratio_stress_over_forces']:.3f}")
    for name in PHASES:
        if (report.get(name) or {}).get("error"):
            lines.append(f"phase {name} FAILED: see its 'error' in the JSON")
    return "\n".join(lines)
