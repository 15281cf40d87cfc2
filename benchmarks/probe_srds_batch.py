"""Probe: default ``srds`` against its serial inner solver, one batch of 1024 samples.

Holdout models (``samplerlab.analytic.panel("holdout")``), N = 100, float64, 1 thread;
the error is the relative RMS ``sqrt(sum (x - x_serial)^2 / sum x_serial^2)`` from the same
per-sample seeds. Output: ``benchmarks/results/srds_batch1024.txt``.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/probe_srds_batch.py   # ~3 min
"""

from __future__ import annotations

import time

import torch

import samplerlab as sl
from samplerlab.analytic import panel


def main(n: int = 1024, steps: int = 100) -> None:
    torch.set_num_threads(1)
    seeds = list(range(10_000, 10_000 + n))
    for name, m in panel("holdout").items():
        shape = (n, *m.data_shape)
        for inner in ("ddim", "dpmpp_2m"):
            t0 = time.time()
            kw = {"steps": steps, "shape": shape, "seeds": seeds, "dtype": torch.float64}
            ser = sl.sample(m, inner, **kw)
            par = sl.sample(m, "srds", inner=inner, **kw)
            err = ((par.x - ser.x).pow(2).sum() / ser.x.pow(2).sum()).sqrt().item()
            print(
                name, inner, n, "rounds", par.rounds, "serial", ser.rounds,
                f"ratio {par.rounds / ser.rounds:.2f}", f"relRMS {err:.1e}",
                f"{time.time() - t0:.0f}s", flush=True,
            )  # fmt: skip


if __name__ == "__main__":
    main()
