"""Benchmark: Poisson midpoint (pmm) vs DDPM, randomized midpoints (rmm*) vs DDIM.

On the analytic Gaussian mixture ``GaussianMixture.default()`` (8-D, 6 narrow components,
1000-step linear-beta VP table), at equal NFE budgets, over several independent seed sets:

* distribution distance: sliced 2-Wasserstein to exact samples (and the exact-vs-exact
  floor at the same sample size);
* ODE samplers: mean L2 error of the endpoint to a reference PF-ODE solve from the same
  initial noise (EDM Heun, 1000 steps).

Each seed set draws the initial noise, the samplers' own noise (DDPM's fresh noise, PMM's
increments and midpoints, RMM's uniforms), the exact reference sample and the floor's exact
samples from separate seeds (``benchmarks/seedsets.py``). Every number is reported as
``mean ± std (min–max)`` over the seed sets. Results are saved per seed set (JSON, written
atomically after each set; a rerun skips the sets already there).

Run (one seed set of n = 10000 takes about 4-10 min on a shared 2-core CPU)::

    PYTHONPATH=$PWD python benchmarks/bench_midpoint.py --n 10000 --seed-sets 4 \
        --out benchmarks/results/midpoint.md
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from seedsets import fmt_spread, stream_seed

from samplerlab.analytic import GaussianMixture, sliced_wasserstein
from samplerlab.fileio import atomic_write_text
from samplerlab.samplers.api import build_sigmas
from samplerlab.samplers.denoisers import CountingDenoiser
from samplerlab.samplers.noise import GlobalNoise
from samplerlab.samplers.registry import get_sampler

# (label, sampler, steps, options) of the PMM-vs-DDPM section.
STOCHASTIC: list[tuple[str, str, int, dict[str, Any]]] = [
    *[("ddpm, time-uniform (the table chain)", "ddpm", b, {}) for b in (10, 20, 50, 80, 100, 1000)],
    *[
        (f"pmm, {m}, full chain", "pmm", N, {"midpoints": m})
        for m in ("bernoulli", "single")
        for N in (5, 10, 25, 40, 50)
    ],
    ("ddpm, karras grid", "ddpm", 50, {"schedule": "karras"}),
    ("ddpm, karras grid", "ddpm", 80, {"schedule": "karras"}),
    ("pmm, bernoulli, karras fine grid", "pmm", 25, {"schedule": "karras"}),
    ("pmm, bernoulli, karras fine grid", "pmm", 40, {"schedule": "karras"}),
    ("pmm, single, karras fine grid", "pmm", 25, {"schedule": "karras", "midpoints": "single"}),
    ("pmm, single, karras fine grid", "pmm", 40, {"schedule": "karras", "midpoints": "single"}),
]
GRIDS = ("time_uniform", "time_quadratic", "karras")
BUDGETS = (10, 20, 50, 100)


def ode_configs(budget: int) -> list[tuple[str, str, int, dict[str, Any]]]:
    """rmm forms, rmm_parallel and DDIM at (about) ``budget`` NFE: rmm costs 2N - 1."""
    N = (budget + 1) // 2
    cfgs: list[tuple[str, str, int, dict[str, Any]]] = [("ddim", "ddim", 2 * N - 1, {})]
    cfgs += [(f"rmm ({f})", "rmm", N, {"form": f}) for f in ("ddim", "data", "exponential")]
    cfgs += [
        (f"rmm_parallel (ddim, R={R}, K={K})", "rmm_parallel", N, {"form": "ddim", "R": R, "K": K})
        for R, K in ((5, 3), (5, 5))
    ]
    return cfgs


def run(
    gmm: GaussianMixture,
    z: torch.Tensor,
    name: str,
    steps: int,
    sampler_seed: int,
    schedule: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """One sampler run from the standard-normal draw ``z`` (the same z for every sampler);
    the sampler's own noise comes from ``sampler_seed``, a stream independent of ``z``."""
    spec = get_sampler(name)
    grid_steps, planned = spec.plan(steps)
    sigmas = build_sigmas(gmm, spec, grid_steps, schedule)
    counter = CountingDenoiser(gmm)
    x = z * math.sqrt(float(sigmas[0]) ** 2 + gmm.prior_std**2)
    noise = GlobalNoise(torch.Generator().manual_seed(sampler_seed))
    out = spec(counter, x, sigmas, noise=noise, **{**planned, **options})
    return {"x": out, "nfe": counter.nfe(z.shape[0]), "rounds": counter.rounds}


