"""Probe: why SRDS's rounds grow with the batch at N = 100, and which stop rule or variant
could keep a batch of 4096 samples below half the serial rounds (the panel models).

For each panel model (``samplerlab.analytic.panel("panel")``, never the holdout) and inner
solver (ddim, dpmpp_2m, edm_heun), N = 100, float64, ONE batch of 4096 samples = four
disjoint seed sets of 1024: every parareal iteration's final state (the plain schedule,
whose iterates the pipelined one reproduces; up to 16 iterations) and the pipelined rounds
after p iterations. Per-sample stops are independent of the batch, so a batch of b samples
is any b of them: the slowest sample's iterations are reported for batches of 32, 256,
1024 and 4096 (mean, min-max over the disjoint batches). Variants, applied offline to the
same iterates:

* the default per-sample test (relative change of the final state < 1e-3) and a looser
  3e-3;
* a predictive per-sample test (stop when ``d_p * min(1, d_p / d_{p-1}) < tol``: the next
  change extrapolated geometrically);
* the default test with an iteration cap at half the serial rounds (``B + p (L - 1) <=
  N / 2``);
* a batch-level test (the batch's relative RMS change < 1e-3, every sample stops together);
* for ``ddim`` inside, other block counts (20, 50) and a DPM-Solver++(2M) coarse step over
  the DDIM fine solve (same fixed point).

Errors are relative RMS over each 1024-sample seed set to the serial inner solver from the
same noise; "wrong-mode" samples end > 0.1 (relative) from serial. For the slow samples
(>= 8 iterations) the iteration at which they first come within 0.1 of serial ("leave the
wrong basin"). Output ``benchmarks/results/srds_tail_batch4096.md`` (and ``.json``).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/probe_srds_tail.py   # ~16 min
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/probe_srds_tail.py --split holdout \
        --no-variants --out benchmarks/results/srds_tail_batch4096_holdout   # validation
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import probe_srds_blocks as blocks_probe
import torch
from probe_srds_blocks import changes, finals, first_hit, pipelined_rounds, rel

import samplerlab as sl
from samplerlab.analytic import panel
from samplerlab.fileio import atomic_write_text
from samplerlab.samplers.core import describe
from samplerlab.samplers.noise import PerSampleNoise
from samplerlab.samplers.srds import default_blocks

MAX_ITERS = 16
SET = 1024  # samples per seed set
TOL = 1e-3
WRONG = 0.1  # a sample this far (relative) from serial ended in another mode


def half_budget(rounds: list[int], serial: int) -> int:
    """The most iterations whose pipelined rounds fit in half the serial rounds."""
    return max(q for q, r in enumerate(rounds) if r <= serial / 2 or q == 0)


def batch_sizes(n: int) -> list[int]:
    """The batch sizes the slowest sample is reported for (disjoint batches of ``n``)."""
    return sorted({b for b in (32, 256, SET, 4096) if b < n} | {n})


def stop_rules(change: torch.Tensor, xs: torch.Tensor, rounds: list[int], serial: int) -> dict:
    """Each rule's stop iteration per sample ``[n]`` (the batch rule: per seed set)."""
    P, n = change.shape
    prev = torch.cat([torch.full((1, n), float("inf"), dtype=change.dtype), change[:-1]])
    ratio = torch.where(prev.isinf(), torch.ones_like(change), (change / prev).clamp(max=1.0))
    cap = half_budget(rounds, serial)
    batch = torch.empty(n, dtype=torch.long)
    for k in range(n // SET):
        rows = slice(k * SET, (k + 1) * SET)
        bc = ((change[:, rows] ** 2 * xs[rows]).sum(1) / xs[rows].sum()).sqrt()
        batch[rows] = int(first_hit(bc[:, None], TOL, P)[0])
    return {
        "per-sample change < 1e-3 (default)": first_hit(change, TOL, P),
        "per-sample change < 3e-3": first_hit(change, 3e-3, P),
        "per-sample predictive < 1e-3": first_hit(change * ratio, TOL, P),
        f"per-sample < 1e-3, capped at {cap} iterations (half the serial rounds)": first_hit(
            change, TOL, cap
        ),
        "batch relative RMS change < 1e-3": batch,
    }


def summarise(
    stop: torch.Tensor, err: torch.Tensor, xs: torch.Tensor, rounds: list[int], serial: int
) -> dict[str, Any]:
    n = stop.shape[0]
    e = err[stop, torch.arange(n)]  # each sample's error at its stop
    sets = [slice(k * SET, (k + 1) * SET) for k in range(n // SET)]
    set_err = [float(((e[s] ** 2 * xs[s]).sum() / xs[s].sum()).sqrt()) for s in sets]
    slowest = {}
    for b in batch_sizes(n):
        m = stop[: (n // b) * b].reshape(-1, b).max(1).values
        slowest[b] = [float(m.float().mean()), int(m.min()), int(m.max())]
    # At the half-serial budget (the last iteration within serial / 2 rounds): samples
    # not yet stopped are still in another mode?
    q = half_budget(rounds, serial)
    e_q = err[stop.clamp(max=q), torch.arange(n)]
    return dict(
        budget_iters=q,
        wrong_at_budget=int((e_q > WRONG).sum()),
        ratio_batch=rounds[int(stop.max())] / serial,
        ratio_sets=[rounds[int(stop[s].max())] / serial for s in sets],
        err_sets=set_err,
        wrong=int((e > WRONG).sum()),
        wrong_sets=sum(bool((e[s] > WRONG).any()) for s in sets),
        beyond=float((e > TOL).float().mean()),
        slowest=slowest,
        hist=torch.bincount(stop).tolist(),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", type=int, default=4, help="seed sets of 1024 in the batch")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--models", default=None, help="comma-separated models (default: all)")
    p.add_argument(
        "--split", default="panel", choices=["panel", "holdout"], help="holdout: validation only"
    )
    p.add_argument("--no-variants", action="store_true", help="the default block count only")
    p.add_argument("--inners", nargs="+", default=["ddim", "dpmpp_2m", "edm_heun"])
    p.add_argument("--out", default="benchmarks/results/srds_tail_batch4096")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    blocks_probe.MAX_ITERS = MAX_ITERS
    n, N = args.sets * SET, args.steps
    B0 = default_blocks(N)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    models = panel(args.split)
    pick = args.models.split(",") if args.models else list(models)
    for name in pick:
        m = models[name]
        seeds = list(range(30_000, 30_000 + n))
        shape = (n, *m.data_shape)
        for inner in args.inners:
            kw = {"steps": N, "dtype": torch.float64}
            ser = sl.sample(m, inner, shape=shape, seeds=seeds, **kw)
            sig = ser.sigmas
            scale = float((sig[0] ** 2 + describe(m).prior_std ** 2) ** 0.5)
            z = PerSampleNoise(seeds).randn(shape, device="cpu", dtype=torch.float64) * scale
            xs = ser.x.pow(2).flatten(1).sum(1)
            variants = [(B0, False)]
            if inner == "ddim" and not args.no_variants:
                variants += [(b, False) for b in (20, 50) if b != B0 and N % b == 0]
                variants += [(B0, True)]
            for B, coarse_2m in variants:
                fin = finals(m, z, sig, inner, B, coarse_2m)
                P = fin.shape[0] - 1
                rounds = pipelined_rounds(m, inner, B, P, **kw)
                change = changes(fin)
                err = torch.stack([rel(fin[q], ser.x) for q in range(P + 1)])  # [P+1, n]
                rules = stop_rules(change, xs, rounds, ser.rounds)
                if B != B0 or coarse_2m:
                    rules = {k: v for k, v in rules.items() if "(default)" in k}
                for rule, stop in rules.items():
                    row = dict(
                        model=name, inner=inner, blocks=B, coarse="2M" if coarse_2m else "inner",
                        rule=rule, serial=ser.rounds,
                        **summarise(stop, err, xs, rounds, ser.rounds),
                    )  # fmt: skip
                    if "(default)" in rule:
                        slow = (stop >= 8).nonzero().flatten().tolist()
                        row["slow"] = [
                            dict(iterations=int(stop[k]),
                                 leaves_wrong_basin=int((err[:, k] < WRONG).float().argmax()),
                                 start_err=float(err[0, k]))
                            for k in slow
                        ]  # fmt: skip
                    rows.append(row)
            print(name, inner, f"{time.perf_counter() - t0:.0f} s", flush=True)
    text = report(rows, n, N, B0, time.perf_counter() - t0, args.split)
    print(text)
    atomic_write_text(args.out + ".md", text + "\n")
    atomic_write_text(args.out + ".json", json.dumps(rows, indent=1) + "\n")
    return 0


def _mm(v: list[float], fmt: str = ".2f") -> str:
    return f"{max(v):{fmt}}" if min(v) == max(v) else f"{min(v):{fmt}}–{max(v):{fmt}}"


def report(
    rows: list[dict[str, Any]], n: int, N: int, B0: int, secs: float, split: str = "panel"
) -> str:
    sets = n // SET
    base = [r for r in rows if r["blocks"] == B0 and r["coarse"] == "inner"]
    default = [r for r in base if "(default)" in r["rule"]]
    lines = [
        f"SRDS at N = {N} on the {split} models, one batch of {n} samples = {sets} seed sets "
        f"of {SET} ({len(default)} model x inner solver cases), float64, 1 thread; `python "
        f"benchmarks/probe_srds_tail.py` ({secs:.0f} s). Rounds: pipelined schedule, at the "
        "iteration of the batch's slowest sample, / serial rounds; error: relative RMS over a "
        f"seed set of {SET} to the serial inner solver; wrong-mode: samples ending > {WRONG} "
        "from serial.",
        "",
        f"**The slowest sample's iterations grow with the batch** ({B0} blocks, default test; "
        "mean (min–max) over disjoint batches), and the rounds with it:",
        "",
        f"| model | inner | {' | '.join(map(str, batch_sizes(n)))} | rounds / serial: {SET} "
        f"({sets} sets) | {n} | in another mode at serial / 2 rounds |",
        "|---|---|" + "---:|" * (len(batch_sizes(n)) + 3),
    ]
    for r in default:
        s = r["slowest"]
        cells = [f"{s[b][0]:.1f} ({s[b][1]}–{s[b][2]})" for b in batch_sizes(n)]
        lines.append(
            f"| {r['model']} | {r['inner']} | {' | '.join(cells)} | {_mm(r['ratio_sets'])} "
            f"| {r['ratio_batch']:.2f} | {r['wrong_at_budget']} (at {r['budget_iters']} "
            "iterations) |"
        )
    lines += [
        "",
        f"**Stop rules** ({B0} blocks; over the {len(default)} model x inner cases: rounds "
        f"/ serial of the {n}-sample batch, mean and worst; cases over 0.5x; worst seed-set "
        "error; seed sets with a wrong-mode sample):",
        "",
        "| rule | mean | worst | cases > 0.5x | worst seed-set error | seed sets with a "
        f"wrong-mode sample (of {len(default) * sets}) | most samples beyond 1e-3 (one case) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rule in dict.fromkeys(r["rule"] for r in base):
        rs = [r for r in base if r["rule"] == rule]
        ratios = [r["ratio_batch"] for r in rs]
        wrong_sets = sum(r["wrong_sets"] for r in rs)
        lines.append(
            f"| {rule} | {sum(ratios) / len(ratios):.3f} | {max(ratios):.2f} "
            f"| {sum(x > 0.5 for x in ratios)} / {len(rs)} "
            f"| {max(e for r in rs for e in r['err_sets']):.1e} | {wrong_sets} "
            f"| {max(r['beyond'] for r in rs):.2%} |"
        )
    variants = any(r["blocks"] != B0 or r["coarse"] != "inner" for r in rows)
    lines += (
        []
        if not variants
        else [
            "",
            "**Other block counts and a second-order coarse step** (`ddim` inside, default test):",
            "",
            f"| model | variant | slowest of {n} | rounds / serial: {SET} ({sets} sets) | {n} "
            "| worst seed-set error | in another mode at serial / 2 rounds |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
    )
    for r in rows if variants else []:
        if r["inner"] != "ddim" or "(default)" not in r["rule"]:
            continue
        variant = f"{r['blocks']} blocks" + (", 2M coarse" if r["coarse"] == "2M" else "")
        lines.append(
            f"| {r['model']} | {variant} | {len(r['hist']) - 1} | {_mm(r['ratio_sets'])} "
            f"| {r['ratio_batch']:.2f} | {max(r['err_sets']):.1e} "
            f"| {r['wrong_at_budget']} (at {r['budget_iters']} iterations) |"
        )
    slow = [(r["model"], r["inner"], s) for r in default for s in r["slow"]]
    lines += [
        "",
        f"**The slow samples** (>= 8 iterations, {B0} blocks, default test): {len(slow)} of "
        f"{len(default) * n}; the iteration at which each first comes within {WRONG} of "
        "serial (before it, it sits in another mode):",
        "",
    ]
    for model, inner, s in slow:
        lines.append(
            f"- {model} / {inner}: {s['iterations']} iterations, error {s['start_err']:.1e} "
            f"at the coarse sweep, within {WRONG} from iteration {s['leaves_wrong_basin']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
