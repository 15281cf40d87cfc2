"""The panel's defaults on the two trained digits models: is each sampler's default (chosen
on the analytic panel by ``bench_panel.py``) its best candidate on these models too?

Every deterministic sampler x candidate options x grid of ``bench_panel.CANDIDATES`` (VP
grids on the VP eps model, EDM grids on the EDM model) at ``--nfe``, from the same initial
noise as ``bench_digits_calibrate.py`` (the first ``--n`` noises of each of its seed sets),
scored by the RMS distance to that benchmark's teacher endpoint (DPM-Solver-3 on
``--teacher-steps`` log-SNR steps: the trained model's own PF-ODE solution, in place of the
analytic panel's exact endpoint). Where the best candidate beats the default by more than the spread
over the seed sets, the FID of both at 500 samples per set is measured too.

    PYTHONPATH=. nice -n 10 python benchmarks/bench_panel_digits.py --work /tmp/t11

writes ``benchmarks/results/panel_digits.{json,md}`` (``bench_panel.py`` appends the table
to ``panel.md``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_digits_calibrate as bdc
from bench_panel import CANDIDATES, EDM_GRIDS, VP_GRIDS, _read_state, choose_defaults
from seedsets import spread

from samplerlab.fileio import atomic_write_text
from samplerlab.samplers import SAMPLERS
from samplerlab.samplers.schedules import get_sigmas

RESULTS = Path(__file__).resolve().parent / "results"


def defaults_from_panel() -> dict[str, dict[str, Any]]:
    """The defaults ``bench_panel.py`` chose (from its saved runs)."""
    state = _read_state(RESULTS / "panel.json.gz")
    return choose_defaults(state["rows"], state["config"]["nfe"])


def run_candidate(b: bdc.Bench, name: str, opts: dict, grid: tuple, budget: int, z: torch.Tensor):
    spec = SAMPLERS[name]
    steps = spec.steps_for_nfe(budget, opts)
    if steps is None:
        return None
    # SamplerSpec.plan_for / nfe_for were renamed plan / nfe (issue 10): either.
    grid_steps, planned = (getattr(spec, "plan_for", None) or spec.plan)(steps, opts)
    schedule, sopts = grid
    lo, hi = b.info.sigma_min, b.info.sigma_max
    sigmas = get_sigmas(schedule, grid_steps, sigma_min=lo, sigma_max=hi, vp=b.info.vp, **sopts)
    x = z * math.sqrt(float(sigmas[0]) ** 2 + b.info.prior_std**2)
    with torch.no_grad():
        out = spec(b.den, x, sigmas, **{**planned, **opts})
    return (getattr(spec, "nfe_for", None) or spec.nfe)(steps, opts), out, sigmas


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="edm,vp")
    p.add_argument("--work", default="/tmp/sl_digits_cal")
    p.add_argument("--nfe", default="10")
    p.add_argument("--n", type=int, default=64, help="noises per seed set (RMS)")
    p.add_argument("--sets", type=int, default=4)
    p.add_argument("--no-fid", action="store_true")
    p.add_argument("--fid-n", type=int, default=500, help="bench_digits_calibrate.py's --n")
    p.add_argument("--teacher-steps", type=int, default=100)
    p.add_argument("--out", default=str(RESULTS / "panel_digits"))
    p.add_argument(
        "--merge", nargs="+", default=None, help="combine saved per-model runs (their JSON)"
    )
    args = p.parse_args(argv)
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        meta = dict(parts[0]["meta"])
        meta["command"] = "`; `".join(part["meta"]["command"] for part in parts)
        meta["seconds"] = sum(part["meta"]["seconds"] for part in parts)
        meta.setdefault("teacher_steps", args.teacher_steps)
        table = [row for part in parts for row in part["table"]]
        out = Path(args.out)
        atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "table": table}))
        atomic_write_text(out.with_suffix(".md"), render(meta, table))
        return 0
    torch.set_num_threads(1)
    budgets = [int(v) for v in args.nfe.split(",")]
    chosen = defaults_from_panel()
    # The digits benchmark's settings (its noise and teacher caches).
    ns = argparse.Namespace(
        work=args.work, n=args.fid_n, seed_base=11, teacher_steps=args.teacher_steps, nfe=10
    )
    out_path = Path(args.out)
    rows: list[dict] = []
    start = time.perf_counter()
    fids: dict[str, Any] = {}
    for model in args.models.split(","):
        # One cache per model (one process per model may run at a time).
        cache = Path(args.work) / f"panel_digits_rows_{model}.json"
        legacy = Path(args.work) / "panel_digits_rows.json"
        src = cache if cache.is_file() else legacy
        mine = json.loads(src.read_text()) if src.is_file() else []
        mine = [r for r in mine if r["model"] == model and r["set"] < args.sets]
        done = {(r["model"], r["sampler"], json.dumps(r["options"]), r["grid"], r["budget"])
                for r in mine}  # fmt: skip
        b = bdc.Bench(model, ns)
        family = "vp" if b.info.vp is not None else "edm"
        grids = VP_GRIDS if family == "vp" else EDM_GRIDS
        # Every set's noises in one batch (one network call per step for all sets).
        sets = list(range(args.sets))
        z = torch.cat([b.noise(s)[: args.n] for s in sets])
        ref = torch.cat([b.teacher(s)[: args.n] for s in sets]).double()
        t0 = time.perf_counter()
        for name in CANDIDATES:
            for opts, (gname, grid), budget in itertools.product(
                CANDIDATES[name], grids.items(), budgets
            ):
                key = (model, name, json.dumps(opts), gname, budget)
                if key in done:
                    continue
                res = run_candidate(b, name, opts, grid, budget, z)
                if res is None:
                    continue
                nfe, y, _ = res
                err = (y.double() - ref).reshape(len(sets), args.n, -1)
                for s in sets:
                    ok = bool(torch.isfinite(err[s]).all())
                    rms = float(err[s].pow(2).mean().sqrt()) if ok else math.inf
                    mine.append({"model": model, "family": family, "set": s, "sampler": name,
                                 "options": opts, "grid": gname, "budget": budget, "nfe": nfe,
                                 "rms": rms})  # fmt: skip
                done.add(key)
            atomic_write_text(cache, json.dumps(mine))
        rows += mine
        print(f"{model}: {time.perf_counter() - t0:.0f} s", flush=True)
    # Per (model, sampler, budget): the default vs the best candidate, per set.
    table = []
    for model in args.models.split(","):
        mine = [r for r in rows if r["model"] == model]
        if not mine:
            continue
        family = mine[0]["family"]
        for name, c in chosen.items():
            dgrid = c["vp_grid"] if family == "vp" else c["edm_grid"]
            dopts = json.dumps(c["options"], sort_keys=True)
            for budget in budgets:
                rs = [r for r in mine if r["sampler"] == name and r["budget"] == budget]
                by: dict[tuple, dict[int, float]] = {}
                for r in rs:
                    k = (json.dumps(r["options"], sort_keys=True), r["grid"])
                    by.setdefault(k, {})[r["set"]] = r["rms"]
                full = {k: v for k, v in by.items() if len(v) == args.sets}
                if (dopts, dgrid) not in full:
                    continue
                mean = {k: sum(v.values()) / len(v) for k, v in full.items()}
                best = min(mean, key=mean.get)
                d = full[(dopts, dgrid)]
                ratios = [d[s] / full[best][s] for s in range(args.sets)]
                beaten = best != (dopts, dgrid) and max(full[best].values()) < min(d.values())
                rank = sorted(mean.values()).index(mean[(dopts, dgrid)]) + 1
                dmean = mean[(dopts, dgrid)]
                table.append({"model": model, "sampler": name, "budget": budget,
                              "default": [json.loads(dopts), dgrid], "default_rms": dmean,
                              "best": [json.loads(best[0]), best[1]], "best_rms": mean[best],
                              "ratio": spread(ratios), "beaten_beyond_spread": beaten,
                              "rank": rank, "candidates": len(full)})  # fmt: skip
    # FID of the default and the best candidate where the default is beaten beyond the spread.
    if not args.no_fid:
        for row in table:
            if not row["beaten_beyond_spread"] or row["budget"] != 10:
                continue
            b = bdc.Bench(row["model"], ns)
            grids = VP_GRIDS if b.info.vp is not None else EDM_GRIDS
            key = f"{row['model']}/{row['sampler']}"
            res = {}
            for tag, (opts, gname) in (("default", row["default"]), ("best", row["best"])):
                vals = []
                for s in range(args.sets):
                    nfe, y, _ = run_candidate(b, row["sampler"], opts, grids[gname], 10, b.noise(s))
                    vals.append(b.score(y.float(), s, nfe, 0.0)["fid"])
                res[tag] = vals
            row["fid_default"] = spread(res["default"])
            row["fid_best"] = spread(res["best"])
            fids[key] = res
            print(key, res, flush=True)
    meta = {
        "command": "PYTHONPATH=. nice -n 10 python benchmarks/bench_panel_digits.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "seconds": time.perf_counter() - start,
        "n": args.n,
        "sets": args.sets,
        "nfe": budgets,
        "teacher_steps": args.teacher_steps,
    }
    atomic_write_text(out_path.with_suffix(".json"), json.dumps({"meta": meta, "table": table}))
    md = render(meta, table)
    atomic_write_text(out_path.with_suffix(".md"), md)
    print(md)
    return 0


def _o(o: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in o.items()) or "–"


def render(meta: dict, table: list[dict]) -> str:
    lines = [
        "## Trained digits models (the panel's defaults on them)",
        "",
        f"Command: `{meta['command']}` ({meta['seconds']:.0f} s). RMS distance to the model's"
        " own PF-ODE endpoint (teacher: DPM-Solver-3 on"
        f" {meta['teacher_steps']} log-SNR steps, {3 * meta['teacher_steps'] + 1} NFE) from the"
        f" same noise, {meta['sets']} seed sets of n = {meta['n']} (the first noises of"
        " `bench_digits_calibrate.py`'s sets); the default is the one chosen on the analytic"
        " panel above. *Beaten*: the best candidate's worst set is below the default's best"
        " set. FID (500 samples per set) of both where beaten.",
        "",
        "| model | sampler | NFE | default (options; grid) | RMS | rank | best candidate | RMS |"
        " default / best (sets) | beaten | FID default → best |",
        "|---|---|---:|---|---:|---:|---|---:|---|---|---|",
    ]
    for r in table:
        ra = r["ratio"]
        fid = ""
        if "fid_default" in r:
            fd, fb = r["fid_default"], r["fid_best"]
            fid = (f"{fd['mean']:.2f} ({fd['min']:.2f}–{fd['max']:.2f}) → {fb['mean']:.2f}"
                   f" ({fb['min']:.2f}–{fb['max']:.2f})")  # fmt: skip
        lines.append(
            f"| {r['model']} | `{r['sampler']}` | {r['budget']} | {_o(r['default'][0])};"
            f" {r['default'][1]} | {r['default_rms']:.4f} | {r['rank']}/{r['candidates']} |"
            f" {_o(r['best'][0])}; {r['best'][1]} | {r['best_rms']:.4f} |"
            f" {ra['mean']:.2f} ({ra['min']:.2f}–{ra['max']:.2f}) |"
            f" {'yes' if r['beaten_beyond_spread'] else 'no'} | {fid} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
