"""Training speed of the embedded default model (digits UNet) against the torch thread count.

Times full training steps (loss, backward, AdamW step) of ``samplerlab train``'s default
model and batch, in one process, the thread counts interleaved round by round so that they
see the same machine load; ``--load N`` adds N busy-looping processes (a second CPU-heavy
job on the machine). Prints steps/s per thread count (median and range over the rounds).

    PYTHONPATH=. python benchmarks/bench_threads.py --threads 1,2 --load 1 \
        --out benchmarks/results/threads.md
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path


def _spin() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="thread counts to compare")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per round and count")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--load", type=int, default=0, help="busy-looping processes beside")
    ap.add_argument("--out", default=None, help="markdown file for the table")
    args = ap.parse_args()

    import torch

    from samplerlab.trainer.config import load_config
    from samplerlab.trainer.data import DiffusionDataModule
    from samplerlab.trainer.module import build_module

    cfg = load_config()  # the embedded default: digits, the small UNet, batch 64
    dm = DiffusionDataModule(cfg.data)
    dm.prepare()
    module = build_module(cfg, dm.shape, dm.num_classes)
    opt = torch.optim.AdamW(module.net.parameters(), lr=cfg.optim.lr)
    x = torch.stack([dm.train[i][0] for i in range(cfg.data.batch_size)])
    batch = (x, torch.full((x.shape[0],), -1))
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = module.loss(batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for p in spinners:
        p.start()
    counts = [int(t) for t in args.threads.split(",")]
    rates: dict[int, list[float]] = {n: [] for n in counts}
    try:
        for _ in range(args.rounds):
            for n in counts:
                torch.set_num_threads(n)
                for _ in range(3):  # warm-up at this count
                    step()
                t = time.perf_counter()
                for _ in range(args.steps):
                    step()
                rates[n].append(args.steps / (time.perf_counter() - t))
                print(f"threads {n}: {rates[n][-1]:.2f} steps/s", flush=True)
    finally:
        for p in spinners:
            p.kill()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"Digits UNet training steps/s ({cpus} usable CPUs, load average at the end: "
        f"{os.getloadavg()[0]:.1f}, {args.load} extra busy process(es), "
        f"{args.rounds} rounds x {args.steps} steps)",
        "",
        "| threads | steps/s (median) | range |",
        "|---:|---:|---|",
    ]
    for n in counts:
        r = rates[n]
        lines.append(f"| {n} | {statistics.median(r):.2f} | {min(r):.2f}–{max(r):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
