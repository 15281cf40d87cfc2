"""What a sampler costs besides the network: seconds against n and steps, beside floors.

Every registered sampler runs through ``samplerlab.sample`` on a trivial epsilon model
(``eps = 0.5 x``, a 1000-step linear-beta table, d = 64) on the CPU with a fixed thread
count, beside hand-written floors that do the same arithmetic with batched draws:

* ``ddim floor``: ``x <- x + (sigma_next - sigma) eps(x alpha, t)`` with every coefficient
  and timestep precomputed on the host (one network call and two tensor ops per step);
* ``ddpm floor``: the same plus ``Gamma * torch.randn(n, d)`` (DDPM's posterior step);
* ``randn``: the same number of batched ``torch.randn(n, d)`` draws alone.

The targets (n = 4096, one thread): the noise cost of ``ddpm`` (its time minus ``ddim``'s,
200 steps) at most 1.5x that of 200 batched draws; ``pmm`` (25 coarse steps over the
1000-step chain) at most 2x the 1000-step ddpm floor; ``ddim`` at most 3x its floor (200
steps) and at most 3x 100 raw calls of a tiny MLP at batch 1. Each configuration is timed
``--repeats`` times (the millisecond-long batch-1 pair 8x as often), interleaved, and the
minimum CPU time of the process is kept (the machine may be shared: CPU time leaves out
the time other processes run, and load only adds time); every ratio is taken within one
run. The scaling table times every sampler at
``--steps`` for each ``--n`` and against each of ``--steps-axis`` at ``--n-steps``, with
its ratio to the floor of the same NFE (ddpm floor for stochastic samplers; for PMM the
ddpm floor over its whole fine chain).

    PYTHONPATH=$PWD python benchmarks/bench_scaling.py --out benchmarks/results   # ~4 min
    PYTHONPATH=$PWD python benchmarks/bench_scaling.py --smoke --out /tmp/scaling
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import samplerlab as sl
from samplerlab.fileio import atomic_write_text
from samplerlab.samplers import SAMPLERS, build_sigmas, get_sampler
from samplerlab.samplers.denoisers import from_eps
from samplerlab.samplers.schedules import betas_for

DIM = 64
TARGETS = {"ddpm_noise": 1.5, "pmm": 2.0, "ddim": 3.0, "ddim_batch1": 3.0}


def trivial_eps(x: Tensor, t: Tensor) -> Tensor:
    return 0.5 * x


class TinyMLP(nn.Module):
    """A tiny time-conditioned MLP epsilon model (the batch-1 latency case)."""

    def __init__(self, dim: int = DIM, hidden: int = 128) -> None:
        super().__init__()
        self.inp, self.time = nn.Linear(dim, hidden), nn.Linear(1, hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.inp(x) + self.time(t[:, None].to(x.dtype) / 1000)
        return self.out(torch.relu(h))


def make_denoiser(eps_fn: Callable[[Tensor, Tensor], Tensor]) -> Any:
    table = torch.cumprod(1 - betas_for("linear"), 0)
    return from_eps(eps_fn, table, data_shape=(DIM,))


def host_plan(den: Any, sigmas: Tensor, n: int) -> list[tuple[float, float, Tensor]]:
    """Per step ``(alpha, sigma, t)`` on the host: the floors' precomputed coefficients."""
    s = sigmas[:-1]
    t = den.vp.t(s).to(torch.float32)
    alpha = (1 + s**2).rsqrt()
    return [(float(alpha[i]), float(s[i]), t[i].expand(n)) for i in range(len(s))]


def floor_ddim(eps_fn, den, sigmas: Tensor, x: Tensor) -> Tensor:
    """Euler/DDIM (eta = 0) in sigma space, coefficients from the host."""
    plan = host_plan(den, sigmas, x.shape[0])
    nxt = sigmas[1:].tolist()
    for (alpha, sigma, t), sigma_next in zip(plan, nxt, strict=True):
        eps = eps_fn(x * alpha, t)
        x = torch.add(x, eps, alpha=sigma_next - sigma)
    return x


def floor_ddpm(eps_fn, den, sigmas: Tensor, x: Tensor) -> Tensor:
    """DDPM's posterior step with one batched ``torch.randn`` per step."""
    plan = host_plan(den, sigmas, x.shape[0])
    nxt = sigmas[1:].tolist()
    for (alpha, sigma, t), sn in zip(plan, nxt, strict=True):
        eps = eps_fn(x * alpha, t)
        gamma = sn * max(1 - sn**2 / sigma**2, 0.0) ** 0.5
        x = torch.add(x, eps, alpha=sn**2 / sigma - sigma)
        if sn > 0:
            x = torch.add(x, torch.randn(x.shape), alpha=gamma)
    return x


