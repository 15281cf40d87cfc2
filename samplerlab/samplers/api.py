"""``sample()``: build the grid, draw per-sample noise, run a registered sampler, count.

What the model declares (noise range, VP table, prior, sample shape) is read once per call
through :func:`~.core.describe` (the denoiser contract, :class:`~.core.ModelInfo`).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .conditioning import Cond, condition
from .core import Denoiser, SamplerError, append_dims, check_grid, describe
from .denoisers import CountingDenoiser, FiniteCheckDenoiser, NonFiniteError
from .noise import PerSampleNoise
from .registry import SamplerSpec, get_sampler, resolve
from .schedules import get_sigmas
from .sharding import ProcessGroupRows, spread_rows


@dataclass
class SampleResult:
    """Samples and what they cost."""

    x: Tensor  # samples [n, ...] in data space
    nfe: float  # mean network evaluations per sample (realised)
    rounds: int  # sequential network rounds (latency)
    seconds: float
    sigmas: Tensor  # the grid that was used (float64, CPU)
    name: str = ""
    steps: int = 0
    options: dict[str, Any] = field(default_factory=dict)


def model_sigma_range(denoiser: Any) -> tuple[float, float]:
    info = describe(denoiser)
    return info.sigma_min, info.sigma_max


def build_sigmas(
    denoiser: Any,
    spec: SamplerSpec,
    grid_steps: int,
    schedule: str | None = None,
    schedule_options: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Tensor:
    """The sigma grid of ``spec`` for this denoiser: ``schedule`` or the default schedule of
    :meth:`SamplerSpec.grid_owner` (the sampler's own; SRDS / ParaDiGMS: their inner solver's
    with these ``options``)."""
    spec = spec.grid_owner(options)
    vp = describe(denoiser).vp
    name = schedule or spec.schedule_for(vp is not None)
    sigma_min, sigma_max = model_sigma_range(denoiser)
    opts = dict(schedule_options or {})
    if schedule is None:
        opts = {**spec.schedule_options_for(vp is not None), **opts}
    sigma_min = opts.pop("sigma_min", sigma_min)  # values checked by get_sigmas
    sigma_max = opts.pop("sigma_max", sigma_max)
    return get_sigmas(name, grid_steps, sigma_min=sigma_min, sigma_max=sigma_max, vp=vp, **opts)


# Largest grid a sampler call may plan: far beyond any sampler's useful range (a DDPM table
# has 1000 steps), small enough that the grid and the loop are refused before any work.
MAX_GRID_STEPS = 100_000
# Seeds are 63-bit non-negative integers (what every generator accepts without wrapping).
MAX_SEED = 2**63 - 1


def _check_shape(denoiser: Any, shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise SamplerError(
            f"shape must be a sequence of integers (n, *dims), got {shape!r}"
        ) from None
    if len(shape) < 2 or shape[0] < 1 or any(s < 1 for s in shape):
        raise SamplerError(f"shape must be (n, *dims) with positive sizes, got {shape}")
    want = describe(denoiser).data_shape
    if want is not None and tuple(shape[1:]) != tuple(want):
        raise SamplerError(
            f"shape {shape} does not match the model: samples must be "
            f"(n, {', '.join(map(str, want))})"
        )
    return shape


def _check_seeds(seeds: Iterable[int] | None, n: int) -> list[int]:
    """``seeds`` as a list of ``n`` integers in ``[0, 2**63 - 1]`` (default ``range(n)``)."""
    if seeds is None:
        return list(range(n))
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise SamplerError(f"seeds must be a sequence of {n} integers, got {seeds!r}")
    out = []
    for s in seeds:
        try:
            v = operator.index(s)
        except TypeError:
            raise SamplerError(f"seeds must be integers, got {s!r}") from None
        if not 0 <= v <= MAX_SEED:
            raise SamplerError(f"seed {v} is out of range: seeds must be in [0, 2**63 - 1]")
        out.append(v)
    if len(out) != n:
        raise SamplerError(f"got {len(out)} seeds for {n} samples")
    return out


def check_device(device: torch.device | str, key: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine (one line if not)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SamplerError(f"{key} {device!r} is not a device ({first[:80]})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SamplerError(f"{key} {str(dev)!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SamplerError(
                f"{key} {str(dev)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SamplerError(f"{key} {str(dev)!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        accel = getattr(torch, dev.type, None)
        available = getattr(accel, "is_available", None)
        if not callable(available) or not available():
            raise SamplerError(f"{key} {str(dev)!r} is not available on this machine")
    return dev


def check_devices(devices: Any) -> list[torch.device] | ProcessGroupRows:
    """``devices=`` of :func:`sample`: a list of devices, ``n`` (the first ``n`` CUDA
    devices), ``"distributed"`` or a ``torch.distributed`` process group (one line naming
    the key if not)."""
    import torch.distributed as dist

    group_type = getattr(dist, "ProcessGroup", None) if dist.is_available() else None
    if isinstance(devices, str) and devices != "distributed":
        devices = [devices]  # one device, e.g. "cuda:1"
    if devices == "distributed" or (group_type is not None and isinstance(devices, group_type)):
        if not (dist.is_available() and dist.is_initialized()):
            raise SamplerError(
                "devices='distributed' needs torch.distributed initialised "
                "(torch.distributed.init_process_group, or a DDP world)"
            )
        return ProcessGroupRows(None if isinstance(devices, str) else devices)
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices < 1:
            raise SamplerError(f"devices={devices}: need at least one device")
        if not torch.cuda.is_available():
            raise SamplerError(f"devices={devices}: CUDA is not available on this machine")
        if devices > torch.cuda.device_count():
            raise SamplerError(
                f"devices={devices}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return [torch.device("cuda", i) for i in range(devices)]
    if isinstance(devices, (torch.device, bytes)) or not isinstance(devices, Sequence):
        raise SamplerError(
            "devices must be a list of devices (e.g. ['cuda:0', 'cuda:1']), a number of "
            f"CUDA devices or 'distributed', got {devices!r}"
        )
    if len(devices) == 0:
        raise SamplerError("devices must not be empty")
    return [check_device(d, "devices") for d in devices]


def sample(
    denoiser: Denoiser,
    name: str,
    *,
    steps: int,
    shape: Sequence[int],
    seeds: Iterable[int] | None = None,
    noise: Tensor | None = None,
    schedule: str | None = None,
    schedule_options: Mapping[str, Any] | None = None,
    sigmas: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    noise_device: torch.device | str | None = None,
    noise_kind: str = "splitmix",
    calibration: Any = None,
    cond: Cond | None = None,
    guidance: float | Tensor | None = None,
    uncond: Cond | None = None,
    guidance_interval: tuple[float, float] | None = None,
    devices: Sequence[torch.device | str] | int | str | Any = None,
    **options: Any,
) -> SampleResult:
    """Draw ``shape[0]`` samples with the registered sampler ``name`` (or an alias such as
    ``"DPM++ 2M Karras"``: see ``registry.ALIASES``).

    Sample ``k`` depends only on ``seeds[k]`` (default ``range(n)``). ``noise`` is optional
    standard-normal initial noise ``[n, ...]`` used instead of the seeded draw (later
    random draws of stochastic samplers still come from the seeds). ``steps`` means what
    the sampler's registry entry says (``samplerlab samplers``); ``sigmas`` overrides the
    schedule. ``calibration`` (a ``samplerlab.calibrate.Calibration``; ``samplerlab.sample``
    also takes its file) runs on the grid calibrated for this model, sampler and ``steps``
    instead. Raises
    :class:`NonFiniteError` naming the round if a sample is NaN/Inf.
    ``noise_kind`` picks the :class:`PerSampleNoise` generator (``"generator"``: one
    ``torch.Generator`` per sample, the stream of earlier versions and of EDM's seeds);
    ``noise_device`` where it runs (default: the sampling device; the CPU for generators).
    ``cond`` is per-sample conditioning for a conditional denoiser ``D(x, sigma, cond)``: a
    tensor or a dict of tensors with ``n`` rows; ``guidance`` (a number or one per sample)
    with ``uncond`` (the "no condition" value, one row or ``n``) applies classifier-free
    guidance, only for sigma in ``guidance_interval = (lo, hi]`` if given (see
    :mod:`samplerlab.samplers.conditioning`); ``nfe`` counts both guided rows.

    ``devices`` spreads the rows of each network call (a parallel sampler's whole round)
    over several devices; the samples are those of one device. A list (``["cuda:0",
    "cuda:1"]``; ``["cpu", "cpu"]`` works) or ``n`` (the first ``n`` CUDA devices) runs a
    :class:`~.sharding.ShardedDenoiser` over replicas of ``denoiser``
    (:func:`~.sharding.replicate`: the denoiser itself on its network's device, deep copies
    made for this call elsewhere; to keep replicas across calls, pass your own
    ``ShardedDenoiser`` as the denoiser); ``device`` defaults to the first of them.
    ``"distributed"`` (or a ``torch.distributed`` process group) runs a
    :class:`~.sharding.DistributedDenoiser`: every process calls ``sample`` with the same
    arguments and each network call computes its share of the rows on this process.
    """
    if not callable(denoiser):
        raise SamplerError(f"the denoiser must be a callable D(x, sigma), got {type(denoiser)}")
    if schedule_options is not None and not isinstance(schedule_options, Mapping):
        raise SamplerError(
            f"schedule_options must be a mapping (e.g. {{'rho': 7}}), got {schedule_options!r}"
        )
    # A library's name ("DPM++ 2M Karras", "UniPCMultistepScheduler") -> sampler, options, grid.
    name, options, schedule, schedule_options = resolve(name, options, schedule, schedule_options)
    spec = get_sampler(name)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SamplerError(f"steps must be an integer >= 1, got {steps!r}")
    if steps > MAX_GRID_STEPS:
        raise SamplerError(f"steps={steps} is more than samplerlab plans ({MAX_GRID_STEPS})")
    shape = _check_shape(denoiser, shape)
    n = shape[0]
    # Per-sample conditioning (and guidance) bound to the samples' rows: a D(x, sigma).
    model = condition(
        denoiser, n, cond=cond, guidance=guidance, uncond=uncond,
        guidance_interval=guidance_interval,
    )  # fmt: skip
    spec.check_options(options)
    seeds = _check_seeds(seeds, n)
    spread = None if devices is None else check_devices(devices)
    if noise is not None and (not isinstance(noise, Tensor) or tuple(noise.shape) != shape):
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise SamplerError(f"noise must be a tensor of shape {shape}, got {got}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise SamplerError(
            f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}"
        )
    if device is None and isinstance(spread, list):
        device = noise.device if noise is not None else spread[0]
    if device is None:
        device = noise.device if noise is not None else "cpu"
    device = check_device(device)
    if noise_device is not None:
        noise_device = check_device(noise_device, "noise_device")

    grid_steps, planned = spec.plan(steps, options)
    if grid_steps > MAX_GRID_STEPS:
        raise SamplerError(
            f"sampler '{name}' plans {grid_steps} grid steps for steps={steps}, more than "
            f"samplerlab plans ({MAX_GRID_STEPS})"
        )
    if calibration is not None:
        # Calibrated grid (samplerlab.calibrate): checked against sampler, steps and model.
        if sigmas is not None or schedule is not None:
            raise SamplerError("pass calibration= or sigmas=/schedule=, not both")
        # Any object with grid_for(name, steps, options, denoiser) -> [N+1] grid (a
        # samplerlab.calibrate.Calibration); files are loaded by samplerlab.sample.
        grid_for = getattr(calibration, "grid_for", None)
        if not callable(grid_for):
            raise SamplerError(
                "calibration must be a samplerlab.calibrate.Calibration (load a file with "
                "samplerlab.calibrate.load, or pass its path to samplerlab.sample), got "
                f"{type(calibration).__name__}"
            )
        sigmas = grid_for(name, steps, options, denoiser)
    if sigmas is None:
        sigmas = build_sigmas(denoiser, spec, grid_steps, schedule, schedule_options, options)
    else:
        sigmas = check_grid(sigmas)
        if sigmas.shape[0] - 1 != grid_steps:
            raise SamplerError(
                f"sigmas has {sigmas.shape[0] - 1} steps but steps={steps} plans {grid_steps} "
                f"grid steps for sampler '{name}'"
            )
    run_options = {**planned, **options}

    def run(den: Any) -> Tensor:
        source = PerSampleNoise(seeds, noise_device, kind=noise_kind)
        if noise is None:
            z = source.randn(shape, device=device, dtype=dtype)
        else:
            z = noise.to(device, dtype)
        # x = z sqrt(sigma_0^2 + prior_std^2), with each row's own sigma_0 on a per-row grid.
        prior_std = describe(denoiser).prior_std
        scale = (sigmas[0] ** 2 + prior_std**2).sqrt().to(device, dtype)
        x = z * append_dims(scale, z.ndim)
        return spec(den, x, sigmas, noise=source, **run_options)

    release = None
    if spread is not None:
        # Each call's rows over the devices / processes, conditioning bound on top.
        spread_den, release = spread_rows(denoiser, spread)
        model = condition(
            spread_den, n, cond=cond, guidance=guidance, uncond=uncond,
            guidance_interval=guidance_interval,
        )  # fmt: skip
    try:
        counter = CountingDenoiser(model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        x = run(counter)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if not bool(torch.isfinite(x).all()):
            # Re-run with a checking wrapper (same seeds, same result) to name the round.
            run(FiniteCheckDenoiser(model, label=f"sampler '{name}'"))
            raise NonFiniteError(f"sampler '{name}': the final samples are not finite")
    finally:
        if release is not None:
            release()
    return SampleResult(
        x=x,
        nfe=counter.nfe(n),
        rounds=counter.rounds,
        seconds=seconds,
        sigmas=torch.as_tensor(sigmas).detach().cpu(),
        name=name,
        steps=steps,
        options=dict(options),
    )
