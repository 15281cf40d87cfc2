"""Benchmark: Poisson midpoint (pmm) vs DDPM, randomized midpoints (rmm*) vs DDIM.

On the analytic Gaussian mixture ``GaussianMixture.default()`` (8-D, 6 narrow components,
1000-step linear-beta VP table), at equal NFE budgets:

* distribution distance: sliced 2-Wasserstein to exact samples (and the exact-vs-exact
  floor at the same sample size);
* ODE samplers: mean L2 error of the endpoint to a reference PF-ODE solve from the same
  initial noise (EDM Heun, 1000 steps).

Run (about 2-3 min on a shared 2-core CPU; the README tables used ``--n 10000``, ~4 min)::

    PYTHONPATH=$PWD python benchmarks/bench_midpoint.py [--n 6000] [--out results.md]
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch

from samplerlab.analytic import GaussianMixture, sliced_wasserstein
from samplerlab.fileio import atomic_write_text
from samplerlab.samplers.api import build_sigmas
from samplerlab.samplers.denoisers import CountingDenoiser
from samplerlab.samplers.noise import GlobalNoise
from samplerlab.samplers.registry import get_sampler


def run(
    gmm: GaussianMixture,
    z: torch.Tensor,
    name: str,
    steps: int,
    seed: int,
    schedule: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """One sampler run from the standard-normal draw ``z`` (same z for every sampler)."""
    spec = get_sampler(name)
    grid_steps, planned = spec.plan_for(steps)
    sigmas = build_sigmas(gmm, spec, grid_steps, schedule)
    counter = CountingDenoiser(gmm)
    x = z * math.sqrt(float(sigmas[0]) ** 2 + gmm.prior_std**2)
    noise = GlobalNoise(torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    out = spec(counter, x, sigmas, noise=noise, **{**planned, **options})
    return {
        "x": out,
        "nfe": counter.nfe(z.shape[0]),
        "rounds": counter.rounds,
        "sec": time.perf_counter() - t0,
    }


def table(header: list[str], rows: list[list[Any]]) -> str:
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6000, help="samples per sampler")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the markdown tables here")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    gmm = GaussianMixture.default()
    n = args.n
    g = torch.Generator().manual_seed(args.seed)
    z = torch.randn(n, gmm.dim, generator=g)
    exact = gmm.sample(n, torch.Generator().manual_seed(args.seed + 1))
    floors = [
        sliced_wasserstein(gmm.sample(n, torch.Generator().manual_seed(args.seed + 2 + k)), exact)
        for k in range(3)
    ]
    floor = sum(floors) / len(floors)
    sw = lambda r: sliced_wasserstein(r["x"], exact)
    # Exact mixture moments: mean and covariance.
    w, mu, sd = gmm.weights, gmm.means, gmm.stds
    mean = (w[:, None] * mu).sum(0)
    cov = (w[:, None, None] * (torch.diag_embed(sd**2) + mu[:, :, None] * mu[:, None, :])).sum(0)
    cov = cov - mean[:, None] * mean[None, :]
    cov_floor = float(torch.linalg.matrix_norm(torch.cov(exact.T) - cov))

    def cov_err(r: dict[str, Any]) -> float:
        return float(torch.linalg.matrix_norm(torch.cov(r["x"].T) - cov))

    out: list[str] = [
        f"Model: GaussianMixture.default() (dim {gmm.dim}, {gmm.weights.numel()} components), "
        f"n = {n} samples, float64. SW = sliced 2-Wasserstein to exact samples; "
        f"exact-vs-exact floor = {floor:.4f} (mean of 3; range {min(floors):.4f}-"
        f"{max(floors):.4f}). cov err = Frobenius error of the "
        f"sample covariance vs the exact one (exact samples: {cov_floor:.4f}).",
        "",
    ]
    t_start = time.perf_counter()

    # 1. PMM vs DDPM (stochastic samplers), distribution distance.
    rows = []
    for budget in (10, 20, 50, 80, 100):
        r = run(gmm, z, "ddpm", budget, args.seed)
        rows.append(["ddpm (posterior)", budget, "-", r["nfe"], sw(r), cov_err(r)])
    r = run(gmm, z, "ddpm", 1000, args.seed)
    rows.append(["ddpm (posterior)", 1000, "-", r["nfe"], sw(r), cov_err(r)])
    ddpm1000 = sw(r)
    for N in (5, 10, 25, 40, 50):
        for midpoints in ("bernoulli", "single"):
            r = run(gmm, z, "pmm", N, args.seed, midpoints=midpoints)
            K = get_sampler("pmm").plan_for(N)[1]["K"]
            rows.append([f"pmm ({midpoints})", N, K, r["nfe"], sw(r), cov_err(r)])
    out += [
        "### PMM vs DDPM (time_uniform grid = the 1000-step table chain)",
        "",
        table(["sampler", "steps (coarse N)", "K", "NFE (realised)", "SW", "cov err"], rows),
        "",
    ]

    # 1b. Investigation: grid / variant / K at ~50-80 NFE.
    rows = []
    for label, N, kw in [
        ("pmm bernoulli, fixed_large", 25, {"variant": "fixed_large"}),
        ("pmm bernoulli, sde", 25, {"variant": "sde"}),
        ("pmm bernoulli, karras fine grid", 25, {"schedule": "karras"}),
        ("pmm single, karras fine grid", 25, {"schedule": "karras", "midpoints": "single"}),
        ("pmm bernoulli, K=10 (250 fine steps)", 25, {"K": 10, "fine": 250}),
        ("ddpm, karras grid", 50, {"name": "ddpm", "schedule": "karras"}),
        ("ddpm, karras grid", 80, {"name": "ddpm", "schedule": "karras"}),
        ("pmm single, karras fine grid", 40, {"schedule": "karras", "midpoints": "single"}),
        ("pmm bernoulli, karras fine grid", 40, {"schedule": "karras"}),
        ("ddpm fixed_large", 50, {"name": "ddpm", "variant": "fixed_large"}),
        ("ddpm sde", 50, {"name": "ddpm", "variant": "sde"}),
    ]:
        kw = dict(kw)
        name = kw.pop("name", "pmm")
        fine = kw.pop("fine", None)
        if fine is not None:  # a coarser fine chain: N*K steps of the table, time-uniform
            spec = get_sampler("pmm")
            sig = build_sigmas(gmm, spec, fine, None)
            counter = CountingDenoiser(gmm)
            x = z * math.sqrt(float(sig[0]) ** 2 + gmm.prior_std**2)
            xo = spec(
                counter, x, sig, noise=GlobalNoise(torch.Generator().manual_seed(args.seed)), **kw
            )
            r = {"x": xo, "nfe": counter.nfe(n)}
        else:
            r = run(gmm, z, name, N, args.seed, **kw)
        rows.append([label, N, r["nfe"], sw(r), cov_err(r)])
    out += [
        "### PMM investigation (grid, variant, K)",
        "",
        table(["configuration", "steps", "NFE", "SW", "cov err"], rows),
        "",
    ]

    # 2. rmm / rmm_pc / rmm_parallel vs DDIM at equal NFE, on two grids.
    ref = run(gmm, z, "edm_heun", 1000, args.seed, schedule="time_uniform")["x"]
    err = lambda r: float((r["x"] - ref).norm(dim=1).mean())
    for sched in ("time_uniform", "time_quadratic", "karras"):
        rows = []
        for budget in (10, 20, 50, 100):
            N = (budget + 1) // 2  # rmm: 2N - 1 NFE
            cfgs: list[tuple[str, str, int, dict[str, Any]]] = [("ddim", "ddim", 2 * N - 1, {})]
            cfgs += [(f"rmm ({f})", "rmm", N, {"form": f}) for f in ("ddim", "data", "exponential")]
            w = max(1, N // 5)
            cfgs.append((f"rmm_pc (ddim, window {w})", "rmm_pc", N, {"form": "ddim", "window": w}))
            cfgs += [
                (
                    f"rmm_parallel (ddim, R={R}, K={K})",
                    "rmm_parallel",
                    N,
                    {"form": "ddim", "R": R, "K": K},
                )
                for R, K in ((5, 3), (5, 5))
            ]
            for label, name, steps, kw in cfgs:
                r = run(gmm, z, name, steps, args.seed, schedule=sched, **kw)
                rows.append([label, steps, r["nfe"], r["rounds"], err(r), sw(r), cov_err(r)])
        out += [
            f"### Randomized midpoints vs DDIM ({sched} grid, same initial noise)",
            "",
            table(["sampler", "steps", "NFE", "rounds", "err (ODE)", "SW", "cov err"], rows),
            "",
        ]
    out += [
        "err (ODE) = mean L2 distance of the endpoint to EDM-Heun-1000 (time_uniform) from the "
        "same initial noise (not meaningful for the stochastic rmm_pc corrector).",
        "",
        f"DDPM-1000 SW = {ddpm1000:.4f}; total time {time.perf_counter() - t_start:.0f} s.",
    ]
    text = "\n".join(out)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
