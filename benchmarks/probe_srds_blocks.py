"""Probe: SRDS's block count and tolerance at a batch of 1024 samples (the panel models).

For each panel model (``samplerlab.analytic.panel("panel")``, never the holdout), inner
solver (ddim, dpmpp_2m, edm_heun) and block count B in {10, 20, 25}, N = 100, float64, one
batch of 1024 samples: the boundary states of every parareal iteration (the plain schedule,
whose iterates the pipelined one reproduces) and the rounds of the pipelined schedule after
p iterations. Each stopping rule is then applied per sample offline; the batch's rounds are
those of its slowest sample; errors are relative RMS to the serial inner solver from the same
noise. Output: ``benchmarks/results/srds_blocks_batch1024.md`` (and ``.json``).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/probe_srds_blocks.py   # ~6 min
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

import samplerlab as sl
from samplerlab.analytic import panel
from samplerlab.fileio import atomic_write_text
from samplerlab.samplers import get_sampler
from samplerlab.samplers.core import describe
from samplerlab.samplers.noise import PerSampleNoise
from samplerlab.samplers.srds import SRDS
from samplerlab.samplers.srds_parareal import run_plain

BLOCKS = (10, 20, 25)
MAX_ITERS = 12


def rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample relative RMS distance."""
    return ((a - b).pow(2).flatten(1).sum(1) / b.pow(2).flatten(1).sum(1)).sqrt()


def finals(model: Any, x: torch.Tensor, sigmas: torch.Tensor, inner: str, B: int) -> torch.Tensor:
    """The final state of every iteration 0..MAX_ITERS, ``[P+1, n, ...]`` (no early stop)."""
    resolve = get_sampler("srds").resolve_inner
    assert resolve is not None
    config = SRDS(resolve({"inner": inner, "pipelined": False}), B, 0.0, MAX_ITERS, False)
    pr, stopper = config.prepare(model, x, sigmas, None)
    record: list[torch.Tensor] = []
    run_plain(pr, stopper, record)
    return torch.stack([r[-1] for r in record])


def rules() -> dict[str, float]:
    return {f"change < {t:g}": t for t in (1e-3, 2e-3, 3e-3, 5e-3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default="benchmarks/results/srds_blocks_batch1024")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name, m in panel("panel").items():
        seeds = list(range(20_000, 20_000 + args.n))
        shape = (args.n, *m.data_shape)
        for inner in ("ddim", "dpmpp_2m", "edm_heun"):
            kw = {"steps": args.steps, "dtype": torch.float64}
            ser = sl.sample(m, inner, shape=shape, seeds=seeds, **kw)
            sig = ser.sigmas
            scale = float((sig[0] ** 2 + describe(m).prior_std ** 2) ** 0.5)
            z = PerSampleNoise(seeds).randn(shape, device="cpu", dtype=torch.float64) * scale
            for B in BLOCKS:
                fin = finals(m, z, sig, inner, B)
                P = fin.shape[0] - 1  # min(MAX_ITERS, B): exact after B iterations
                # Rounds of the pipelined schedule after p iterations (independent of the batch).
                two = {"shape": (2, *m.data_shape), "seeds": [0, 1]}
                rounds = [
                    sl.sample(m, "srds", inner=inner, blocks=B, max_iters=q, tol=0.0, **two, **kw)
                    .rounds
                    for q in range(P + 1)
                ]  # fmt: skip
                change = torch.stack([rel(fin[q], fin[q - 1]) for q in range(1, P + 1)])
                for rule, tol in rules().items():
                    hit = change < tol  # [P, n]
                    stop = torch.where(hit.any(0), hit.float().argmax(0) + 1, P)
                    out = fin[stop, torch.arange(args.n)]
                    e = rel(out, ser.x)
                    agg = float(((out - ser.x).pow(2).sum() / ser.x.pow(2).sum()).sqrt())
                    rows.append(dict(
                        model=name, inner=inner, blocks=B, rule=rule, slowest=int(stop.max()),
                        ratio=rounds[int(stop.max())] / ser.rounds, err=agg,
                        worst_sample=float(e.max()), beyond=float((e > 1e-3).float().mean()),
                    ))  # fmt: skip
            print(name, inner, f"{time.perf_counter() - t0:.0f} s", flush=True)
    lines = [
        f"SRDS block count and tolerance on the panel, one batch of {args.n} samples, "
        f"N = {args.steps}, float64, 1 thread; `python benchmarks/probe_srds_blocks.py` "
        f"({time.perf_counter() - t0:.0f} s). Rounds: the pipelined schedule's, at the "
        "iteration of the batch's slowest sample; error: relative RMS over the batch to the "
        "serial inner solver; over 6 models x 3 inner solvers.",
        "",
        "| blocks | stop rule | rounds / serial: mean | worst | worst batch error "
        "| worst sample error | most samples beyond 1e-3 (one model) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for B in BLOCKS:
        for rule in rules():
            rs = [r for r in rows if r["blocks"] == B and r["rule"] == rule]
            lines.append(
                f"| {B} | {rule} | {sum(r['ratio'] for r in rs) / len(rs):.3f} "
                f"| {max(r['ratio'] for r in rs):.2f} | {max(r['err'] for r in rs):.1e} "
                f"| {max(r['worst_sample'] for r in rs):.1e} "
                f"| {max(r['beyond'] for r in rs):.1%} |"
            )
    text = "\n".join(lines)
    print(text)
    atomic_write_text(args.out + ".md", text + "\n")
    atomic_write_text(args.out + ".json", json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
