"""Print Markdown tables of benchmark results (the JSON files in ``benchmarks/results/``).

Run from the repository root::

    .venv/bin/python benchmarks/results_table.py                 # the files listed in RELEVANT
    .venv/bin/python benchmarks/results_table.py --all           # every JSON file in results/
    .venv/bin/python benchmarks/results_table.py results/x.json  # these files only

One table per kind of result: accuracy after a training budget (``aspirin.py``), energy +
forces timings (``aspirin.py --timing-only``, one run or a series), MD speed (``md.py``), MD
stability (``md.py --stability``) and training steps (``train_step.py``). Series of runs are
shown as median (min–max). Files the script does not recognise are listed at the end.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# The files benchmarks/README.md shows: the newest result of each kind, and the runs the
# current settings are compared with. Edit this list when a newer result replaces one.
RELEVANT = [
    "aspirin_30min_3blocks_decay0.01_final_epyc_2026-11-24.json",
    "aspirin_30min_3blocks_decay0.01_epyc_2026-11-24.json",
    "aspirin_30min_3blocks_decay0.003_epyc_2026-11-24.json",
    "aspirin_30min_3blocks_epyc_2026-11-24f.json",
    "aspirin_30min_3blocks_epyc_2026-11-24e.json",
    "aspirin_timing_6runs_epyc_2026-11-24e.json",
    "aspirin_timing_h100_matmul_highest.json",
    "md_speed_aspirin_epyc_2026-11-24b.json",
    "md_speed_epyc_2026-11-23c.json",
    "md_speed_h100_chunk1024.json",
    "md_speed_h100_pair_chunk_1000000000.json",
    "md_stability_500K_10ps_cpu2_3blocks_decay0.01.json",
    "md_stability_cpu2_weightdecay0.01.json",
    "md_stability_cpu2_tables_mse_model.json",
    "train_step_pairs_5rounds_epyc_2026-11-23d.json",
    "train_step_h100_chunk1024.json",
]
# The current result of the benchmarks that have their own summary (the docs' benchmarks page).
SUMMARIES = {
    "materials": "materials_epyc2core_2026-12-07.json",
    "thermal": "thermal_argon_epyc_2026-12-07b.json",
    "defaults": "defaults_epyc1core_2026-12-07.json",
    "defaults_seeds3-5": "defaults_epyc1core_2026-12-07_seeds3-5.json",
    "defaults_silicon": "defaults_epyc1core_2026-12-07_silicon.json",
    "defaults_aspirin300K": "defaults_epyc1core_2026-12-07_aspirin300K.json",
    "long_range": "long_range_epyc_2026-12-07.json",
    "long_range_cost": "long_range_epyc_2026-12-08.json",
}


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.{digits}f}"


def machine_name(m: dict | None) -> str:
    if not m:
        return "?"
    if m.get("platform") == "gpu" or m.get("device_kind", "cpu") != "cpu":
        return m.get("device_kind", "GPU")
    cpu = (m.get("cpu_model") or "CPU").replace("(R)", "").replace(" Processor", "")
    return f"{cpu}, {m.get('cpu_count', '?')} cores"


def spread(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return fmt(values[0], digits)
    return f"{fmt(statistics.median(values), digits)} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def blocks(cfg: dict | None) -> str:
    return str(cfg.get("num_layers", "?")) if cfg else "?"


# ---- kinds ---------------------------------------------------------------------------------

def accuracy_row(link: str, d: dict) -> list[str]:
    t = d.get("training_config") or {}
    recipe = "–"
    if t:
        recipe = (f"lr {t.get('learning_rate', 0):g} → ×{t.get('decay_rate', 0):g}, "
                  f"{t.get('loss', '?')}, wd {t.get('weight_decay', 0):g}")
    return [link, machine_name(d.get("machine")), blocks(d.get("model_config")), recipe,
            fmt(d.get("steps")), fmt(d.get("test_forces_mae_meV_per_A")),
            fmt(d.get("test_energy_mae_meV")), fmt(d.get("test_forces_rmse_meV_per_A")),
            fmt(d.get("test_forces_max_error_meV_per_A"), 0), fmt(d.get("n_test"))]


ACCURACY_HEADER = ["file", "machine", "blocks", "training (lr → final factor, loss, weight decay)",
                   "steps", "test forces MAE (meV/Å)", "test energy MAE (meV)",
                   "forces RMSE (meV/Å)", "largest force error (meV/Å)", "test structures"]


def timing_row(link: str, runs: list[dict], machine: dict | None) -> list[str]:
    def col(key):
        return spread([(r.get("time_ms") or {}).get(key) for r in runs])
    cfg = runs[0].get("timed_reference_model_config") or runs[0].get("model_config")
    return [link, machine or "?", str(len(runs)), blocks(cfg), col("aspirin_jit"),
            col("aspirin_ase"), col("atoms1008_jit"), col("atoms1008_ase")]


TIMING_HEADER = ["file", "machine", "runs", "blocks", "aspirin jitted (ms)", "aspirin ASE (ms)",
                 "1,008 atoms jitted (ms)", "1,008 atoms ASE (ms)"]


def md_speed_row(link: str, d: dict) -> list[str]:
    def col(name):
        s = (d.get("systems") or {}).get(name)
        if not s:
            return "–"
        e, a = s.get("engine") or {}, s.get("ase") or {}
        ns = e.get("ns_per_day")
        text = f"{fmt(e.get('ms_per_step'))} ({fmt(ns, 1 if ns and ns >= 1 else 2)} ns/day)"
        return text + (f" / ASE {fmt(a.get('ms_per_step'))}" if a else "")
    model = d.get("model") or "?"
    model = "fresh" if model.startswith("fresh") else "trained"
    return [link, machine_name(d.get("machine")), f"{model}, {blocks(d.get('model_config'))} blocks",
            col("aspirin"), col("1k"), col("10k")]


MD_SPEED_HEADER = ["file", "machine", "model", "aspirin ms/step (21 atoms)",
                   "1,008 atoms ms/step", "10,080 atoms ms/step"]


def md_stability_row(link: str, d: dict) -> list[str]:
    s = d.get("summary") or {}
    by_t = s.get("by_temperature") or {}
    stable = ", ".join(f"{t} K: {v['stable']}/{v['runs']}" for t, v in by_t.items())
    broke = [r["time_to_instability_fs"] / 1e3 for r in d.get("runs", [])
             if r.get("time_to_instability_fs") is not None]
    broke_s = ", ".join(f"{x:.1f}" for x in sorted(broke)) or "–"
    return [link, machine_name(d.get("machine")), fmt(d.get("time_ps"), 0), stable, broke_s]


MD_STABILITY_HEADER = ["file", "machine", "ps per run", "stable runs", "broke up after (ps)"]


def train_step_rows(link: str, d: dict) -> list[list[str]]:
    rows = []
    layers = d.get("by_num_layers")
    n_layers = "2"  # train_step.py's reference model, unless an override changed it
    for o in [*(d.get("model_overrides") or []), *(d.get("overrides") or [])]:
        if o.startswith("model.num_layers="):
            n_layers = o.split("=", 1)[1]
    variants = ({f"{k} blocks, batch 2": v for k, v in layers.items()} if layers
                else {f"{n_layers} blocks, {k}": v for k, v in (d.get("results") or {}).items()
                      if isinstance(v, dict)})
    for name, v in variants.items():
        rows.append([link, machine_name(d.get("machine")), name, fmt(v.get("ms_per_step_min")),
                     fmt(v.get("structures_per_s_best"), 0)])
    return rows


TRAIN_STEP_HEADER = ["file", "machine", "variant", "best ms per step", "structures/s"]


# ---- dispatch ------------------------------------------------------------------------------

def classify(d) -> str:
    if isinstance(d, list):
        return "timing_series"
    if d.get("benchmark") == "train_step":
        return "train_step"
    mode = d.get("mode")
    if mode == "speed":
        return "md_speed"
    if mode == "stability":
        return "md_stability"
    if mode == "timing_only":
        return "timing"
    if "test_forces_mae_meV_per_A" in d and d.get("test_forces_mae_meV_per_A") is not None:
        return "accuracy"
    runs = d.get("runs")
    if isinstance(runs, list) and runs and "time_ms" in runs[0]:
        return "timing_series"
    if isinstance(runs, dict) and all(isinstance(v, dict) for v in runs.values()):
        return "nested"
    return "unknown"


def render(paths: list[Path], link_prefix: str | None = "results/") -> str:
    """The Markdown tables of these result files; files are linked with ``link_prefix``
    (``None``: named in backticks, for pages that cannot link to the repository's files)."""
    sections: dict[str, list[list[str]]] = {k: [] for k in
                                            ("accuracy", "timing", "md_speed", "md_stability",
                                             "train_step")}
    unknown = []
    items = []
    for path in paths:
        d = json.loads(path.read_text())
        link = f"`{path.name}`" if link_prefix is None else f"[{path.name}]({link_prefix}{path.name})"
        if classify(d) == "nested":  # {"command": ..., "runs": {"name": result, ...}}
            items += [(f"{link} ({name})", sub) for name, sub in d["runs"].items()]
        else:
            items.append((link, d))
    for link, d in items:
        kind = classify(d)
        if kind == "accuracy":
            sections["accuracy"].append(accuracy_row(link, d))
        elif kind == "timing":
            sections["timing"].append(timing_row(link, [d], machine_name(d.get("machine"))))
        elif kind == "timing_series":
            runs = d if isinstance(d, list) else d["runs"]
            machine = (d.get("machine") if isinstance(d, dict) else None) or runs[0].get("machine")
            sections["timing"].append(timing_row(link, runs, machine_name(machine)))
        elif kind == "md_speed":
            sections["md_speed"].append(md_speed_row(link, d))
        elif kind == "md_stability":
            sections["md_stability"].append(md_stability_row(link, d))
        elif kind == "train_step":
            sections["train_step"].extend(train_step_rows(link, d))
        else:
            unknown.append(link)

    titles = {
        "accuracy": ("Accuracy after a training budget (`aspirin.py`, rMD17 aspirin)", ACCURACY_HEADER),
        "timing": ("Energy + forces, reference-size model (`aspirin.py`; series: median (min–max))",
                   TIMING_HEADER),
        "md_speed": ("MD speed (`md.py`; engine ms/step (ns/day at 0.5 fs) / ASE path)", MD_SPEED_HEADER),
        "md_stability": ("MD stability (`md.py --stability`, aspirin, Langevin)", MD_STABILITY_HEADER),
        "train_step": ("Training step (`train_step.py`)", TRAIN_STEP_HEADER),
    }
    out = []
    for kind, rows in sections.items():
        if rows:
            title, header = titles[kind]
            out.append(f"**{title}**\n\n{table(header, rows)}")
    if unknown:
        out.append("Not recognised: " + ", ".join(unknown))
    return "\n\n".join(out)


def thermal_section(path: Path) -> str:
    """Green–Kubo results of ``thermal.py``: one row per system (and correlation window) in
    the file."""
    d = json.loads(path.read_text())
    rows = []
    for name in ("argon", "silicon"):
        r = d.get(name)
        if not r:
            continue
        windows = {k: v for k, v in r.items() if k.startswith("window_")} or {"": r}
        for window, w in windows.items():
            runs = r.get("runs") if isinstance(r.get("runs"), int) else len(w.get("kappa_per_run_W_mK", []))
            label = f"{name} ({window.removeprefix('window_')} window)" if window else name
            rows.append([label, fmt(r.get("temperature_K"), 0), fmt(r.get("n_atoms")),
                         f"{runs} × {fmt(r.get('production_ps_per_run'), 0)}",
                         f"{fmt(w.get('kappa_mean_W_mK'), 3)} ± {fmt(w.get('kappa_mean_W_mK_stderr'), 3)}",
                         fmt(r.get("ns_per_day_with_heat_flux"), 1)])
    if not rows:
        return ""
    header = ["system", "T (K)", "atoms", "runs × ps", "κ (W/m/K)", "ns/day with flux"]
    return f"**Green–Kubo thermal conductivity (`thermal.py`, `{path.name}`)**\n\n{table(header, rows)}"


def defaults_section(path: Path) -> str:
    """Training recipes side by side (``defaults.py``): test errors after the same budget and
    the stability of hot NVT runs of the trained models."""
    d = json.loads(path.read_text())
    results = d.get("results", [])
    if not results:
        return ""
    periodic = any("test_stress_mae_GPa" in r for r in results)
    rows = []
    for r in results:
        stability = []
        for temperature, s in sorted((r.get("stability") or {}).items()):
            times = ", ".join(f"{x:g}" for x in s.get("time_to_instability_ps", []))
            stability.append(f"{temperature} K: {s['stable']}/{s['runs']}" + (f" (broke at {times} ps)" if times else ""))
        energy = (f"{fmt(r.get('test_energy_mae_meV_per_atom'), 2)}/atom" if periodic
                  else fmt(r.get("test_energy_mae_meV"), 1))
        row = [r["recipe"], r["dataset"], fmt(r.get("steps")), energy, fmt(r.get("test_forces_mae_meV_per_A"), 1)]
        if periodic:
            row.append(fmt(r.get("test_stress_mae_GPa"), 3))
        rows.append(row + ["; ".join(stability) or "–"])
    header = ["recipe", "data", "steps", "test E MAE (meV)", "test F MAE (meV/Å)",
              *(["test stress MAE (GPa)"] if periodic else []), "stable NVT runs"]
    protocol = d.get("protocol", {})
    note = (f"budget (minutes) {protocol.get('minutes', '?')}, NVT {protocol.get('time_ps', '?')} ps "
            f"per run, {protocol.get('timestep_fs', '?')} fs steps")
    return f"**Training recipes (`defaults.py`, `{path.name}`; {note})**\n\n{table(header, rows)}"


def long_range_section(path: Path) -> str:
    """Local model vs long-range terms (``long_range.py``): test errors after the same budget,
    and the terms' cost."""
    d = json.loads(path.read_text())
    rows = []
    for r in d.get("runs", []):
        rows.append([r["dataset"], r["variant"], fmt(r.get("steps")),
                     fmt(1e3 * r["energy_mae"], 2), fmt(1e3 * r["energy_rmse_per_atom"], 3),
                     fmt(1e3 * r["forces_mae"], 1) if r["dataset"] != "sn2_F_I" else "(no labels)",
                     fmt(1e3 * r["charges_mae"], 1) if "charges_mae" in r else "–",
                     fmt(1e3 * r["dipole_mae"], 1) if "dipole_mae" in r else "–"])
    out = []
    if rows:
        header = ["data", "model", "steps", "test E MAE (meV)", "E RMSE (meV/atom)",
                  "F MAE (meV/Å)", "charges MAE (me)", "dipole MAE (me Å)"]
        out.append(f"**Long-range terms (`long_range.py`, `{path.name}`; "
                   f"{d.get('runs', [{}])[0].get('minutes', '?')} minutes each)**\n\n"
                   f"{table(header, rows)}")
    t = d.get("timing")
    if t:
        out.append(table(["cluster atoms", "local (ms)", "all terms, every pair (ms)",
                          "all terms, 10 Å (ms)"],
                         [[fmt(t["n_atoms"]), fmt(t["local_ms"], 1),
                           f"{fmt(t['all_terms_ms'], 1)} ({fmt(t['ratio_all_pairs'], 2)}×)",
                           f"{fmt(t['all_terms_cutoff10_ms'], 1)} ({fmt(t['ratio_cutoff10'], 2)}×)"]]))
    cost = d.get("term_cost")
    if cost:
        out.append(f"**Cost of the terms (`long_range.py --phase cost`, `{path.name}`; "
                   f"{d.get('machine', '?')}; ms, × the local model, wall / CPU time)**\n\n"
                   + table(["system", "atoms", "model", "terms", "calculator E+F",
                            "calculator E+F+σ", "MD engine step"], cost_rows(cost)))
    return "\n\n".join(out)


def cost_rows(rows: list[dict]) -> list[list[str]]:
    """One row per system and variant of ``long_range.py --phase cost``."""
    def cell(r, name, prop):
        if f"{name}_{prop}_ms" not in r:
            return "–"
        text = fmt(r[f"{name}_{prop}_ms"], 0)
        if f"ratio_{name}_{prop}" in r:
            text += (f" ({fmt(r[f'ratio_{name}_{prop}'], 2)}× / "
                     f"{fmt(r.get(f'cpu_ratio_{name}_{prop}'), 2)}×)")
        return text

    out = []
    for r in rows:
        names = [k[: -len("_forces_ms")] for k in r if k.endswith("_forces_ms")]
        for name in names:
            label = name.replace("terms_ewald", "all, k-vectors" if r["system"] == "box"
                                 else "all").replace("terms_pme", "all, PME")
            out.append([r["system"], fmt(r["n_atoms"]), r.get("model", "?"), label,
                        cell(r, name, "forces"), cell(r, name, "stress"),
                        cell(r, name, "engine")])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", type=Path, help="JSON files (default: the RELEVANT list)")
    p.add_argument("--all", action="store_true", help="every JSON file in benchmarks/results")
    p.add_argument("--link-prefix", default="results/",
                   help="prefix of the file links (default results/, for benchmarks/README.md)")
    args = p.parse_args(argv)

    if args.files:
        paths = args.files
    elif args.all:
        paths = sorted(RESULTS.glob("*.json"))
    else:
        paths = [RESULTS / name for name in RELEVANT]
    print(render(paths, args.link_prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
