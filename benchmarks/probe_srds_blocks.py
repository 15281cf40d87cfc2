"""Probe: SRDS's block count and tolerance at a batch of 1024 samples (the panel models).

For each panel model (``samplerlab.analytic.panel("panel")``, never the holdout), inner
solver (ddim, dpmpp_2m, edm_heun) and block count B in {10, 20, 25}, N = 100, float64, one
batch of 1024 samples: the boundary states of every parareal iteration (the plain schedule,
whose iterates the pipelined one reproduces) and the rounds of the pipelined schedule after
p iterations. Each stopping rule is then applied per sample offline; the batch's rounds are
those of its slowest sample; errors are relative RMS to the serial inner solver from the same
noise. Also, for ``ddim`` inside, a second-order coarse propagator (``G_i`` as a
DPM-Solver++(2M) step continuing the coarse history of the previous block starts; the fine
``F_i`` stays DDIM, so the fixed point, the serial DDIM solve, is unchanged): does it lower
the slowest sample's iteration count? And per model, the slowest sample's error to serial at
every iteration (25 blocks, tol 1e-3). Output: ``benchmarks/results/srds_blocks_batch1024.md``
(and ``.json``).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/probe_srds_blocks.py   # ~8 min
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
from samplerlab.samplers.inner import Inner, dpmpp_2m_history_step
from samplerlab.samplers.noise import PerSampleNoise
from samplerlab.samplers.parallel import per_row_grid
from samplerlab.samplers.srds import SRDS
from samplerlab.samplers.srds_parareal import Parareal, Stopper, run_plain

BLOCKS = (10, 20, 25)
MAX_ITERS = 12


def rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample relative RMS distance."""
    return ((a - b).pow(2).flatten(1).sum(1) / b.pow(2).flatten(1).sum(1)).sqrt()


class Coarse2M(Parareal):
    """Parareal with a DPM-Solver++(2M) coarse step over a DDIM fine solve: the inner solver
    is stepped through its history machinery, the fine sub-steps given no history (DDIM)."""

    def fine_caps(self, steps: list[tuple[int, int]]) -> list[int]:
        return [0] * len(steps)


def finals(
    model: Any, x: torch.Tensor, sigmas: torch.Tensor, inner: str, B: int, coarse_2m: bool
) -> torch.Tensor:
    """The final state of every iteration 0..min(MAX_ITERS, B), ``[P+1, n, ...]`` (no
    early stop; the plain schedule, whose iterates the pipelined one reproduces)."""
    resolve = get_sampler("srds").resolve_inner
    assert resolve is not None
    base = resolve({"inner": inner, "pipelined": False})
    record: list[torch.Tensor] = []
    if coarse_2m:
        two_m = Inner(inner, base.fn, base.options, False, True, dpmpp_2m_history_step, 1)
        pr = Coarse2M(model, x, per_row_grid(sigmas, x.shape[0]), two_m, B, None)
        run_plain(pr, Stopper(0.0, min(MAX_ITERS, B), x.shape[0]), record)
    else:
        pr, stopper = SRDS(base, B, 0.0, MAX_ITERS, False).prepare(model, x, sigmas, None)
        run_plain(pr, stopper, record)
    return torch.stack([r[-1] for r in record])


def pipelined_rounds(model: Any, inner: str, B: int, P: int, **kw: Any) -> list[int]:
    """Rounds of the pipelined schedule after p = 0..P iterations (independent of the batch:
    measured on 2 samples)."""
    two = {"shape": (2, *model.data_shape), "seeds": [0, 1]}
    return [
        sl.sample(model, "srds", inner=inner, blocks=B, max_iters=q, tol=0.0, **two, **kw).rounds
        for q in range(P + 1)
    ]


def changes(fin: torch.Tensor) -> torch.Tensor:
    """``[P, n]``: each sample's relative change of the final state at iterations 1..P."""
    return torch.stack([rel(fin[q], fin[q - 1]) for q in range(1, fin.shape[0])])


