"""Shared machinery of the parallel-in-time samplers (SRDS, ParaDiGMS).

* :func:`resolve_inner` turns an inner solver's registry name into a callable that runs it
  on a per-row grid (``[n+1, R]``: each row its own time points), with pre-drawn noise;
* :func:`predraw_noise` draws every step's noise up front, in the serial sampler's order,
  so that serial and parallel runs of a stochastic solver agree;
* :class:`ShardedDenoiser` splits a batched call's rows over the GPUs of one node;
* :func:`inner_sampler_spec` builds registry entries whose determinism follows the inner
  solver.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .core import Denoiser, SamplerError, take_rows
from .noise import NoiseSource, ReplayNoise, randn_like

# Inner solvers whose one-step restarts on a per-row grid reproduce their serial run
# (single-step solvers), plus multistep ones usable as SRDS fine solvers.
SINGLE_STEP_INNER = (
    "euler",
    "ddim",
    "ddpm",
    "edm_heun",
    "dpm_solver_1",
    "dpm_solver_2",
    "dpm_solver_3",
)
MULTISTEP_INNER = ("dpmpp_2m",)
# Options whose effect depends on the length of the grid a solver is called with: a block
# or a single step would not reproduce the serial run.
_GRID_DEPENDENT = {"edm_heun": ("s_churn",)}


@dataclass(frozen=True)
class Inner:
    """An inner solver prepared for parallel use.

    ``run(den, x, grid, draws)`` runs it on ``x`` with a per-row ``grid`` ``[n+1, R]``;
    ``draws`` are the ``n`` pre-drawn standard-normal tensors ``[R, ...]`` of its steps
    (ignored when the solver is deterministic).
    """

    name: str
    fn: Callable[..., Tensor]
    options: Mapping[str, Any]
    stochastic: bool
    multistep: bool

    def run(self, den: Denoiser, x: Tensor, grid: Tensor, draws: Sequence[Tensor] = ()) -> Tensor:
        noise = ReplayNoise(draws) if self.stochastic else None
        return self.fn(den, x, grid, noise=noise, **self.options)


def resolve_inner(
    sampler: str,
    inner: str,
    inner_options: Mapping[str, Any] | None,
    *,
    allow_multistep: bool,
) -> Inner:
    """Look up ``inner`` in the registry and check it can serve ``sampler``."""
    from .registry import SAMPLERS

    valid = SINGLE_STEP_INNER + (MULTISTEP_INNER if allow_multistep else ())
    if not isinstance(inner, str) or inner not in SAMPLERS or inner not in valid:
        spec = SAMPLERS.get(inner) if isinstance(inner, str) else None
        if spec is not None and spec.multistep and not allow_multistep:
            raise SamplerError(
                f"{sampler}: inner solver '{inner}' is multistep (its steps use history and "
                f"cannot be restarted per step); valid: {', '.join(valid)}"
            )
        raise SamplerError(
            f"{sampler}: unknown or unsupported inner solver {inner!r}; valid: {', '.join(valid)}"
        )
    spec = SAMPLERS[inner]
    if not isinstance(inner_options, (Mapping, type(None))):
        raise SamplerError(f"{sampler}: inner_options must be a dict, got {inner_options!r}")
    opts = dict(inner_options or {})
    spec.check_options(opts)
    for key in _GRID_DEPENDENT.get(inner, ()):
        if float({**spec.defaults, **opts}.get(key, 0) or 0) > 0:
            raise SamplerError(
                f"{sampler}: inner '{inner}' with {key} > 0 is stochastic in a way that depends "
                f"on the grid length; a deterministic inner solver is required here "
                f"(set {key}=0, or use ddpm / ddim with eta > 0)"
            )
    return Inner(
        name=inner,
        fn=spec.fn,
        options={**spec.defaults, **opts},
        stochastic=not spec.is_deterministic(opts),
        multistep=spec.multistep,
    )


def inner_is_deterministic(inner: str, inner_options: Mapping[str, Any] | None = None) -> bool:
    from .registry import get_sampler

    return get_sampler(inner).is_deterministic(inner_options or {})


def predraw_noise(noise: NoiseSource | None, x: Tensor, steps: int) -> Tensor:
    """``[steps, B, ...]``: one ``randn_like(noise, x)`` per step, in step order.

    This is exactly the sequence of draws the serial single-step samplers make (the
    foundation's convention), so a parallel run replays the serial run's noise.
    """
    return torch.stack([randn_like(noise, x) for _ in range(steps)])


def per_row_grid(sigmas: Tensor, batch: int) -> Tensor:
    """The host float64 grid as ``[N+1, batch]`` (a shared ``[N+1]`` grid is expanded)."""
    from .core import check_grid

    s = check_grid(sigmas)
    if s.ndim == 1:
        return s[:, None].expand(-1, batch).contiguous()
    if s.shape[1] != batch:
        raise SamplerError(f"per-row sigmas have {s.shape[1]} columns but x has {batch} rows")
    return s


def check_tol(sampler: str, tol: float) -> float:
    try:
        tol = float(tol)
    except (TypeError, ValueError):
        raise SamplerError(f"{sampler}: tol must be a number >= 0, got {tol!r}") from None
    if not tol >= 0 or tol == float("inf"):
        raise SamplerError(f"{sampler}: tol must be a finite number >= 0, got {tol!r}")
    return tol


def check_positive_int(sampler: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SamplerError(f"{sampler}: {key} must be an integer >= 1, got {value!r}")
    return value


class ShardedDenoiser:
    """Splits the rows of each batched call over several devices of one node.

    Args:
        denoisers_or_factory: one denoiser replica per device (a sequence, in the order of
            ``devices``), or a factory ``f(device) -> denoiser`` called once per device.
        devices: e.g. ``["cuda:0", "cuda:1"]``; ``["cpu", "cpu"]`` works (for tests).

    Rows are split evenly (``tensor_split``), each shard is copied to its device and run
    there; the devices run concurrently (one worker thread and one CUDA stream per
    device) and the outputs are gathered, in order, on the caller's device. Attributes
    (``sigma_min``, ``vp``, ...) are those of the first replica.
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

    def __getattr__(self, name: str) -> Any:
        if name in ("replicas", "devices", "_streams", "_pool", "_lock"):
            raise AttributeError(name)
        return getattr(self.replicas[0], name)

    def take(self, rows: Tensor) -> ShardedDenoiser:
        """The replicas for the rows ``rows`` of the batch (see :func:`core.take_rows`)."""
        view = copy.copy(self)
        pairs = zip(self.replicas, self.devices, strict=True)
        view.replicas = [take_rows(r, rows.to(d, non_blocking=True)) for r, d in pairs]
        return view

    def _run_shard(self, k: int, x: Tensor, sigma: Tensor, start: int = 0) -> Tensor:
        device, stream = self.devices[k], self._streams[k]
        replica = self.replicas[k]
        if getattr(replica, "take", None) is not None:
            # This shard is rows start..start+len of the call (per-sample conditioning).
            replica = take_rows(replica, torch.arange(start, start + len(x), device=device))
        if stream is None:
            return replica(x.to(device), sigma.to(device))
        with torch.cuda.device(device), torch.cuda.stream(stream):
            out = replica(x.to(device, non_blocking=True), sigma.to(device))
        stream.synchronize()
        return out

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        n = len(self.replicas)
        if x.is_cuda:
            # The shards' streams must see the caller's finished inputs.
            torch.cuda.current_stream(x.device).synchronize()
        if n == 1 or x.shape[0] < 2:
            outs = [self._run_shard(0, x, sigma)]
        else:
            xs, ss = x.tensor_split(n), sigma.tensor_split(n)
            starts = [sum(len(xc) for xc in xs[:k]) for k in range(n)]
            jobs = [(k, xc, sc) for k, (xc, sc) in enumerate(zip(xs, ss, strict=True)) if len(xc)]
            with self._lock:
                futures = [
                    self._pool.submit(self._run_shard, k, xc, sc, starts[k]) for k, xc, sc in jobs
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


_SPEC_CLASS: dict[type, type] = {}


def inner_sampler_spec(base: type, *args: Any, **kwargs: Any) -> Any:
    """A registry entry (subclass of ``base`` = ``SamplerSpec``) whose
    :meth:`is_deterministic` follows its inner solver: deterministic iff the inner solver
    (option ``inner``, with ``inner_options``) is."""
    cls = _SPEC_CLASS.get(base)
    if cls is None:

        class InnerSamplerSpec(base):  # type: ignore[misc, valid-type]
            def is_deterministic(self, options: Mapping[str, Any] | None = None) -> bool:
                opts = {**self.defaults, **(options or {})}
                return inner_is_deterministic(
                    opts.get("inner", "ddim"), opts.get("inner_options") or {}
                )

        cls = _SPEC_CLASS[base] = InnerSamplerSpec
    return cls(*args, **kwargs)