def time_min(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Minimum CPU seconds of each callable over ``repeats`` interleaved rounds.

    CPU time of this (one-thread) process, user + system: on an idle machine it is the
    wall-clock time; on a shared one it leaves out the time other processes hold the CPU,
    which would otherwise inflate long runs more than short ones.
    """
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.process_time()
            fn()
            best[k] = min(best[k], time.process_time() - start)
    return best


def targets(n: int, steps: int, chain: int, coarse: int, mlp_steps: int, repeats: int) -> dict:
    """The four target ratios, each measured within one interleaved run."""
    den = make_denoiser(trivial_eps)
    shape, seeds = (n, DIM), range(n)
    grid = build_sigmas(den, get_sampler("ddim"), steps)
    chain_grid = build_sigmas(den, get_sampler("ddpm"), chain)
    x0 = torch.randn(shape)
    K = chain // coarse
    fns = {
        "ddim": lambda: sl.sample(den, "ddim", steps=steps, shape=shape, seeds=seeds),
        "ddpm": lambda: sl.sample(den, "ddpm", steps=steps, shape=shape, seeds=seeds),
        "randn": lambda: [torch.randn(shape) for _ in range(steps)],
        "ddim_floor": lambda: floor_ddim(trivial_eps, den, grid, x0 * 80),
        "pmm": lambda: sl.sample(den, "pmm", steps=coarse, shape=shape, seeds=seeds, K=K),
        "chain_floor": lambda: floor_ddpm(trivial_eps, den, chain_grid, x0 * 80),
    }
    t = time_min(fns, repeats)
    # Batch 1 with a tiny MLP: sample() against the raw network calls alone.
    torch.manual_seed(0)
    mlp = TinyMLP().eval()
    mden = make_denoiser(mlp)
    mgrid = build_sigmas(mden, get_sampler("ddim"), mlp_steps)
    ts = [tt for _, _, tt in host_plan(mden, mgrid, 1)]
    x1 = torch.randn(1, DIM)

    def raw() -> None:
        for tt in ts:
            mlp(x1, tt)

    with torch.inference_mode():
        # Milliseconds each: many more interleaved repeats than the long runs above.
        t1 = time_min(
            {
                "ddim_b1": lambda: sl.sample(mden, "ddim", steps=mlp_steps, shape=(1, DIM)),
                "raw_b1": raw,
            },
            max(repeats, 8 * repeats if repeats > 1 else 1),
        )
    t.update(t1)
    ratios = {
        "ddpm_noise": (t["ddpm"] - t["ddim"]) / t["randn"],
        "pmm": t["pmm"] / t["chain_floor"],
        "ddim": t["ddim"] / t["ddim_floor"],
        "ddim_batch1": t["ddim_b1"] / t["raw_b1"],
    }
    return {
        "n": n,
        "steps": steps,
        "chain": chain,
        "pmm_coarse_steps": coarse,
        "pmm_K": K,
        "mlp_steps": mlp_steps,
        "seconds": t,
        "ratios": ratios,
        "met": {k: ratios[k] <= TARGETS[k] for k in TARGETS},
    }


def scaling(ns: list[int], steps: int, n_steps: int, steps_axis: list[int], repeats: int):
    """Every registered sampler: seconds at each n (``steps``) and at each of ``steps_axis``
    (``n_steps`` samples), with the floor of the same NFE."""
    den = make_denoiser(trivial_eps)
    rows = []
    cells = [(n, steps) for n in ns] + [(n_steps, s) for s in steps_axis if s != steps]
    for n, s in cells:
        shape = (n, DIM)
        x0 = torch.randn(shape) * 80
        for name, spec in SAMPLERS.items():
            opts: dict[str, Any] = {}  # registry defaults (IIA: its default coefficients)

            def run(name=name, s=s, shape=shape, opts=opts):
                return sl.sample(den, name, steps=s, shape=shape, seeds=range(shape[0]), **opts)

            res = run()  # warm-up; its realised NFE (PMM: its fine chain) sizes the floor
            stochastic = not spec.deterministic(opts)
            floor = floor_ddpm if stochastic else floor_ddim
            if name == "pmm":  # PMM's arithmetic is its whole fine chain of sub-steps
                grid = res.sigmas
            else:
                grid = build_sigmas(den, get_sampler("ddim"), max(1, round(res.nfe)))
            t = time_min(
                {"sampler": run, "floor": lambda f=floor, g=grid, x=x0: f(trivial_eps, den, g, x)},
                repeats,
            )
            rows.append(
                {
                    "sampler": name,
                    "n": n,
                    "steps": s,
                    "nfe": res.nfe,
                    "rounds": res.rounds,
                    "seconds": t["sampler"],
                    "floor": ("ddpm" if stochastic else "ddim"),
                    "floor_steps": len(grid) - 1,
                    "floor_seconds": t["floor"],
                    "ratio": t["sampler"] / t["floor"],
                }
            )
            print(
                f"  {name:>14} n={n:<6} steps={s:<4} nfe={res.nfe:7.1f} "
                f"{t['sampler']:8.3f} s  floor {t['floor']:8.3f} s  x{rows[-1]['ratio']:.2f}",
                flush=True,
            )
    return rows


def render(result: dict) -> str:
    tg = result["targets"]
    t, r = tg["seconds"], tg["ratios"]
    n = tg["n"]
    lines = [
        "# Sampler cost besides the network (`benchmarks/bench_scaling.py`)",
        "",
        f"CPU, {result['threads']} thread(s), trivial eps model, d = {DIM}; "
        f"torch {result['torch']}; minimum CPU time of {result['repeats']} interleaved repeats "
        f"(scaling cells: {result['scaling_repeats']}, after a warm-up run); "
        f"command: `{result['command']}`.",
        "",
        f"## Targets at n = {n}",
        "",
        "| quantity | measured | seconds | target | met |",
        "|---|---:|---|---:|---|",
        f"| ddpm noise cost / batched randn ({tg['steps']} draws) | {r['ddpm_noise']:.2f}x | "
        f"(ddpm {t['ddpm']:.3f} - ddim {t['ddim']:.3f}) / randn {t['randn']:.3f} | "
        f"<= {TARGETS['ddpm_noise']} | {'yes' if tg['met']['ddpm_noise'] else '**no**'} |",
        f"| pmm ({tg['pmm_coarse_steps']} coarse steps, K = {tg['pmm_K']}) / "
        f"{tg['chain']}-step ddpm floor | {r['pmm']:.2f}x | {t['pmm']:.3f} / "
        f"{t['chain_floor']:.3f} | <= {TARGETS['pmm']} | "
        f"{'yes' if tg['met']['pmm'] else '**no**'} |",
        f"| ddim ({tg['steps']} steps) / ddim floor | {r['ddim']:.2f}x | {t['ddim']:.3f} / "
        f"{t['ddim_floor']:.3f} | <= {TARGETS['ddim']} | "
        f"{'yes' if tg['met']['ddim'] else '**no**'} |",
        f"| ddim ({tg['mlp_steps']} steps, batch 1, tiny MLP) / raw network calls | "
        f"{r['ddim_batch1']:.2f}x | {t['ddim_b1']:.4f} / {t['raw_b1']:.4f} | "
        f"<= {TARGETS['ddim_batch1']} | {'yes' if tg['met']['ddim_batch1'] else '**no**'} |",
        "",
        "## Every sampler: seconds (ratio to the floor of the same NFE; PMM: of its fine chain)",
        "",
    ]
    rows = result["scaling"]
    cols = sorted({(row["n"], row["steps"]) for row in rows}, key=lambda c: (c[1], c[0]))
    lines.append("| sampler | floor | " + " | ".join(f"n={n}, steps={s}" for n, s in cols) + " |")
    lines.append("|---|---|" + "---:|" * len(cols))
    for name in SAMPLERS:
        cell = {(row["n"], row["steps"]): row for row in rows if row["sampler"] == name}
        if not cell:
            continue
        floor = next(iter(cell.values()))["floor"]
        vals = [
            f"{cell[c]['seconds']:.3f} s (x{cell[c]['ratio']:.2f})" if c in cell else ""
            for c in cols
        ]
        lines.append(f"| {name} | {floor} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of the targets")
    p.add_argument("--scaling-repeats", type=int, default=2, help="of each scaling cell")
    p.add_argument("--n", default="256,1024,4096,16384", help="sample counts of the n axis")
    p.add_argument("--steps", type=int, default=20, help="steps of the n axis")
    p.add_argument("--n-steps", type=int, default=1024, help="n of the steps axis")
    p.add_argument("--steps-axis", default="5,50", help="steps of the steps axis")
    p.add_argument("--target-n", type=int, default=4096)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if min(args.threads, args.repeats, args.scaling_repeats) < 1:
        p.error("--threads, --repeats and --scaling-repeats must be >= 1")
    try:
        ns = [int(v) for v in args.n.split(",")]
        steps_axis = [int(v) for v in args.steps_axis.split(",")]
    except ValueError:
        p.error("--n and --steps-axis are comma-separated integers")
    torch.set_num_threads(args.threads)
    tgt = dict(n=args.target_n, steps=200, chain=1000, coarse=25, mlp_steps=100)
    if args.smoke:
        ns, steps_axis, args.steps, args.n_steps, args.repeats = [32, 64], [3], 4, 32, 1
        args.scaling_repeats = 1
        tgt = dict(n=64, steps=10, chain=40, coarse=4, mlp_steps=10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"targets at n={tgt['n']} ...", flush=True)
    result: dict[str, Any] = {
        "command": "python benchmarks/bench_scaling.py " + " ".join(argv or sys.argv[1:]),
        "threads": args.threads,
        "repeats": args.repeats,
        "scaling_repeats": args.scaling_repeats,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "targets": targets(repeats=args.repeats, **tgt),
    }
    print(json.dumps(result["targets"]["ratios"], indent=1), flush=True)
    print("scaling ...", flush=True)
    result["scaling"] = scaling(ns, args.steps, args.n_steps, steps_axis, args.scaling_repeats)
    atomic_write_text(out / "scaling.json", json.dumps(result, indent=1))
    md = render(result)
    atomic_write_text(out / "scaling.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