def first_hit(crit: torch.Tensor, tol: float, cap: int) -> torch.Tensor:
    """Per sample, the first iteration ``p`` (1-based row of ``crit [P, n]``) with
    ``crit < tol``, at most ``cap`` (and ``min(cap, P)`` when never)."""
    cap = min(cap, crit.shape[0])
    if cap == 0:
        return torch.zeros(crit.shape[1], dtype=torch.long)
    hit = crit[:cap] < tol
    return torch.where(hit.any(0), hit.float().argmax(0) + 1, cap)


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
            variants = [(B, False) for B in BLOCKS]
            if inner == "ddim":
                variants += [(20, True), (25, True)]
            for B, coarse_2m in variants:
                fin = finals(m, z, sig, inner, B, coarse_2m)
                P = fin.shape[0] - 1  # min(MAX_ITERS, B): exact after B iterations
                rounds = pipelined_rounds(m, inner, B, P, **kw)
                change = changes(fin)
                for rule, tol in rules().items():
                    if coarse_2m and tol != 1e-3:
                        continue
                    stop = first_hit(change, tol, P)  # [n]
                    out = fin[stop, torch.arange(args.n)]
                    e = rel(out, ser.x)
                    agg = float(((out - ser.x).pow(2).sum() / ser.x.pow(2).sum()).sqrt())
                    k = int(stop.argmax())  # the slowest sample
                    slow = rel(fin[:, k], ser.x[k : k + 1].expand(P + 1, *ser.x.shape[1:]))
                    rows.append(dict(
                        model=name, inner=inner, blocks=B, rule=rule,
                        coarse="2M" if coarse_2m else "inner", slowest=int(stop.max()),
                        ratio=rounds[int(stop.max())] / ser.rounds, err=agg,
                        worst_sample=float(e.max()), beyond=float((e > 1e-3).float().mean()),
                        slowest_err=slow.tolist(), slowest_change=change[:, k].tolist(),
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
            rs = [r for r in rows if (r["blocks"], r["rule"], r["coarse"]) == (B, rule, "inner")]
            lines.append(
                f"| {B} | {rule} | {sum(r['ratio'] for r in rs) / len(rs):.3f} "
                f"| {max(r['ratio'] for r in rs):.2f} | {max(r['err'] for r in rs):.1e} "
                f"| {max(r['worst_sample'] for r in rs):.1e} "
                f"| {max(r['beyond'] for r in rs):.1%} |"
            )
    lines += [
        "",
        "`ddim` inside, tol 1e-3: the slowest sample's iterations with DDIM's own coarse step "
        "(`G_i` one DDIM step) against a DPM-Solver++(2M) coarse step (same fixed point):",
        "",
        "| model | blocks | slowest (DDIM G) | slowest (2M G) | rounds / serial (DDIM G) "
        "| rounds / serial (2M G) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    first = "change < 0.001"
    for name in dict.fromkeys(r["model"] for r in rows):
        for B in (20, 25):
            a, b = (
                next(r for r in rows if (r["model"], r["inner"], r["blocks"], r["rule"],
                                         r["coarse"]) == (name, "ddim", B, first, c))
                for c in ("inner", "2M")
            )  # fmt: skip
            lines.append(
                f"| {name} | {B} | {a['slowest']} | {b['slowest']} | {a['ratio']:.2f} "
                f"| {b['ratio']:.2f} |"
            )
    lines += [
        "",
        "The slowest sample of each model (25 blocks, tol 1e-3, worst over the inner solvers): "
        "its relative error to serial at iterations 0, 1, ... (stopped at the first change "
        "< 1e-3):",
        "",
    ]
    for name in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if (r["model"], r["blocks"], r["rule"], r["coarse"])
              == (name, 25, first, "inner")]  # fmt: skip
        r = max(rs, key=lambda r: r["slowest"])
        errs = ", ".join(f"{e:.1e}" for e in r["slowest_err"][: r["slowest"] + 1])
        lines.append(f"- {name} ({r['inner']}, {r['slowest']} iterations): {errs}")
    text = "\n".join(lines)
    print(text)
    atomic_write_text(args.out + ".md", text + "\n")
    atomic_write_text(args.out + ".json", json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
