"""Rows of one batched network call spread over devices or processes.

* :class:`ShardedDenoiser`: several devices of one process (one worker thread and one CUDA
  stream per device);
* :class:`DistributedDenoiser`: the processes of a ``torch.distributed`` group (one device
  each, e.g. a DDP world launched by Lightning or torchrun). Every process runs the same
  sampler on the same batch (same seeds); each network call computes only its share of
  the rows and ``all_gather`` gives every process the full output, so all host decisions
  (early stops, window slides) agree and the samples equal a one-process run.

The parallel-in-time samplers (SRDS, ParaDiGMS, parallel randomized midpoints) batch many
time points into one call; either wrapper splits those rows, which is how a parallel round
is spread over several accelerators. Each is a :class:`~.core.WrapperBase`: it declares
the :class:`~.core.ModelInfo` of its (first) replica and forwards its ``extra_rows``;
per-sample state reaches each shard through :func:`~.core.take_rows`.

:func:`spread_rows` builds either wrapper for ``sample(..., devices=)``: a list of devices
gets a :class:`ShardedDenoiser` over replicas made by :func:`replicate` (the denoiser
itself on the device its network is on, deep copies with their network moved elsewhere),
``devices="distributed"`` (or a process group) a :class:`DistributedDenoiser`.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .core import (
    Denoiser,
    ModelInfo,
    SamplerError,
    WrapperBase,
    describe,
    extra_rows_of,
    has_row_state,
    take_rows,
)
from .fingerprint import device_of, find_module

#: The registered samplers whose network calls batch several time points (more rows than
#: samples: SRDS, ParaDiGMS, parallel randomized midpoints, Poisson midpoints), the calls
#: that spreading rows over devices shortens (tests/test_parallel_ddp.py checks the list
#: against every registered sampler's widest call).
PARALLEL_SAMPLERS = ("srds", "paradigms", "rmm_parallel", "pmm")


def _rows(cond: Any, lo: int, hi: int, device: torch.device) -> Any:
    """Rows ``lo..hi`` of conditioning aligned with a call's rows (a tensor or a dict)."""
    if isinstance(cond, Tensor):
        return cond[lo:hi].to(device, non_blocking=True)
    return {k: v[lo:hi].to(device, non_blocking=True) for k, v in cond.items()}


