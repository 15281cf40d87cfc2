"""The analytic-GMM benchmark plus diffusers' own solvers as an oracle.

1. ``samplerlab.bench.run_bench`` on the default Gaussian mixture: every registered sampler
   at equal NFE, scored by the sliced W2 distance to exact samples and (deterministic
   samplers) the RMS error to the exact PF-ODE endpoint of the same initial noise.
2. On the same model, from the same initial noise and at equal NFE, diffusers'
   ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2) against our ``dpmpp_2m`` and
   ``DPMSolverSinglestepScheduler`` (solver_order=3) against our ``dpm_solver_3``, with
   diffusers' default settings (``linspace`` timesteps, ``final_sigmas_type="zero"``,
   ``lower_order_final``) on the model's own ``alphas_cumprod`` table. The analytic
   denoiser is wrapped as an epsilon model ``eps(x_vp, t)``; diffusers' output is at
   ``sigma = 0``, i.e. in data space, the coordinates of our samplers' output.
   Diagnostic rows run our solvers on diffusers' time grid, which separates the effect
   of the solver from that of the schedule.

Writes ``benchmarks/results/gmm.json`` and ``gmm.md`` (atomically). Usage::

    PYTHONPATH=. python benchmarks/bench_gmm.py --n 4000
    PYTHONPATH=. python benchmarks/bench_gmm.py --n 4000 --seed-sets 4   # the README's tables
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import samplerlab as sl
from samplerlab.analytic import GaussianMixture, sliced_wasserstein
from samplerlab.bench import per_sample_error, reference_endpoint, run_bench
from samplerlab.bench_report import bench_meta, format_notes, format_table
from samplerlab.fileio import atomic_write_text
from samplerlab.samplers.dpm_solver import sample_dpm_solver
from samplerlab.samplers.noise import PerSampleNoise
from samplerlab.samplers.schedules import logsnr

sys.path.insert(0, str(Path(__file__).resolve().parent))  # seedsets.py beside this file
from seedsets import fmt_spread, stream_seed

RESULTS = Path(__file__).resolve().parent / "results"


def eps_model(model: GaussianMixture):
    """The analytic denoiser as a VP epsilon model ``eps(x_vp, t)`` on its discrete table."""

    def eps(x_vp: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x_vp.shape[0])
        sigma = model.vp.sigma(t)  # EDM sigma at (possibly fractional) t: the table value
        s = sigma[:, None]
        x = x_vp.double() * (1 + s**2).sqrt()  # x_vp -> EDM coordinates
        return ((x - model(x, sigma)) / s).to(x_vp.dtype)

    return eps


def make_scheduler(kind: str, model: GaussianMixture, **overrides: Any):
    """A diffusers DPM-Solver scheduler with default settings on ``model``'s table."""
    from diffusers import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler

    ac = model.vp.alphas_cumprod  # float64
    betas = 1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
    cls = {"multistep": DPMSolverMultistepScheduler, "singlestep": DPMSolverSinglestepScheduler}
    sched = cls[kind](num_train_timesteps=ac.numel(), trained_betas=betas.numpy(), **overrides)
    # The model's own table (float64), and the quantities diffusers derives from it.
    sched.alphas_cumprod = ac.clone()
    sched.alpha_t = ac.sqrt()
    sched.sigma_t = (1 - ac).sqrt()
    sched.lambda_t = sched.alpha_t.log() - sched.sigma_t.log()
    sched.sigmas = ((1 - ac) / ac).sqrt()
    return sched


def run_diffusers(sched, eps, z: Tensor, nfe: int) -> tuple[Tensor, int, float, Tensor]:
    """diffusers' sampling loop from ``x_vp = z``; returns (x, NFE, seconds, timesteps)."""
    sched.set_timesteps(nfe)
    x = z * sched.init_noise_sigma
    calls = 0
    start = time.perf_counter()
    for t in sched.timesteps:
        e = eps(sched.scale_model_input(x, t), t)
        calls += 1
        x = sched.step(e, t, x).prev_sample
    return x, calls, time.perf_counter() - start, sched.timesteps.clone()


