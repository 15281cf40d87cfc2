"""``eval.spread_rows``: on 2 gloo processes (CPU) the parallel samplers' rounds are split
over the ranks and every evaluation row equals the one-process row."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from samplerlab.analytic import GaussianMixture
from samplerlab.evaluation.dist import Dist
from samplerlab.evaluation.fid import stats_of
from samplerlab.evaluation.job import JobContext, run_job
from samplerlab.evaluation.plan import Job
from samplerlab.samplers.denoisers import CountingDenoiser
from samplerlab.trainer.config import EvalConfig

DIM = 4
# Every parallel sampler (spread) and a serial one (never spread: its seeds are sharded).
JOBS = [
    Job("srds", "srds", budget=40, steps=12, options={"blocks": 4}),
    Job("paradigms", "paradigms", budget=40, steps=12, options={"window": 5}),
    Job("rmm_parallel", "rmm_parallel", budget=40, steps=6),
    Job("pmm", "pmm", budget=40, steps=12),
    Job("ddim", "ddim", budget=8, steps=8),
]


class _Gloo:
    """The collectives :class:`Dist` reads from a Lightning strategy, over torch.distributed."""

    def __init__(self) -> None:
        self.global_rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def reduce(self, t, reduce_op="sum"):
        op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[reduce_op]
        t = t.clone()
        dist.all_reduce(t, op=op)
        return t

    def all_gather(self, t):
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.stack(parts)

    def broadcast(self, obj, src=0):
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self):
        dist.barrier()


class _Features(torch.nn.Module):
    num_features = DIM

    def forward(self, x):
        return x.double().flatten(1)


def _ev(spread: bool):
    ev = OmegaConf.structured(EvalConfig)
    ev.merge_with({"num_samples": 11, "batch_size": 4, "dtype": "float64", "grid_size": 11})
    ev.merge_with({"fid_bootstrap": 4, "spread_rows": spread})
    return ev


def _context(ev, d: Dist) -> JobContext:
    x = torch.randn(200, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = {"range": (float(x.min()), float(x.max())), "all": stats_of(x)}
    return JobContext(ev, d, _Features(), (DIM,), stats, torch.device("cpu"))


class _Widest(GaussianMixture):
    """The mixture, recording the widest call it evaluated."""

    widest = 0

    def __call__(self, x, sigma):
        self.widest = max(self.widest, x.shape[0])
        return super().__call__(x, sigma)


def _rows(d: Dist, spread: bool) -> tuple[dict, dict]:
    g = GaussianMixture.default(dim=DIM, components=3, seed=1)
    model = _Widest(g.weights, g.means, g.stds, g.vp)
    counter = CountingDenoiser(model)
    ctx = _context(_ev(spread), d)
    rows, tensors = {}, {}
    for job in JOBS:
        counter.rows, model.widest = 0, 0
        res = run_job(job, counter, ctx)
        assert res.row["status"] == "ok", res.row
        rows[job.label] = res.row
        tensors[job.label] = res.grid
        tensors[job.label + ".rows"] = torch.tensor(counter.rows)
        tensors[job.label + ".widest"] = torch.tensor(model.widest)
    return rows, tensors


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows, tensors = _rows(Dist(_Gloo()), spread=True)
        save_file(tensors, os.path.join(out, f"rank{rank}.safetensors"))
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(rows, f, default=str)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(out) -> None:
    """Two gloo processes; one retry on the spawn/gloo teardown abort ("terminate called
    without an active exception"), a race of the stack, not an evaluation result."""
    from torch.multiprocessing.spawn import ProcessExitedException

    def start():
        args = (2, _free_port(), str(out))
        mp.start_processes(_worker, args=args, nprocs=2, join=True, start_method="spawn")

    try:
        start()
    except ProcessExitedException as e:
        if "SIGABRT" not in str(e):
            raise
        start()


def test_two_processes_spread_rows_match_one(tmp_path):
    _spawn(tmp_path)
    one, one_t = _rows(Dist(), spread=True)  # one process: spread_rows changes nothing
    plain, _ = _rows(Dist(), spread=False)
    for label in one:  # every field but the time
        a, b = ({k: v for k, v in r[label].items() if k != "seconds"} for r in (one, plain))
        assert a == b, label
    for r in range(2):
        rows = json.loads((tmp_path / f"rank{r}.json").read_text())
        got = load_file(tmp_path / f"rank{r}.safetensors")
        for job in JOBS:
            a, b = one[job.label], rows[job.label]
            assert b["nfe"] == pytest.approx(a["nfe"], rel=1e-12) and b["rounds"] == a["rounds"]
            assert b["fid"] == pytest.approx(a["fid"], rel=1e-9), job.label
            assert b["fid_std"] == pytest.approx(a["fid_std"], rel=1e-9), job.label
            assert b["range_ratio"] == pytest.approx(a["range_ratio"], rel=1e-12)
            torch.testing.assert_close(got[job.label], one_t[job.label], rtol=0, atol=1e-12)
            # Each rank computed part of the rows: half of each call of a spread job (its
            # widest call is half the one-process one, rounded up or down); the serial
            # job's own seeds in batches as wide as one process's.
            assert int(got[job.label + ".rows"]) < int(one_t[job.label + ".rows"]), job.label
            w = int(one_t[job.label + ".widest"])
            want = {w} if job.sampler == "ddim" else {w // 2, (w + 1) // 2}
            assert int(got[job.label + ".widest"]) in want, job.label