class ShardedDenoiser(WrapperBase):
    """Splits the rows of each batched call over several devices of one node.

    Args:
        denoisers_or_factory: one denoiser replica per device (a sequence, in the order of
            ``devices``), or a factory ``f(device) -> denoiser`` called once per device.
        devices: e.g. ``["cuda:0", "cuda:1"]``; ``["cpu", "cpu"]`` works (for tests).

    Rows are split evenly (``tensor_split``), each shard is copied to its device and run
    there; the devices run concurrently (one worker thread and one CUDA stream per
    device) and the outputs are gathered, in order, on the caller's device. Its :attr:`info`
    is the first replica's. A conditional call
    ``D(x, sigma, cond)`` (``sample(..., cond=)``) splits ``cond``'s rows with ``x``'s.
    """

    def __init__(
        self,
        denoisers_or_factory: Sequence[Denoiser] | Callable[[torch.device], Denoiser],
        devices: Sequence[torch.device | str],
    ) -> None:
        if isinstance(devices, (str, torch.device)) or len(devices) == 0:
            raise SamplerError("ShardedDenoiser: devices must be a non-empty list of devices")
        self.devices = [torch.device(d) for d in devices]
        if isinstance(denoisers_or_factory, Sequence):
            replicas = list(denoisers_or_factory)
            if len(replicas) != len(self.devices):
                raise SamplerError(
                    f"ShardedDenoiser: {len(replicas)} replicas for {len(self.devices)} devices"
                )
        elif callable(denoisers_or_factory):
            replicas = [denoisers_or_factory(d) for d in self.devices]
        else:
            raise SamplerError("ShardedDenoiser: pass a list of replicas or a factory(device)")
        if not all(callable(r) for r in replicas):
            raise SamplerError("ShardedDenoiser: every replica must be a callable denoiser")
        self.replicas = replicas
        self._streams = [
            torch.cuda.Stream(device=d) if d.type == "cuda" else None for d in self.devices
        ]
        self._pool = (
            ThreadPoolExecutor(max_workers=len(self.devices)) if len(replicas) > 1 else None
        )
        self._lock = threading.Lock()

    @property
    def info(self) -> ModelInfo:
        return describe(self.replicas[0])

    @property
    def extra_rows(self) -> Any:  # type: ignore[override]
        return extra_rows_of(self.replicas[0])

    def take(self, rows: Tensor) -> ShardedDenoiser:
        """The replicas for the rows ``rows`` of the batch (see :func:`core.take_rows`)."""
        view = copy.copy(self)
        pairs = zip(self.replicas, self.devices, strict=True)
        view.replicas = [take_rows(r, rows.to(d, non_blocking=True)) for r, d in pairs]
        return view

    def _run_shard(
        self, k: int, x: Tensor, sigma: Tensor, start: int = 0, cond: tuple = ()
    ) -> Tensor:
        device, stream = self.devices[k], self._streams[k]
        replica = self.replicas[k]
        if has_row_state(replica):
            # This shard is rows start..start+len of the call (per-sample conditioning).
            replica = take_rows(replica, torch.arange(start, start + len(x), device=device))
        # Conditioning rows of this shard (a conditional call D(x, sigma, cond)).
        cond = tuple(_rows(c, start, start + len(x), device) for c in cond)
        if stream is None:
            return replica(x.to(device), sigma.to(device), *cond)
        with torch.cuda.device(device), torch.cuda.stream(stream):
            out = replica(x.to(device, non_blocking=True), sigma.to(device), *cond)
        stream.synchronize()
        return out

    def __call__(self, x: Tensor, sigma: Tensor, *cond: Any) -> Tensor:
        n = len(self.replicas)
        if x.is_cuda:
            # The shards' streams must see the caller's finished inputs.
            torch.cuda.current_stream(x.device).synchronize()
        if n == 1 or x.shape[0] < 2:
            outs = [self._run_shard(0, x, sigma, 0, cond)]
        else:
            xs, ss = x.tensor_split(n), sigma.tensor_split(n)
            starts = [sum(len(xc) for xc in xs[:k]) for k in range(n)]
            jobs = [(k, xc, sc) for k, (xc, sc) in enumerate(zip(xs, ss, strict=True)) if len(xc)]
            with self._lock:
                futures = [
                    self._pool.submit(self._run_shard, k, xc, sc, starts[k], cond)
                    for k, xc, sc in jobs
                ]
                outs = [f.result() for f in futures]
        for o in outs:
            if o.is_cuda:
                # Made on a side stream, read on the caller's: tell the caching allocator.
                o.record_stream(torch.cuda.current_stream(o.device))
        return torch.cat([o.to(x.device) for o in outs])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class DistributedDenoiser(WrapperBase):
    """Splits the rows of each call over the ranks of a ``torch.distributed`` process group.

    Args:
        denoiser: this process's replica (on this process's device).
        group: the process group (default: the world). ``torch.distributed`` must be
            initialised; every rank must make the same calls with the same row counts
            (true when every rank runs the same sampler on the same seeds).

    Rank ``r`` evaluates rows ``[r m, (r+1) m)`` with ``m = ceil(rows / world)``; the shards
    are padded to ``m`` rows, gathered with ``all_gather`` and the padding dropped.
    Its :attr:`info` is ``denoiser``'s. A conditional call
    ``D(x, sigma, cond)`` gives each rank its rows of ``cond``.
    """

    def __init__(self, denoiser: Denoiser, group: Any = None) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise SamplerError(
                "DistributedDenoiser: torch.distributed is not initialised (init_process_group)"
            )
        if not callable(denoiser):
            raise SamplerError("DistributedDenoiser: the replica must be a callable denoiser")
        self.denoiser, self.group = denoiser, group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    @property
    def info(self) -> ModelInfo:
        return describe(self.denoiser)

    @property
    def extra_rows(self) -> Any:  # type: ignore[override]
        return extra_rows_of(self.denoiser)

    def take(self, rows: Tensor) -> DistributedDenoiser:
        """This rank's replica for the rows ``rows`` of the batch (see :func:`core.take_rows`)."""
        view = copy.copy(self)
        view.denoiser = take_rows(self.denoiser, rows)
        return view

    def __call__(self, x: Tensor, sigma: Tensor, *cond: Any) -> Tensor:
        import torch.distributed as dist

        rows = x.shape[0]
        if self.world == 1:
            return self.denoiser(x, sigma, *cond)
        m = math.ceil(rows / self.world)
        lo, hi = min(rows, self.rank * m), min(rows, (self.rank + 1) * m)
        # This rank's share of the rows (possibly none), padded to m rows.
        out = torch.zeros((m, *x.shape[1:]), device=x.device, dtype=x.dtype)
        if hi > lo:
            replica = self.denoiser
            if has_row_state(replica):
                # This rank's shard is rows lo..hi of the call (per-sample conditioning).
                replica = take_rows(replica, torch.arange(lo, hi, device=x.device))
            shard = tuple(_rows(c, lo, hi, x.device) for c in cond)
            out[: hi - lo] = replica(x[lo:hi], sigma[lo:hi], *shard)
        # Every rank receives every shard, in rank order.
        parts = [torch.empty_like(out) for _ in range(self.world)]
        dist.all_gather(parts, out, group=self.group)
        return torch.cat(parts)[:rows]


