"""Defaults chosen on a panel of models, not one: every deterministic sampler x candidate
grid/options x NFE on the analytic panel, diffusers' best schedulers beside them.

For each model of ``samplerlab.analytic.panel("panel")`` (6 mixtures: VP tables and EDM)
and ``panel("holdout")`` (2 models never used to choose anything), over ``--seed-sets``
independent noise sets of ``--n`` samples each: the RMS error to the exact PF-ODE endpoint
from the same initial noise (``samplerlab.bench.reference_endpoint``: a 400-step order-3
solve, checked against 200 steps). A sampler's default is the candidate with the lowest
geometric-mean error ratio to that sampler's best candidate over the PANEL models and the
NFE budgets (grids chosen separately for VP-table and EDM models); holdout models are
reported apart. diffusers' schedulers run on the same models through their own step
functions (the analytic denoiser evaluated at their sigmas), from the same noise.

    PYTHONPATH=. nice -n 10 python benchmarks/bench_panel.py --out benchmarks/results/panel

writes ``panel.json.gz`` (every run, gzipped JSON, resumable: finished models are skipped)
and ``panel.md``.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from samplerlab.analytic import HOLDOUT, PANEL, panel
from samplerlab.bench import reference_endpoint
from samplerlab.fileio import atomic_write, atomic_write_text
from samplerlab.samplers import SAMPLERS
from samplerlab.samplers.api import model_sigma_range
from samplerlab.samplers.schedules import get_sigmas


def _read_state(path: Path) -> dict[str, Any]:
    """The saved runs (gzipped JSON: 13k rows would be 3.4 MB as text)."""
    return json.loads(gzip.decompress(path.read_bytes()))


def _write_state(path: Path, state: dict[str, Any]) -> None:
    data = gzip.compress(json.dumps(state, separators=(",", ":")).encode(), mtime=0)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


VP_GRIDS = {
    "time_uniform": ("time_uniform", {}),
    "time_quadratic": ("time_quadratic", {}),
    "logsnr_replace": ("logsnr", {"final": "replace"}),
    "karras": ("karras", {}),
    "linspace_replace": ("linspace", {"final": "replace"}),
}
# A default must exist for every VP model: diffusers' discrete spacing (linspace) needs a
# discrete table, so it is raced but not eligible as a default.
NOT_DEFAULTABLE = ("linspace_replace",)
EDM_GRIDS = {
    "karras": ("karras", {}),
    "karras_replace": ("karras", {"final": "replace"}),
    "logsnr": ("logsnr", {}),
    "logsnr_replace": ("logsnr", {"final": "replace"}),
}


def _grid_product(**axes: list[Any]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, v, strict=True)) for v in itertools.product(*axes.values())]


# Candidate options per deterministic sampler (the grid is a separate axis).
CANDIDATES: dict[str, list[dict[str, Any]]] = {
    "euler": [{}],
    "ddim": [{}],
    "edm_heun": [{}],
    "dpm_2": [{}],
    "dpm_solver_2": _grid_product(algorithm=["dpmsolver", "dpmsolver++"]),
    "dpm_solver_3": _grid_product(algorithm=["dpmsolver", "dpmsolver++"]),
    "dpmpp_2m": [{}],
    "dpmpp_3m": _grid_product(form=["taylor", "library"], lower_order_final=[False, True]),
    "unipc": _grid_product(order=[2, 3], variant=["bh1", "bh2"], lower_order_final=[False, True]),
    "deis": _grid_product(order=[2, 3], lower_order_final=[False, True]),
    "lms": _grid_product(order=[3, 4]),
    "ipndm": _grid_product(max_order=[3, 4]),
}
# diffusers oracle rows: (label, scheduler class, config); run with its default grid and
# with use_karras_sigmas (its documented alternative), the better one quoted.
ORACLE = [
    ("UniPC order 3 bh2", "UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh2"}),
    ("UniPC order 2 bh2", "UniPCMultistepScheduler", {"solver_order": 2}),
    ("DPM-Solver++(3M)", "DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("DPM-Solver++(2M)", "DPMSolverMultistepScheduler", {"solver_order": 2}),
    ("DEIS order 3", "DEISMultistepScheduler", {"solver_order": 3}),
    ("LMS", "LMSDiscreteScheduler", {}),
]
EDM_ORACLE = [
    ("DPM-Solver++(3M)", "EDMDPMSolverMultistepScheduler", {"solver_order": 3}),
    ("DPM-Solver++(2M)", "EDMDPMSolverMultistepScheduler", {"solver_order": 2}),
]


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def _start(model: Any, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Initial noise z (its own seed), x at sigma_max, sigma_max."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.dim, generator=g, dtype=torch.float64)
    _, sigma_max = model_sigma_range(model)
    return z, z * math.sqrt(sigma_max**2 + model.prior_std**2), sigma_max


def run_ours(model, name, options, grid, budget, x) -> tuple[float, torch.Tensor] | None:
    spec = SAMPLERS[name]
    steps = spec.steps_for_nfe(budget, options)
    if steps is None:
        return None
    grid_steps, planned = spec.plan(steps, options)
    schedule, sopts = grid
    lo, hi = model_sigma_range(model)
    sigmas = get_sigmas(schedule, grid_steps, sigma_min=lo, sigma_max=hi, vp=model.vp, **sopts)
    out = spec(model, x.clone(), sigmas, **{**planned, **options})
    return spec.nfe(steps, options), out


def _betas(model) -> torch.Tensor:
    abar = model.vp.alphas_cumprod
    return 1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])


def run_diffusers(model, cls_name: str, config: dict, budget: int, z: torch.Tensor, karras: bool):
    """diffusers' scheduler on the analytic model: the eps (or EDM network) output at the
    sigma of each step, computed from the exact denoiser; same initial noise z."""
    import diffusers

    cls = getattr(diffusers, cls_name)
    if cls_name.startswith("EDM"):
        sch = cls(sigma_min=model.sigma_min, sigma_max=model.sigma_max, sigma_data=0.5, **config)
        sd = sch.config.sigma_data
    else:
        kw = {"use_karras_sigmas": True} if karras else {}
        sch = cls(trained_betas=_betas(model).numpy(), **config, **kw)
    sch.set_timesteps(budget)
    sch.set_begin_index(0)  # duplicate rounded timesteps must not shift the step index
    edm = cls_name.startswith("EDM")
    k_style = cls_name in ("LMSDiscreteScheduler",)
    s0 = float(sch.sigmas[0])
    x = z * (s0 if edm else math.sqrt(1 + s0**2)) if (edm or k_style) else z.clone()
    with torch.no_grad():
        for i, t in enumerate(sch.timesteps):
            sig = float(sch.sigmas[i])
            s = torch.full((len(z),), sig, dtype=torch.float64)
            if edm:
                d = model(x, s)
                c_skip = sd**2 / (sig**2 + sd**2)
                c_out = sig * sd / math.sqrt(sig**2 + sd**2)
                out = (d - c_skip * x) / c_out  # the network output that gives D exactly
            elif k_style:
                out = (x - model(x, s)) / sig
            else:
                xe = x * math.sqrt(1 + sig**2)
                out = (xe - model(xe, s)) / sig
            x = sch.step(out, t, x).prev_sample.double()
    return x


def _geo(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


# Today's defaults of the samplers that existed before the panel: (options, VP grid, EDM
# grid). An incumbent is replaced only when the challenger's panel score is lower on every
# seed set (a difference beyond the seed-set spread).
INCUMBENTS: dict[str, tuple[dict[str, Any], str, str]] = {
    "euler": ({}, "karras", "karras"),
    "ddim": ({}, "time_uniform", "karras"),
    "edm_heun": ({}, "karras", "karras"),
    "dpm_solver_2": ({"algorithm": "dpmsolver"}, "time_quadratic", "logsnr_replace"),
    "dpm_solver_3": ({"algorithm": "dpmsolver"}, "time_quadratic", "logsnr_replace"),
    "dpmpp_2m": ({}, "time_quadratic", "logsnr_replace"),
}


# Incumbents whose panel verdict is reported but not applied (none: euler, ddim and
# edm_heun, frozen at first, now take theirs too).
FROZEN: tuple[str, ...] = ()


def _scores(rows: list[dict], seed_set: int | None) -> dict[str, dict[tuple, float]]:
    """family -> (options json, grid) -> geometric-mean error ratio to the sampler's best
    candidate per (model, budget[, seed set]) over the panel models of that family."""
    sel = [r for r in rows if seed_set is None or r["seed_set"] == seed_set]
    best: dict[tuple, float] = {}
    for r in sel:
        key = (r["model"], r["budget"], r["seed_set"])
        best[key] = min(best.get(key, math.inf), r["rms"])
    out: dict[str, dict[tuple, float]] = {}
    for family in ("vp", "edm"):
        acc: dict[tuple, list[float]] = {}
        for r in sel:
            if r["family"] == family:
                k = (json.dumps(r["options"], sort_keys=True), r["grid"])
                acc.setdefault(k, []).append(
                    r["rms"] / best[(r["model"], r["budget"], r["seed_set"])]
                )
        out[family] = {k: _geo(v) for k, v in acc.items()}
    return out


def _config_score(sc: dict[str, dict[tuple, float]], o: str, vp: str, edm: str) -> float:
    """Both families weigh alike: the geometric mean of their two scores."""
    return math.sqrt(sc["vp"][(o, vp)] * sc["edm"][(o, edm)])


def choose_defaults(rows: list[dict], budgets: list[int]) -> dict[str, dict]:
    """Per sampler: options x (VP grid, EDM grid) with the lowest geometric-mean error
    ratio to the sampler's best candidate over the panel models and budgets (grids chosen
    per family, options shared), with its score on each seed set; incumbents stay unless
    beaten on every seed set."""
    panel_rows = [r for r in rows if r["split"] == "panel" and r["kind"] == "ours"]
    seed_sets = sorted({r["seed_set"] for r in panel_rows})
    out = {}
    for name in CANDIDATES:
        mine = [r for r in panel_rows if r["sampler"] == name and r["budget"] in budgets]
        sc = _scores(mine, None)
        per_seed = [_scores(mine, k) for k in seed_sets]
        ranked = []
        for o in {k[0] for k in sc["vp"]} & {k[0] for k in sc["edm"]}:
            vp = min(
                (sc["vp"][(o, g)], g) for oo, g in sc["vp"] if oo == o and g not in NOT_DEFAULTABLE
            )[1]
            edm = min((sc["edm"][(o, g)], g) for oo, g in sc["edm"] if oo == o)[1]
            ranked.append((_config_score(sc, o, vp, edm), o, vp, edm))
        ranked.sort()

        def seeds(o: str, vp: str, edm: str, per_seed: list = per_seed) -> list[float]:
            return [_config_score(p, o, vp, edm) for p in per_seed]

        total, o, vp, edm = ranked[0]
        entry = {
            "options": json.loads(o),
            "vp_grid": vp,
            "edm_grid": edm,
            "score": total,
            "seed_scores": seeds(o, vp, edm),
            "ranked": [(t, json.loads(oo), v, e, seeds(oo, v, e)) for t, oo, v, e in ranked[:4]],
            "incumbent": None,
        }
        if name in INCUMBENTS:
            io, ivp, iedm = INCUMBENTS[name]
            cur = [json.dumps(io, sort_keys=True), ivp, iedm]
            inc = {"score": _config_score(sc, *cur), "seed_scores": seeds(*cur)}
            # Greedy, one axis at a time (options, VP grid, EDM grid): a change is kept only
            # if it lowers the score by more than 5% and on every seed set.
            axes = (
                (0, sorted({k[0] for k in sc["vp"]})),
                (1, sorted({k[1] for k in sc["vp"]} - set(NOT_DEFAULTABLE))),
                (2, sorted({k[1] for k in sc["edm"]})),
            )
            for axis, values in axes:
                base, base_seeds = _config_score(sc, *cur), seeds(*cur)
                best_v = None
                for v in values:
                    trial = list(cur)
                    trial[axis] = v
                    t_score, t_seeds = _config_score(sc, *trial), seeds(*trial)
                    wins = all(a < b for a, b in zip(t_seeds, base_seeds, strict=True))
                    if wins and t_score < 0.95 * base and (best_v is None or t_score < best_v[0]):
                        best_v = (t_score, v)
                if best_v is not None:
                    cur[axis] = best_v[1]
            frozen = name in FROZEN
            chosen_cfg = [json.dumps(io, sort_keys=True), ivp, iedm] if frozen else cur
            verdict = {"options": json.loads(cur[0]), "vp_grid": cur[1], "edm_grid": cur[2]}
            entry.update(
                {
                    "options": json.loads(chosen_cfg[0]),
                    "vp_grid": chosen_cfg[1],
                    "edm_grid": chosen_cfg[2],
                    "score": _config_score(sc, *chosen_cfg),
                    "seed_scores": seeds(*chosen_cfg),
                }
            )
            entry["incumbent"] = {
                "options": io,
                "vp_grid": ivp,
                "edm_grid": iedm,
                **inc,
                "panel_verdict": verdict,
                "frozen": frozen,
            }
        out[name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1024, help="samples per seed set")
    p.add_argument("--seed-sets", type=int, default=4)
    p.add_argument("--nfe", default="5,10,20")
    p.add_argument("--models", default="all", help="panel | holdout | all | comma list")
    p.add_argument("--samplers", default=",".join(CANDIDATES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/panel")
    p.add_argument(
        "--report-only", action="store_true", help="re-render panel.md from panel.json.gz"
    )
    args = p.parse_args(argv)
    if args.report_only:
        out = Path(args.out)
        state = _read_state(out.with_suffix(".json.gz"))
        write_report(state, out.with_suffix(".md"), state["config"]["nfe"])
        return 0
    torch.set_num_threads(args.threads)
    # The oracle's LMS warns that scale_model_input was not called: its model is analytic.
    warnings.filterwarnings("ignore", message=".*scale_model_input.*")
    budgets = [int(b) for b in args.nfe.split(",")]
    samplers = [s for s in args.samplers.split(",") if s]
    for s in samplers:
        if s not in CANDIDATES:
            p.error(f"--samplers: unknown '{s}'; valid: {', '.join(CANDIDATES)}")
    models = panel(
        args.models if args.models in ("panel", "holdout", "all") else args.models.split(",")
    )
    out = Path(args.out)
    json_path = out.with_suffix(".json.gz")
    state = _read_state(json_path) if json_path.exists() else {"rows": [], "done": []}
    cmd = "PYTHONPATH=. nice -n 10 python benchmarks/bench_panel.py " + " ".join(
        argv or sys.argv[1:]
    )
    state["command"] = cmd.strip()
    state["config"] = {"n": args.n, "seed_sets": args.seed_sets, "nfe": budgets}
    for mname, model in models.items():
        if mname in state["done"]:
            print(f"{mname}: done, skipped", flush=True)
            continue
        t0 = time.time()
        split = "holdout" if mname in HOLDOUT else "panel"
        family = "vp" if model.vp is not None else "edm"
        grids = VP_GRIDS if family == "vp" else EDM_GRIDS
        rows = []
        for k in range(args.seed_sets):
            # Independent noise per (model, seed set); far from the IIA / bench seed ranges.
            seed = 7_000_000 + 1000 * (list(PANEL) + list(HOLDOUT)).index(mname) + k
            z, x, sigma_max = _start(model, seed, args.n)
            ref, residual = reference_endpoint(model, x, sigma_max)
            base = {"model": mname, "split": split, "family": family, "seed_set": k}
            for name in samplers:
                for opts, (gname, grid), budget in itertools.product(
                    CANDIDATES[name], grids.items(), budgets
                ):
                    res = run_ours(model, name, opts, grid, budget, x)
                    if res is None:
                        continue
                    nfe, y = res
                    rms = _rms(y, ref) if bool(torch.isfinite(y).all()) else float("inf")
                    rows.append(
                        {
                            **base,
                            "kind": "ours",
                            "sampler": name,
                            "options": opts,
                            "grid": gname,
                            "budget": budget,
                            "nfe": nfe,
                            "rms": rms,
                            "ref_residual": residual,
                        }
                    )
            for label, cls, cfg in ORACLE if family == "vp" else EDM_ORACLE:
                for karras, budget in itertools.product((False, True), budgets):
                    if family == "edm" and karras:
                        continue  # the EDM scheduler's grid is Karras already
                    try:
                        y = run_diffusers(model, cls, cfg, budget, z, karras)
                        rms = _rms(y, ref) if bool(torch.isfinite(y).all()) else float("inf")
                    except (AssertionError, ValueError, IndexError) as e:
                        # diffusers refuses some grids (e.g. duplicate Karras timesteps).
                        print(f"  diffusers {label} karras={karras} {budget}: {e!r}")
                        rms = float("inf")
                    rows.append(
                        {
                            **base,
                            "kind": "diffusers",
                            "sampler": label,
                            "options": cfg,
                            "grid": "karras" if karras or family == "edm" else "default",
                            "budget": budget,
                            "nfe": budget,
                            "rms": rms,
                            "ref_residual": residual,
                        }
                    )
        state["rows"] = [r for r in state["rows"] if r["model"] != mname] + rows
        state["done"].append(mname)
        _write_state(json_path, state)
        print(f"{mname}: {len(rows)} runs in {time.time() - t0:.0f} s", flush=True)
    write_report(state, out.with_suffix(".md"), budgets)
    return 0


def _key(r: dict) -> tuple:
    return (r["kind"], r["sampler"], json.dumps(r["options"], sort_keys=True), r["grid"])


def _table(rows: list[dict]) -> dict[tuple, dict[tuple, list[dict]]]:
    """config key -> (model, budget) -> rows over seed sets."""
    out: dict[tuple, dict[tuple, list[dict]]] = {}
    for r in rows:
        out.setdefault(_key(r), {}).setdefault((r["model"], r["budget"]), []).append(r)
    return out


def _mean(rs: list[dict]) -> float:
    return sum(r["rms"] for r in rs) / len(rs)


def _cell(rs: list[dict] | None) -> str:
    if not rs:
        return "–"
    v = [r["rms"] for r in rs]
    return f"{sum(v) / len(v):.4f} ({min(v):.4f}–{max(v):.4f})"


def _opts(o: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in o.items()) or "–"


def render(state: dict, budgets: list[int], chosen: dict[str, dict]) -> str:
    rows = state["rows"]
    tab = _table(rows)
    present = {r["model"] for r in rows}
    models = [m for m in [*PANEL, *HOLDOUT] if m in present]
    family = {r["model"]: r["family"] for r in rows}
    cfg = state["config"]
    lines = [
        "# Defaults chosen on the analytic panel",
        "",
        f"Command: `{state['command']}`",
        "",
        f"RMS error to the exact PF-ODE endpoint from the same initial noise; {cfg['seed_sets']}"
        f" independent noise seed sets of n = {cfg['n']} samples per model; each cell is the"
        " mean over the seed sets (min–max over them). Panel models choose the defaults;"
        " holdout models (`holdout-*`) never choose anything. float64, CPU, one thread.",
        "",
        "## Chosen defaults",
        "",
        "Score: geometric mean over panel models and NFE "
        f"{'/'.join(map(str, budgets))} of the error ratio to that sampler's best candidate"
        " (1.0 = best everywhere).",
        "",
        "Score range: the same score on each seed set alone. Samplers that existed before"
        " start from their default (the incumbent) and change one axis at a time (options,"
        " VP grid, EDM grid) only where that lowers the score by more than 5% and on every"
        " seed set"
        + (f"; the verdict for {', '.join(FROZEN)} is reported, not applied." if FROZEN else "."),
        "",
        "| sampler | default options | VP-table grid | EDM grid | score (seed sets) |"
        " runner-up: score (seed sets) | before |",
        "|---|---|---|---|---:|---|---|",
    ]

    def rng(v: list[float]) -> str:
        return f"{min(v):.3f}–{max(v):.3f}"

    for name, c in chosen.items():
        ru = next(
            (
                r
                for r in c["ranked"]
                if (r[1], r[2], r[3]) != (c["options"], c["vp_grid"], c["edm_grid"])
            ),
            None,
        )
        ru_txt = f"{_opts(ru[1])}; {ru[2]} / {ru[3]}: {ru[0]:.3f} ({rng(ru[4])})" if ru else "–"
        inc = c["incumbent"]
        if inc is None:
            before = "new"
        else:
            was = f"{_opts(inc['options'])}; {inc['vp_grid']} / {inc['edm_grid']}"
            v = inc["panel_verdict"]
            now = f"{_opts(v['options'])}; {v['vp_grid']} / {v['edm_grid']}"
            if was == now:
                before = f"kept: {was}"
            elif inc["frozen"]:
                before = f"kept: {was} ({inc['score']:.3f}); panel verdict, not applied: {now}"
            else:
                before = f"was {was} ({inc['score']:.3f}, {rng(inc['seed_scores'])})"
        lines.append(
            f"| `{name}` | {_opts(c['options'])} | {c['vp_grid']} | {c['edm_grid']} |"
            f" {c['score']:.3f} ({rng(c['seed_scores'])}) | {ru_txt} | {before} |"
        )

    def default_key(name: str, model: str) -> tuple:
        c = chosen[name]
        grid = c["vp_grid"] if family[model] == "vp" else c["edm_grid"]
        return ("ours", name, json.dumps(c["options"], sort_keys=True), grid)

    def oracle_best(label: str, model: str, budget: int) -> list[dict] | None:
        cands = [
            v[(model, budget)]
            for k, v in tab.items()
            if k[0] == "diffusers" and k[1] == label and (model, budget) in v
        ]
        return min(cands, key=_mean) if cands else None

    labels = list(dict.fromkeys(r["sampler"] for r in rows if r["kind"] == "diffusers"))
    for budget in budgets:
        lines += ["", f"## {budget} NFE", "", "| sampler (default) | " + " | ".join(models) + " |"]
        lines.append("|---|" + "---:|" * len(models))
        for name in chosen:
            cells = [_cell(tab.get(default_key(name, m), {}).get((m, budget))) for m in models]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        for label in labels:
            cells = [_cell(oracle_best(label, m, budget)) for m in models]
            lines.append(f"| diffusers {label} | " + " | ".join(cells) + " |")
    # Where the default is not the best candidate of its sampler.
    lines += [
        "",
        "## Models where the default is not the sampler's best candidate",
        "",
        "Listed where the best candidate beats the default by more than the spread (the"
        " default's worst seed set is above the best candidate's worst, and the best's mean"
        " is below the default's best seed set).",
        "",
        "| sampler | model | NFE | default | best candidate | its error | ratio |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for name in chosen:
        for m in models:
            for budget in budgets:
                d = tab.get(default_key(name, m), {}).get((m, budget))
                if not d:
                    continue
                cands = [
                    (k, v[(m, budget)])
                    for k, v in tab.items()
                    if k[0] == "ours" and k[1] == name and (m, budget) in v
                ]
                k_best, b = min(cands, key=lambda kv: _mean(kv[1]))
                d_min = min(r["rms"] for r in d)
                if k_best != default_key(name, m) and _mean(b) < d_min:
                    lines.append(
                        f"| `{name}` | {m} | {budget} | {_mean(d):.4f} |"
                        f" {_opts(json.loads(k_best[2]))}; {k_best[3]} | {_mean(b):.4f} |"
                        f" {_mean(b) / _mean(d):.2f} |"
                    )
    # Acceptance on the holdout at 10 NFE, ratios paired per seed set.
    lines += [
        "",
        "## Holdout check at 10 NFE (paired per seed set)",
        "",
        "| ours (default) | diffusers (its better grid) | model | ours | diffusers |"
        " ratio mean (min–max) |",
        "|---|---|---|---:|---:|---:|",
    ]
    pairs = [
        ("unipc", "UniPC order 3 bh2"),
        ("unipc", "UniPC order 2 bh2"),
        ("dpmpp_3m", "DPM-Solver++(3M)"),
        ("dpmpp_2m", "DPM-Solver++(2M)"),
        ("deis", "DEIS order 3"),
        ("lms", "LMS"),
    ]
    for m in [m for m in models if m.startswith("holdout")]:
        for name, label in pairs:
            if name not in chosen:
                continue
            o = tab.get(default_key(name, m), {}).get((m, 10))
            d = oracle_best(label, m, 10)
            if not o or not d:
                continue
            by = {r["seed_set"]: r["rms"] for r in d}
            ratios = [r["rms"] / by[r["seed_set"]] for r in o if r["seed_set"] in by]
            lines.append(
                f"| `{name}` | {label} | {m} | {_mean(o):.4f} | {_mean(d):.4f} |"
                f" {sum(ratios) / len(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) |"
            )
    res = sorted({r["ref_residual"] for r in rows})
    lines += [
        "",
        f"Reference residual (RMS change 400 -> 200 steps): max {max(res):.1e} over all sets.",
        "",
    ]
    return "\n".join(lines)


def write_report(state: dict, path: Path, budgets: list[int]) -> None:
    text = render(state, budgets, choose_defaults(state["rows"], budgets))
    # The trained digits models' section (``bench_panel_digits.py``), when it has been run.
    digits = path.with_name("panel_digits.md")
    if digits.is_file():
        text += "\n" + digits.read_text()
    atomic_write_text(path, text)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
