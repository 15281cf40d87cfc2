"""A parallel round's rows split over 2 gloo processes (CPU, ``sample(..., devices=
"distributed")``) give one process's samples, for every parallel sampler."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import samplerlab as sl
from samplerlab.analytic import GaussianMixture
from samplerlab.samplers import SAMPLERS
from samplerlab.samplers.denoisers import CountingDenoiser
from samplerlab.samplers.sharding import PARALLEL_SAMPLERS, DistributedDenoiser

STEPS, N_SAMPLES = 12, 5
# Every parallel sampler (every sampler that makes calls of more rows than samples:
# test_cases_cover_every_parallel_sampler), with every kind of inner solver (single-step,
# two-stage, multistep, stochastic), both SRDS schedules and the RMM corrector.
CASES = {
    "srds_ddim": ("srds", {"blocks": 4}),
    "srds_ddim_plain": ("srds", {"blocks": 4, "pipelined": False}),
    "srds_heun": ("srds", {"blocks": 3, "inner": "edm_heun"}),
    "srds_dpmpp_2m": ("srds", {"blocks": 4, "inner": "dpmpp_2m"}),
    "srds_dpmpp_2m_plain": ("srds", {"blocks": 4, "inner": "dpmpp_2m", "pipelined": False}),
    "srds_ddpm": ("srds", {"blocks": 4, "inner": "ddpm", "tol": 0.0}),
    "paradigms_ddim": ("paradigms", {"window": 5}),
    "paradigms_heun": ("paradigms", {"inner": "edm_heun"}),
    "paradigms_dpmpp_2m": ("paradigms", {"inner": "dpmpp_2m", "window": 4}),
    "paradigms_dpm_solver_2": ("paradigms", {"inner": "dpm_solver_2"}),
    "paradigms_ddpm": ("paradigms", {"inner": "ddpm", "tol": 0.0}),
    "rmm_parallel": ("rmm_parallel", {}),
    "rmm_parallel_corrector": ("rmm_parallel", {"R": 4, "K": 3, "corrector_steps": 2}),
    "pmm": ("pmm", {}),
    "pmm_k4": ("pmm", {"K": 4}),
}
# Cases run with the world's process group object instead of "distributed".
GROUP_CASES = ("paradigms_ddim", "pmm_k4")


def _model() -> GaussianMixture:
    return GaussianMixture.default(dim=4, components=3, seed=1)


def _run(den, name, opts, **kw):
    kw |= dict(steps=STEPS, shape=(N_SAMPLES, 4), seeds=range(10, 10 + N_SAMPLES))
    return sl.sample(den, name, dtype=torch.float64, **kw, **opts)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # This rank's rows: devices= wraps the counter in a DistributedDenoiser.
        counter = CountingDenoiser(_model())
        tensors = {}
        for label, (name, opts) in CASES.items():
            counter.rows = 0
            devices = dist.group.WORLD if label in GROUP_CASES else "distributed"
            res = _run(counter, name, opts, devices=devices)
            tensors[label] = res.x
            tensors[label + ".rows"] = torch.tensor(counter.rows)
            tensors[label + ".rounds"] = torch.tensor(res.rounds)
        save_file(tensors, os.path.join(out, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(out) -> None:
    """Two gloo processes. A spawned child that aborts while it exits ("terminate called
    without an active exception") is a teardown race in the spawn/gloo stack, not a
    sampling result: one retry, then fail."""
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


def test_two_processes_match_one(tmp_path):
    _spawn(tmp_path)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    for label, (name, opts) in CASES.items():
        counter = CountingDenoiser(_model())
        one = _run(counter, name, opts)
        for r, got in enumerate(ranks):
            torch.testing.assert_close(got[label], one.x, rtol=0, atol=1e-12, msg=label)
            # Same schedule (rounds), and this rank evaluated only its share of the rows.
            assert int(got[label + ".rounds"]) == one.rounds, label
            assert int(got[label + ".rows"]) < counter.rows, (label, r)
        assert sum(int(g[label + ".rows"]) for g in ranks) >= counter.rows


def test_cases_cover_every_parallel_sampler():
    """The cases and ``PARALLEL_SAMPLERS`` name every registered sampler whose calls have
    more rows than samples (the rows a process group spreads beyond data parallelism)."""
    widest: dict[str, int] = {}

    class Widest(GaussianMixture):
        def __call__(self, x, sigma):
            widest[name] = max(widest.get(name, 0), x.shape[0])
            return super().__call__(x, sigma)

    g = _model()
    den = Widest(g.weights, g.means, g.stds, g.vp)
    for name in SAMPLERS:
        sl.sample(den, name, steps=4, shape=(2, 4), dtype=torch.float64)
    parallel = {name for name, rows in widest.items() if rows > 2}
    assert parallel == set(PARALLEL_SAMPLERS) == {name for name, _ in CASES.values()}


def test_distributed_denoiser_needs_a_process_group():
    if dist.is_available() and dist.is_initialized():  # pragma: no cover
        pytest.skip("a process group is already initialised")
    with pytest.raises(sl.SamplerError, match="not initialised"):
        DistributedDenoiser(_model())
