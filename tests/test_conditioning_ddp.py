"""Guided, conditioned rows split over 2 gloo processes (CPU) give one process's samples."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import samplerlab as sl
from samplerlab.analytic import ClassConditionalMixture
from samplerlab.samplers.sharding import DistributedDenoiser

CASES = {
    "pmm": ("pmm", {"steps": 12}),
    "srds": ("srds", {"steps": 12, "blocks": 4}),
    "paradigms": ("paradigms", {"steps": 12, "window": 5}),
}
LABELS = torch.tensor([0, 2, 1, 1, 0])


def _run(den, name, opts):
    kw = {"shape": (5, 4), "seeds": range(10, 15), "dtype": torch.float64, "cond": LABELS}
    kw |= {"guidance": torch.tensor([2.0, 1.0, 3.0, 0.5, 4.0]), "uncond": torch.tensor([-1])}
    return sl.sample(den, name, **kw, **opts)


def _model() -> ClassConditionalMixture:
    return ClassConditionalMixture.random(dim=4, components=3, spread=1.5, seed=2)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        den = DistributedDenoiser(_model())
        tensors = {}
        for label, (name, opts) in CASES.items():
            res = _run(den, name, opts)
            tensors[label] = res.x
            tensors[label + ".nfe"] = torch.tensor(res.nfe, dtype=torch.float64)
        save_file(tensors, os.path.join(out, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    for label, (name, opts) in CASES.items():
        one = _run(_model(), name, opts)
        for r in ranks:
            torch.testing.assert_close(r[label], one.x, rtol=0, atol=1e-12)
            assert float(r[label + ".nfe"]) == one.nfe
