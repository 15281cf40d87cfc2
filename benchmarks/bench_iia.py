"""IIA vs its base samplers on the analytic Gaussian mixture, at equal NFE.

Error = RMS distance (over held-out samples) to the reference ODE endpoint from the same
initial noise (EDM Heun, 400 steps down to sigma_min = 1e-4, then the final denoise).
Coefficients are fitted on the fitting seeds (``samplerlab.iia.fit``) and evaluated on
disjoint held-out seeds. Also reports the one-time cost of the fit as a function of M.

    PYTHONPATH=$PWD python benchmarks/bench_iia.py [--M 10] [--samples 64] [--n 256]
        [--seed-sets 4] [--json results.json] [--out results.md] [--diagnose 10]

Every number is measured on ``--seed-sets`` independent seed sets (set ``s``: held-out
noise from its own ``eval`` stream, fitting noise from the fit's seed block ``s``) and
reported as mean ± std (min–max) over the sets; per-set results are saved as they finish
(``--json``; a rerun skips finished sets).

``--diagnose STEPS`` adds an ablation of IIA-DPM-Solver++(2M) on a ``STEPS``-step grid:
median per-sample error, the fraction of samples it improves, and the end-to-end error
when the fitted correction is applied at one step only / at all steps but one.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from seedsets import fmt_spread, stream_seeds

import samplerlab as sl
from samplerlab.analytic import GaussianMixture
from samplerlab.fileio import atomic_write_text
from samplerlab.iia import fit
from samplerlab.samplers import iia
from samplerlab.samplers.denoisers import CountingDenoiser

F64 = torch.float64
# (base, IIA variants, grid steps for each NFE budget)
FAMILIES = [
    ("ddim", ["iia_ddim"], {5: 5, 10: 10, 15: 15, 20: 20}),
    ("dpmpp_2m", ["iia_dpmpp_2m"], {5: 5, 10: 10, 15: 15, 20: 20}),
    ("edm_heun", ["iia_edm", "biia_edm"], {5: 3, 11: 6, 15: 8, 19: 10}),
]


def one_seed_set(gmm: GaussianMixture, s: int, args: argparse.Namespace) -> dict:
    """Every error of seed set ``s``: held-out seeds from the set's own ``eval`` stream,
    fitting seeds from the fit's block ``seed=s`` (disjoint from each other and the sets)."""
    t_start = time.perf_counter()
    held_out = stream_seeds(s, "eval", args.n)
    kw = {"shape": (args.n, gmm.dim), "seeds": held_out, "dtype": F64}
    ref_opts = {"schedule_options": {"sigma_min": 1e-4}, **kw}
    ref = sl.sample(gmm, "edm_heun", steps=400, **ref_opts).x
    ref_check = sl.sample(gmm, "edm_heun", steps=200, **ref_opts).x

    def err(x: torch.Tensor) -> float:
        return float(((x - ref) ** 2).sum(1).mean().sqrt())

    def fitted(name: str, steps: int, counter: Any = None, **opts: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        c = fit(counter or gmm, name, steps=steps, num_samples=args.samples, seed=s,
                progress=False, **opts)  # fmt: skip
        return c, time.perf_counter() - t0

    out: dict[str, Any] = {"ref_residual": err(ref_check), "families": [], "grids": [], "M": []}
    for base, variants, budgets in FAMILIES:
        for nfe, steps in budgets.items():
            e_base = err(sl.sample(gmm, base, steps=steps, **kw).x)
            for name in variants:
                c, sec = fitted(name, steps, M=args.M, r=args.r)
                res = sl.sample(gmm, name, steps=steps, coeffs=c, **kw)
                assert res.nfe == nfe, (name, res.nfe, nfe)
                out["families"].append({"nfe": nfe, "base": base, "iia": name,
                                        "base_error": e_base, "iia_error": err(res.x),
                                        "fit_seconds": sec})  # fmt: skip
    for grid in ("time_quadratic", "time_uniform", "karras", "logsnr"):
        e_base = err(sl.sample(gmm, "dpmpp_2m", steps=10, schedule=grid, **kw).x)
        c, _ = fitted("iia_dpmpp_2m", 10, M=args.M, schedule=grid)
        e = err(sl.sample(gmm, "iia_dpmpp_2m", steps=10, schedule=grid, coeffs=c, **kw).x)
        out["grids"].append({"grid": grid, "base_error": e_base, "iia_error": e})
    for name, steps, base in (("iia_ddim", 10, "ddim"), ("iia_edm", 6, "edm_heun")):
        e_base = err(sl.sample(gmm, base, steps=steps, **kw).x)
        for M in (1, 3, 10, 20):
            counter = CountingDenoiser(gmm)
            c, sec = fitted(name, steps, counter, M=M, r=args.r)
            e = err(sl.sample(gmm, name, steps=steps, coeffs=c, **kw).x)
            out["M"].append({"iia": name, "steps": steps, "M": M, "fit_seconds": sec,
                             "extra_nfe": c.metadata["fit_extra_nfe_per_sample"],
                             "total_fit_nfe": counter.rows / args.samples, "error": e,
                             "base_error": e_base})  # fmt: skip
    out["seconds"] = time.perf_counter() - t_start
    return out


def report(sets: dict[str, dict], args: argparse.Namespace) -> str:
    keys = sorted(sets, key=int)
    col = lambda part, i, f: [f(sets[k][part][i]) for k in keys]
    ratio = lambda r: r["iia_error"] / r["base_error"]
    lines = [
        f"IIA vs base on GaussianMixture.default(): fit M={args.M}, {args.samples} fitting "
        f"samples, r={args.r}; {args.n} held-out samples; {len(keys)} independent seed sets "
        "(held-out noise and fitting noise from separate seeds per set). Cells: mean ± std "
        "(min–max) over the seed sets. Error = RMS distance to the reference ODE endpoint "
        "(EDM Heun, 400 steps to sigma_min 1e-4; 200-vs-400-step residual "
        f"{max(sets[k]['ref_residual'] for k in keys):.1e}).",
        "",
        "| NFE | base | base error | IIA | IIA error | ratio IIA / base |",
        "|---:|---|---|---|---|---|",
    ]
    for i, r in enumerate(sets[keys[0]]["families"]):
        lines.append(
            f"| {r['nfe']} | {r['base']} "
            f"| {fmt_spread(col('families', i, lambda r: r['base_error']))} "
            f"| {r['iia']} | {fmt_spread(col('families', i, lambda r: r['iia_error']))} "
            f"| {fmt_spread(col('families', i, ratio), 3)} |"
        )
    lines += ["", "IIA-DPM-Solver++(2M) vs its base at 10 NFE on each grid", "",
              "| grid | dpmpp_2m error | iia_dpmpp_2m error | ratio |",
              "|---|---|---|---|"]  # fmt: skip
    for i, r in enumerate(sets[keys[0]]["grids"]):
        lines.append(
            f"| {r['grid']} | {fmt_spread(col('grids', i, lambda r: r['base_error']))} "
            f"| {fmt_spread(col('grids', i, lambda r: r['iia_error']))} "
            f"| {fmt_spread(col('grids', i, ratio), 3)} |"
        )
    lines += ["", "Cost of the fit vs M (extra NFE per fitting sample; held-out error)", "",
              "| IIA | steps | M | fit s (mean) | extra NFE / sample | error | base error "
              "| ratio |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, r in enumerate(sets[keys[0]]["M"]):
        sec = sum(col("M", i, lambda r: r["fit_seconds"])) / len(keys)
        lines.append(
            f"| {r['iia']} | {r['steps']} | {r['M']} | {sec:.1f} | {r['extra_nfe']} "
            f"| {fmt_spread(col('M', i, lambda r: r['error']))} "
            f"| {fmt_spread(col('M', i, lambda r: r['base_error']))} "
            f"| {fmt_spread(col('M', i, lambda r: r['error'] / r['base_error']), 3)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--M", type=int, default=10, help="fine sub-steps per coarse step")
    ap.add_argument("--samples", type=int, default=64, help="fitting samples")
    ap.add_argument("--r", type=int, default=1, help="past terms of the EDM forms")
    ap.add_argument("--n", type=int, default=256, help="held-out evaluation samples")
    ap.add_argument("--seed-sets", type=int, default=4, help="independent seed sets")
    ap.add_argument("--json", default=None, help="per-seed-set results (resumable)")
    ap.add_argument("--out", default=None, help="also write the markdown tables here")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument(
        "--diagnose",
        type=int,
        nargs="*",
        default=[],
        help="grid steps at which to ablate iia_dpmpp_2m step by step (seed set 0)",
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    # Lightning's per-fit banners (its loggers are configured when it is imported).
    for logger in (
        "lightning.pytorch",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric",
    ):
        logging.getLogger(logger).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)

    gmm = GaussianMixture.default()
    settings = {"M": args.M, "samples": args.samples, "r": args.r, "n": args.n}
    path = Path(args.json) if args.json else None
    saved = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    if not isinstance(saved, dict) or saved.get("settings") != settings:  # another run's file
        saved = {"settings": settings, "sets": {}}
    for s in range(args.seed_sets):
        if str(s) not in saved["sets"]:
            saved["sets"][str(s)] = one_seed_set(gmm, s, args)
            if path is not None:
                atomic_write_text(path, json.dumps(saved, indent=1) + "\n")
            print(f"seed set {s}: {saved['sets'][str(s)]['seconds']:.0f} s", flush=True)
    sets = {k: v for k, v in saved["sets"].items() if int(k) < args.seed_sets}
    text = report(sets, args)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    if args.diagnose:
        held_out = stream_seeds(0, "eval", args.n)
        kw = {"shape": (args.n, gmm.dim), "seeds": held_out, "dtype": F64}
        ref = sl.sample(gmm, "edm_heun", steps=400, schedule_options={"sigma_min": 1e-4}, **kw).x
        for steps in args.diagnose:
            diagnose(gmm, steps, args, kw, ref)


def diagnose(
    gmm: GaussianMixture, steps: int, args: argparse.Namespace, kw: dict, ref: torch.Tensor
) -> dict:
    """Where IIA-DPM-Solver++(2M) gains or loses: per-sample errors and per-step ablations."""
    name = "iia_dpmpp_2m"
    c = fit(gmm, name, steps=steps, M=args.M, num_samples=args.samples, progress=False)

    def errors(table: torch.Tensor | None) -> torch.Tensor:
        if table is None:
            x = sl.sample(gmm, "dpmpp_2m", steps=steps, **kw).x
        else:
            coeffs = iia.IIACoefficients(name, c.sigmas, table, c.mask, c.form, c.r)
            x = sl.sample(gmm, name, steps=steps, coeffs=coeffs, **kw).x
        return ((x - ref) ** 2).sum(1).sqrt()

    def rms(e: torch.Tensor) -> float:
        return float(e.square().mean().sqrt())

    e_base, e_iia = errors(None), errors(c.coeffs)
    before, after = torch.tensor(c.metadata["local_error"]).T
    improved = float((e_iia < e_base).double().mean())
    print(f"\nDiagnosis: {name} on {steps} steps (M={args.M}, {args.samples} fitting samples)\n")
    print(
        f"RMS {rms(e_base):.4f} -> {rms(e_iia):.4f}; median {float(e_base.median()):.4f} -> "
        f"{float(e_iia.median()):.4f}; samples improved: {improved:.2f}"
    )
    print(
        "\n| step | sigma_i -> sigma_i+1 | local err^2 before -> after "
        "| only this step | all but this |"
    )
    print("|---|---|---|---|---|")
    rows = []
    for i in torch.nonzero(c.mask).flatten().tolist():
        only = torch.zeros_like(c.coeffs)
        only[i] = c.coeffs[i]
        but = c.coeffs.clone()
        but[i] = 0.0
        r_only, r_but = rms(errors(only)) / rms(e_base), rms(errors(but)) / rms(e_base)
        s0, s1 = float(c.sigmas[i]), float(c.sigmas[i + 1])
        rows.append({"step": i, "only": r_only, "all_but": r_but})
        print(
            f"| {i} | {s0:.3g} -> {s1:.3g} | {float(before[i]):.3g} -> {float(after[i]):.3g} "
            f"| {r_only:.3f} | {r_but:.3f} |"
        )
    return {
        "diagnose": name,
        "steps": steps,
        "base_rms": rms(e_base),
        "iia_rms": rms(e_iia),
        "base_median": float(e_base.median()),
        "iia_median": float(e_iia.median()),
        "ablation": rows,
    }


if __name__ == "__main__":
    main()