def one_seed_set(gmm: GaussianMixture, n: int, s: int, base: int) -> dict[str, Any]:
    """Every metric of seed set ``s``: {key: {"nfe", "rounds", "sw", "err"}} and the floor."""
    t0 = time.perf_counter()
    seed = lambda stream, k=0: stream_seed(s, stream, base, k)
    z = torch.randn(n, gmm.dim, generator=torch.Generator().manual_seed(seed("init")))
    exact = gmm.sample(n, torch.Generator().manual_seed(seed("exact")))
    floors = [
        sliced_wasserstein(gmm.sample(n, torch.Generator().manual_seed(seed("floor", k))), exact)
        for k in range(3)
    ]
    rows: dict[str, dict[str, Any]] = {}
    # Each configuration gets its own sampler-noise seed (index = its position).
    for k, (label, name, steps, kw) in enumerate(STOCHASTIC):
        kw = dict(kw)
        r = run(gmm, z, name, steps, seed("sampler", k), kw.pop("schedule", None), **kw)
        rows[f"{label}|{steps}"] = {
            "nfe": r["nfe"],
            "rounds": r["rounds"],
            "sw": sliced_wasserstein(r["x"], exact),
        }
    ref = run(gmm, z, "edm_heun", 1000, 0, schedule="time_uniform")["x"]
    k = len(STOCHASTIC)
    for sched in GRIDS:
        for budget in BUDGETS:
            for label, name, steps, kw in ode_configs(budget):
                k += 1
                r = run(gmm, z, name, steps, seed("sampler", k), schedule=sched, **kw)
                rows[f"{sched}|{label}|{steps}"] = {
                    "nfe": r["nfe"],
                    "rounds": r["rounds"],
                    "sw": sliced_wasserstein(r["x"], exact),
                    "err": float((r["x"] - ref).norm(dim=1).mean()),
                }
    return {"floor": floors, "rows": rows, "seconds": time.perf_counter() - t0}


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def report(gmm: GaussianMixture, n: int, sets: dict[str, Any]) -> str:
    keys = sorted(sets, key=int)
    per = lambda key, m: [sets[s]["rows"][key][m] for s in keys]
    mean = lambda v: sum(v) / len(v)
    floors = [f for s in keys for f in sets[s]["floor"]]
    out = [
        f"Model: GaussianMixture.default() (dim {gmm.dim}, {gmm.weights.numel()} components), "
        f"n = {n} samples, float64, {len(keys)} independent seed sets ({', '.join(keys)}): "
        "initial noise, sampler noise, exact reference and floor samples each from their own "
        "seed. Every cell: mean ± std (min–max) over the seed sets. SW = sliced 2-Wasserstein "
        f"to an exact sample; exact-vs-exact floor: {fmt_spread(floors)} "
        f"({len(floors)} pairs).",
        "",
        "### PMM vs DDPM (SW to exact samples)",
        "",
    ]
    rows = []
    for label, name, steps, _ in STOCHASTIC:
        key = f"{label}|{steps}"
        K = get_sampler(name).plan(steps)[1].get("K", "-") if name == "pmm" else "-"
        rows.append([label, steps, K, f"{mean(per(key, 'nfe')):.1f}", fmt_spread(per(key, "sw"))])
    out += [table(["sampler", "steps", "K", "NFE (realised, mean)", "SW"], rows), ""]
    for sched in GRIDS:
        rows = []
        for budget in BUDGETS:
            for label, _, steps, _ in ode_configs(budget):
                key = f"{sched}|{label}|{steps}"
                rows.append(
                    [
                        label,
                        steps,
                        f"{mean(per(key, 'nfe')):.0f}",
                        f"{mean(per(key, 'rounds')):.0f}",
                        fmt_spread(per(key, "err"), 3),
                        fmt_spread(per(key, "sw")),
                    ]
                )
        out += [
            f"### Randomized midpoints vs DDIM ({sched} grid, same initial noise)",
            "",
            table(["sampler", "steps", "NFE", "rounds", "err (ODE)", "SW"], rows),
            "",
        ]
    secs = sum(sets[s]["seconds"] for s in keys)
    out += [
        "err (ODE) = mean L2 distance of the endpoint to EDM-Heun-1000 (time_uniform) from the "
        "same initial noise.",
        "",
        f"Total sampling time {secs:.0f} s over {len(keys)} seed sets (one thread).",
    ]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6000, help="samples per sampler")
    ap.add_argument("--seed-sets", type=int, default=4, help="independent seed sets")
    ap.add_argument("--base-seed", type=int, default=0, help="entropy of all seed streams")
    ap.add_argument("--out", default=None, help="also write the markdown tables here")
    ap.add_argument("--json", default=None, help="per-seed-set results (default: OUT.json)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument(
        "--sets", type=int, nargs="*", default=None,
        help="compute only these seed sets (e.g. in another process; merge the JSON files)",
    )  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    gmm = GaussianMixture.default()
    path = Path(args.json or (Path(args.out).with_suffix(".json") if args.out else "midpoint.json"))
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(saved, dict) or (saved.get("n"), saved.get("base_seed")) != (
        args.n,
        args.base_seed,
    ):
        saved = {"n": args.n, "base_seed": args.base_seed, "sets": {}}
    for s in range(args.seed_sets) if args.sets is None else args.sets:
        if str(s) in saved["sets"]:
            continue
        saved["sets"][str(s)] = one_seed_set(gmm, args.n, s, args.base_seed)
        atomic_write_text(path, json.dumps(saved, indent=1) + "\n")
        print(f"seed set {s}: {saved['sets'][str(s)]['seconds']:.0f} s", flush=True)
    sets = {k: v for k, v in saved["sets"].items() if int(k) < args.seed_sets}
    if args.sets is not None:
        return
    text = report(gmm, args.n, sets)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