@dataclass(frozen=True)
class ProcessGroupRows:
    """``sample(..., devices="distributed")``: rows over a process group (None: the world)."""

    group: Any = None


def _network(denoiser: Any) -> torch.nn.Module | None:
    """The module that holds the denoiser's weights: the declared one, else the one found
    behind the wrapper (:func:`~.fingerprint.find_module`)."""
    net = describe(denoiser).network
    return net if isinstance(net, torch.nn.Module) else find_module(denoiser)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda":
        current = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return (a.index if a.index is not None else current) == (
            b.index if b.index is not None else current
        )
    return a.index == b.index or None in (a.index, b.index)


def replicate(denoiser: Denoiser, devices: Sequence[torch.device]) -> list[Denoiser]:
    """One replica of ``denoiser`` per device, in order.

    The first device the denoiser's network is on (the CPU for an analytic model) runs the
    denoiser itself; every other device gets a ``copy.deepcopy`` whose network (the
    declared :attr:`ModelInfo.network`, else the module found behind the wrapper) is moved
    there with ``.to(device)``. A model without a network (an analytic model) computes on
    its input's device. Raises :class:`SamplerError` (one line) when the denoiser cannot be
    deep-copied, or when its copy does not copy the network (a network reached through a
    function's closure): then build :class:`ShardedDenoiser` from your own replicas or a
    factory and pass it as the denoiser.
    """
    net = _network(denoiser)
    home = device_of(denoiser)
    out: list[Denoiser] = []
    for d in devices:
        if not any(r is denoiser for r in out) and _same_device(d, home):
            out.append(denoiser)
            continue
        hint = "build ShardedDenoiser(replicas or factory, devices) and pass it as the denoiser"
        try:
            rep = copy.deepcopy(denoiser)
        except Exception as e:
            why = (str(e).splitlines() or [""])[0][:80]
            raise SamplerError(
                f"devices: the denoiser cannot be copied to {d} ({type(e).__name__}: {why}); {hint}"
            ) from None
        if net is not None:
            moved = _network(rep)
            if moved is None or moved is net or find_module(rep) is net:
                raise SamplerError(
                    f"devices: copying the denoiser does not copy its network (reached "
                    f"through a function?), so no replica can run on {d}; {hint}"
                )
            moved.to(d)
        out.append(rep)
    return out


def spread_rows(
    denoiser: Denoiser, devices: Sequence[torch.device] | ProcessGroupRows
) -> tuple[Denoiser, Callable[[], None]]:
    """``denoiser`` with each call's rows spread over ``devices`` (checked devices, or
    :class:`ProcessGroupRows`), and the function that releases what was made for it."""
    if isinstance(devices, ProcessGroupRows):
        return DistributedDenoiser(denoiser, devices.group), lambda: None
    sharded = ShardedDenoiser(replicate(denoiser, devices), devices)
    return sharded, sharded.close