def diffusers_grid(model: GaussianMixture, timesteps: Tensor) -> Tensor:
    """diffusers' time grid as our sigma grid: the table's sigmas at its timesteps, then 0."""
    sig = model.vp.sigma(timesteps.to(torch.float64))
    return torch.cat([sig, sig.new_zeros(1)])


def fast_orders_to(nfe: int) -> list[int]:
    """DPM-Solver-fast order-3 allocation of ``nfe`` for a grid that does not end at 0."""
    K = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (K - 2) + [2, 1]
    if nfe % 3 == 1:
        return [3] * (K - 1) + [1]
    return [3] * (K - 1) + [2]


def oracle(
    model: GaussianMixture, n: int, seed: int, budgets: list[int], reference_steps: int
) -> tuple[list[dict[str, Any]], float]:
    shape = (n, model.dim)
    seeds = range(seed, seed + n)
    z = PerSampleNoise(seeds).randn(shape, device="cpu", dtype=torch.float64)
    sigma0 = model.vp.sigma_max
    ref, residual = reference_endpoint(model, z * math.sqrt(sigma0**2 + 1), sigma0, reference_steps)
    exact = model.sample(n, torch.Generator().manual_seed(seed + 1_000_003))
    eps = eps_model(model)

    rows: list[dict[str, Any]] = []

    def add(pair, method, nfe, budget, x, seconds, target=ref) -> None:
        x = x.double()
        rows.append(
            {
                "pair": pair,
                "method": method,
                "budget": budget,
                "nfe": nfe,
                "rms": float((x - target).pow(2).mean().sqrt()),
                "max_err": float((x - target).abs().max()),
                "err_median": float(per_sample_error(x, target).median()),
                "sw": sliced_wasserstein(x, exact),
                "seconds": seconds,
            }
        )

    for budget in budgets:
        # Our default grids (float64 and float32) vs diffusers' defaults, output at sigma 0.
        for ours in ("dpmpp_2m", "dpm_solver_3"):
            for dtype, tag in ((torch.float64, "float64"), (torch.float32, "float32")):
                res = sl.sample(model, ours, steps=budget, shape=shape, noise=z, dtype=dtype)
                add(ours, f"samplerlab {ours} ({tag}, default grid)", res.nfe, budget, res.x,
                    res.seconds)  # fmt: skip
            # Diagnostic: the same solver on DPM-Solver's time_quadratic grid.
            res = sl.sample(model, ours, steps=budget, shape=shape, noise=z,
                            dtype=torch.float64, schedule="time_quadratic")  # fmt: skip
            add(ours, f"samplerlab {ours} (float64, time_quadratic grid)", res.nfe, budget,
                res.x, res.seconds)  # fmt: skip
        sched = make_scheduler("multistep", model)
        x, calls, seconds, timesteps = run_diffusers(sched, eps, z.clone(), budget)
        add("dpmpp_2m", "diffusers DPMSolverMultistep (dpmsolver++, order 2)", calls, budget, x,
            seconds)  # fmt: skip
        sched = make_scheduler("singlestep", model, solver_order=3)
        x, calls, seconds, _ = run_diffusers(sched, eps, z.clone(), budget)
        add("dpm_solver_3", "diffusers DPMSolverSinglestep (solver_order=3, dpmsolver++)", calls,
            budget, x, seconds)  # fmt: skip

        # Diagnostics: our solvers on diffusers' linspace time grid (same NFE).
        grid = diffusers_grid(model, timesteps)
        res = sl.sample(model, "dpmpp_2m", steps=budget, shape=shape, noise=z,
                        dtype=torch.float64, sigmas=grid)  # fmt: skip
        add("dpmpp_2m", "samplerlab dpmpp_2m on diffusers' grid", res.nfe, budget, res.x,
            res.seconds)  # fmt: skip
        # DPM-Solver-3 steps span 3 NFE: linspace timesteps as step boundaries, our
        # log-SNR intermediate points.
        steps = len(sl.samplers.dpm_solver_fast_orders(budget, 3))
        lin = torch.linspace(0, model.vp.num_timesteps - 1, steps + 1).round().flip(0)[:-1]
        res = sl.sample(model, "dpm_solver_3", steps=budget, shape=shape, noise=z,
                        dtype=torch.float64, sigmas=diffusers_grid(model, lin.long()))  # fmt: skip
        add("dpm_solver_3", "samplerlab dpm_solver_3 on a linspace-timestep grid", res.nfe,
            budget, res.x, res.seconds)  # fmt: skip

    # The exact counterpart of our noise-prediction DPM-Solver-3, diffusers'
    # algorithm_type="dpmsolver", cannot step to sigma 0: compare at sigma_min instead.
    sigma_min = model.vp.sigma_min
    x_start = z * math.sqrt(sigma0**2 + 1)
    fine = lambda k: sample_dpm_solver(
        model, x_start, logsnr(k + 1, sigma_min, sigma0)[:-1], orders=[3] * k
    )
    ref_min = fine(reference_steps)
    residual_min = float((ref_min - fine(reference_steps // 2)).pow(2).mean().sqrt())
    for budget in budgets:
        sched = make_scheduler(
            "singlestep", model, solver_order=3, algorithm_type="dpmsolver",
            final_sigmas_type="sigma_min",
        )  # fmt: skip
        x_vp, calls, seconds, _ = run_diffusers(sched, eps, z.clone(), budget)
        x = x_vp.double() * math.sqrt(1 + sigma_min**2)  # x_vp at t=0 -> EDM coordinates
        add("dpm_solver_3 to sigma_min", "diffusers DPMSolverSinglestep (order 3, dpmsolver, "
            "final_sigmas_type=sigma_min)", calls, budget, x, seconds, ref_min)  # fmt: skip
        orders = fast_orders_to(budget)
        grid = logsnr(len(orders) + 1, sigma_min, sigma0)[:-1]
        res = sl.sample(model, "dpm_solver_3", steps=budget, shape=shape, noise=z,
                        dtype=torch.float64, sigmas=grid, orders=orders)  # fmt: skip
        add("dpm_solver_3 to sigma_min", "samplerlab dpm_solver_3 (log-SNR grid to sigma_min)",
            res.nfe, budget, res.x, res.seconds, ref_min)  # fmt: skip
    return rows, max(residual, residual_min)


def oracle_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| pair | NFE | method | RMS to ODE endpoint | median error | max abs error "
        "| SW2 to exact |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["pair"], r["budget"])):
        lines.append(
            f"| {r['pair']} | {r['nfe']:g} | {r['method']} | {r['rms']:.3e} | "
            f"{r['err_median']:.3e} | {r['max_err']:.3e} | {r['sw']:.4f} |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]]) -> str:
    """Summary: each diffusers counterpart vs ours at the same NFE (RMS to the ODE endpoint)."""

    def ours(pair: str, budget: int, needle: str) -> dict[str, Any] | None:
        return next(
            (
                o
                for o in rows
                if o["pair"] == pair
                and o["budget"] == budget
                and o["method"].startswith("samplerlab")
                and needle in o["method"]
            ),
            None,
        )

    lines = [
        "| NFE | diffusers | diffusers RMS (median) | ours | ours RMS (median) | ours float32 RMS "
        "| ours on time_quadratic RMS (median) | ours at least as accurate (RMS)? |",
        "|---:|---|---:|---|---:|---:|---:|---|",
    ]
    both = lambda r: f"{r['rms']:.3e} ({r['err_median']:.1e})"
    for r in sorted(rows, key=lambda r: (r["pair"], r["budget"])):
        if not r["method"].startswith("diffusers"):
            continue
        if r["pair"].endswith("to sigma_min"):
            mine, f32, tq = ours(r["pair"], r["budget"], "log-SNR"), None, None
        else:
            mine = ours(r["pair"], r["budget"], "(float64, default grid)")
            f32 = ours(r["pair"], r["budget"], "(float32, default grid)")
            tq = ours(r["pair"], r["budget"], "time_quadratic")
        ok = mine["rms"] <= r["rms"] and (f32 is None or f32["rms"] <= r["rms"])
        lines.append(
            f"| {r['budget']} | {r['method'].removeprefix('diffusers ')} | {both(r)} | "
            f"{mine['method'].removeprefix('samplerlab ')} | {both(mine)} | "
            f"{'—' if f32 is None else format(f32['rms'], '.3e')} | "
            f"{'—' if tq is None else both(tq)} | "
            f"{'yes' if ok else 'NO'} ({r['rms'] / mine['rms']:.2f}x) |"
        )
    return "\n".join(lines)


README_SAMPLERS = "euler,ddim,edm_heun,dpm_solver_2,dpm_solver_3,dpmpp_2m"


def seed_sets_main(args: argparse.Namespace, model: GaussianMixture, ints: Any) -> int:
    """``--seed-sets K``: the README's tables (RMS to the ODE endpoint of the deterministic
    samplers, ours vs diffusers) on K independent seed sets, with their spread.

    Seed set ``s`` starts from ``--seed`` + its own ``init`` stream seed (per-sample seeds
    ``seed .. seed + n - 1``; exact reference samples from offsets of it, as ``run_bench``
    does). Results per set are saved as they finish (``gmm_seedsets.json``; a rerun skips
    finished sets); the tables go to ``gmm_seedsets.md``.
    """
    out = Path(args.out)
    path = out / "gmm_seedsets.json"
    settings = {
        "n": args.n,
        "dim": args.dim,
        "nfe": args.nfe,
        "oracle_nfe": args.oracle_nfe,
        "samplers": args.samplers or README_SAMPLERS,
        "seed": args.seed,
    }
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(saved, dict) or saved.get("settings") != settings:
        saved = {"settings": settings, "sets": {}}
    for k in range(args.seed_sets):
        if str(k) in saved["sets"]:
            continue
        seed = args.seed + stream_seed(k, "init") % 2**40
        t0 = time.perf_counter()
        rows = run_bench(
            model,
            settings["samplers"].split(","),
            ints(args.nfe),
            n_samples=args.n,
            seed=seed,
            ddpm_budgets=[],
            reference_steps=args.reference_steps,
        )
        orows, residual = oracle(model, args.n, seed, ints(args.oracle_nfe), args.reference_steps)
        saved["sets"][str(k)] = {
            "seed": seed,
            "rows": rows,
            "oracle": orows,
            "residual": residual,
            "seconds": time.perf_counter() - t0,
        }
        atomic_write_text(path, json.dumps(saved, indent=1) + "\n")
        print(f"seed set {k}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    keys = sorted((k for k in saved["sets"] if int(k) < args.seed_sets), key=int)
    sets = [saved["sets"][k] for k in keys]
    lines = [
        f"# Analytic GMM: the README's tables over {len(keys)} independent seed sets",
        "",
        f"dim {args.dim}, n = {args.n} per set, seeds "
        + ", ".join(f"{s['seed']}.." for s in sets)
        + "; cells: mean ± std (min–max) over the sets.",
        "",
        "## RMS error to the exact PF-ODE endpoint from the same initial noise",
        "",
        "| sampler | " + " | ".join(f"NFE {b}" for b in ints(args.nfe)) + " |",
        "|---|" + "---:|" * len(ints(args.nfe)),
    ]
    for name in settings["samplers"].split(","):
        cells = []
        for b in ints(args.nfe):
            vals = [
                r["rms"]
                for s in sets
                for r in s["rows"]
                if r["sampler"] == name and r["budget"] == b and r.get("rms") is not None
            ]
            cells.append(fmt_spread(vals, 3) if len(vals) == len(sets) else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Ours (default grid, float64) vs diffusers' DPM-Solvers (their defaults)",
        "",
        "| NFE | diffusers | diffusers RMS | ours | ours RMS | ratio diffusers / ours "
        "| ours better on every set? |",
        "|---:|---|---|---|---|---|---|",
    ]
    pick = lambda s, pair, b, needle: next(
        o for o in s["oracle"] if o["pair"] == pair and o["budget"] == b and needle in o["method"]
    )
    for pair, theirs, ours_tag in (
        ("dpm_solver_3", "diffusers DPMSolverSinglestep", "(float64, default grid)"),
        ("dpmpp_2m", "diffusers DPMSolverMultistep", "(float64, default grid)"),
        ("dpm_solver_3 to sigma_min", "diffusers DPMSolverSinglestep", "log-SNR"),
    ):
        for b in ints(args.oracle_nfe):
            d = [pick(s, pair, b, theirs)["rms"] for s in sets]
            o = [pick(s, pair, b, ours_tag)["rms"] for s in sets]
            better = all(x < y for x, y in zip(o, d, strict=True))
            lines.append(
                f"| {b} | {pick(sets[0], pair, b, theirs)['method'].removeprefix('diffusers ')} "
                f"| {fmt_spread(d, 3)} | {pair} {ours_tag} | {fmt_spread(o, 3)} "
                f"| {fmt_spread([x / y for x, y in zip(d, o, strict=True)], 3)} "
                f"| {'yes' if better else 'NO'} |"
            )
    atomic_write_text(out / "gmm_seedsets.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nfe", default="10,20,50,100")
    p.add_argument("--ddpm-nfe", default="1000")
    p.add_argument("--oracle-nfe", default="10,20,50")
    p.add_argument("--samplers", default=None)
    p.add_argument("--reference-steps", type=int, default=400)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--seed-sets", type=int, default=0,
        help="K > 0: only the README's tables, over K independent seed sets (gmm_seedsets.md)",
    )  # fmt: skip
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)  # tiny tensors: more threads only contend
    warnings.filterwarnings("ignore", category=FutureWarning)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    ints = lambda s: [int(v) for v in s.split(",") if v.strip()]
    model = GaussianMixture.default(dim=args.dim)
    samplers = args.samplers.split(",") if args.samplers else None
    if args.seed_sets > 0:
        return seed_sets_main(args, model, ints)

    start = time.perf_counter()
    rows = run_bench(
        model,
        samplers,
        ints(args.nfe),
        n_samples=args.n,
        seed=args.seed,
        ddpm_budgets=ints(args.ddpm_nfe),
        reference_steps=args.reference_steps,
    )
    meta = bench_meta(
        model,
        "gmm",
        rows,
        reference_steps=args.reference_steps,
        n_samples=args.n,
        seed=args.seed,
        dtype="float64",
        device="cpu",
        nfe_budgets=ints(args.nfe),
        ddpm_budgets=ints(args.ddpm_nfe),
    )
    print(f"bench: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    start = time.perf_counter()
    orows, residual = oracle(model, args.n, args.seed, ints(args.oracle_nfe), args.reference_steps)
    print(f"oracle: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    summary = verdict(orows)

    md = "\n".join(
        [
            "# Analytic GMM benchmark",
            "",
            "## Every sampler at equal NFE",
            "",
            format_table(rows),
            "",
            format_notes(meta),
            "",
            f"## Oracle: diffusers {diffusers.__version__} DPM-Solver schedulers vs ours",
            "",
            "Same model, same initial noise, equal NFE; diffusers with its default settings "
            "on the model's alphas_cumprod table. Reference ODE endpoint residual (RMS): "
            f"{residual:.1e}.",
            "",
            summary,
            "",
            "All rows (diagnostics: our solvers on diffusers' time grid; the same comparison "
            "at sigma_min for diffusers' noise-prediction `algorithm_type=dpmsolver`, which "
            "cannot step to 0):",
            "",
            oracle_table(orows),
            "",
        ]
    )
    out = Path(args.out)
    payload = {
        "meta": {**meta, "diffusers": diffusers.__version__, "oracle_ref_residual": residual},
        "rows": rows,
        "oracle": orows,
    }
    atomic_write_text(out / "gmm.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(out / "gmm.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
