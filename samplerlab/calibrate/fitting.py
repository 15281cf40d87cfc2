"""The calibration fit without Lightning: checks, the fit's rounds and the result's metadata.

:class:`GridFit` is one shard's part of the Levenberg-Marquardt grid fit described in
:mod:`samplerlab.calibrate.module` (LD3's end-to-end loss, Tong et al., ICLR 2025): per
round it fills per-sample rows for the fitting samples it holds, and ``finish_round`` sums
them (after an optional all-reduce over shards) in sample order, so the result does not
depend on the batch size or the number of shards. :func:`fit_calibration` runs it in this
process (on an existing DDP world through its ``all_reduce``); the Lightning fit stage
(``samplerlab.calibrate.fit``) drives the same object from ``Trainer.fit``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fitstage import check_int, fit_seeds, library_version, model_fingerprint, sample_shape
from ..fitstage.conditioning import batch_model, bind_conditioning, fit_metadata
from ..samplers.api import build_sigmas, model_sigma_range
from ..samplers.core import SamplerError, describe
from ..samplers.dpm_solver import sample_dpm_solver
from ..samplers.fingerprint import device_of
from ..samplers.iia import shard_batches
from ..samplers.noise import PerSampleNoise
from ..samplers.registry import SamplerSpec, get_sampler
from ..samplers.schedules import logsnr
from .grid import LIMIT, Calibration, GridParam, base_sampler, candidate_grids, working_dtype

MAX_STEP = 3.0  # largest change of one theta entry per Levenberg-Marquardt step


def calibration_seeds(seed: int, indices: Sequence[int]) -> list[int]:
    """The fitting noises of IIA (:func:`samplerlab.fitstage.fit_seeds`): disjoint from the
    default sampling seeds, and the *same* noises when a grid and IIA coefficients on it are
    fitted with the same ``seed`` and ``num_samples`` (the pair has seen only those)."""
    return fit_seeds(seed, indices)


class GridFit:
    """One shard's part of the grid fit of sampler ``sampler_name`` (see the module
    docstring of :mod:`samplerlab.calibrate.module`). Round 0 scores the starting grids
    ``candidates``; round ``e >= 1`` evaluates Levenberg-Marquardt trial ``e``. Per round:
    :meth:`start_round`, :meth:`add_batch` for each batch of this shard's sample indices,
    :meth:`finish_round` with the all-reduce that sums the rows over shards."""

    def __init__(
        self,
        denoiser: Any,
        sampler_name: str,
        run_options: dict[str, Any],
        param: GridParam,
        candidates: Tensor,
        *,
        shape: Sequence[int],
        num_samples: int,
        iterations: int,
        seed: int,
        dtype: torch.dtype,
        teacher_steps: int,
        teacher_sigma_end: float,
        fd_eps: float | None = None,
    ) -> None:
        self.denoiser = denoiser
        # The name, not the spec: specs hold lambdas, and spawned DDP processes pickle this.
        self.sampler_name, self.run_options, self.param = sampler_name, dict(run_options), param
        self.shape = tuple(int(s) for s in shape)
        self.num_samples, self.iterations, self.seed = num_samples, iterations, seed
        self.fit_dtype, self.teacher_steps = dtype, teacher_steps
        self.teacher_sigma_end = teacher_sigma_end
        # Central differences: the step that balances truncation and rounding, eps^(1/3) of
        # the working precision (a float32 network's, even when the fit runs in float64).
        self.fd_eps = fd_eps or torch.finfo(working_dtype(denoiser, dtype)).eps ** (1 / 3)
        self.candidates = candidates
        P = param.size
        self.theta = torch.zeros(P, dtype=torch.float64)
        self.candidate_loss = torch.zeros(len(candidates), dtype=torch.float64)
        self.trial_loss = torch.full((iterations,), math.nan, dtype=torch.float64)
        self.accepted = torch.zeros(iterations, dtype=torch.bool)
        self.best_loss = torch.tensor(math.inf, dtype=torch.float64)
        self._reference: dict[int, Tensor] = {}
        self._trial = torch.zeros(P, dtype=torch.float64)
        self._G = torch.zeros(P, P, dtype=torch.float64)
        self._g = torch.zeros(P, dtype=torch.float64)
        self._mu = 1e-2
        self._rows = torch.zeros(0)

    @property
    def spec(self) -> SamplerSpec:
        return get_sampler(self.sampler_name)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def start_round(self, e: int) -> None:
        if e == 0:  # private copies: spawned DDP ranks get these tensors in shared memory
            for key in ("theta", "candidate_loss", "trial_loss", "accepted", "best_loss"):
                setattr(self, key, getattr(self, key).clone())
        P = self.param.size
        width = len(self.candidates) if e == 0 else P * P + P + 1
        self._rows = torch.zeros(self.num_samples, width, dtype=torch.float64)

    def initial(self, idx: list[int], device: torch.device | str) -> Tensor:
        z = PerSampleNoise(calibration_seeds(self.seed, idx)).randn(
            (len(idx), *self.shape), device=device, dtype=self.fit_dtype
        )
        prior = describe(self.denoiser).prior_std
        return z * math.sqrt(self.param.sigma_0**2 + prior**2)

    def teacher(self, x: Tensor, idx: Tensor) -> Tensor:
        grid = logsnr(self.teacher_steps + 1, self.teacher_sigma_end, self.param.sigma_0)
        den = batch_model(self.denoiser, idx, x.device)
        return sample_dpm_solver(den, x, grid, orders=[3] * self.teacher_steps + [1])

    def run(self, x: Tensor, grids: Tensor, idx: Tensor) -> Tensor:
        """Endpoints ``[B, C, d]`` of the sampler from ``x [B, ...]`` (fitting samples
        ``idx``: their condition rows, with conditioning) on ``grids [N+1, C]``."""
        B, C = x.shape[0], grids.shape[1]
        rows = x.repeat_interleave(C, dim=0)  # row b * C + c: sample b on grid c
        try:
            # One batched call with one grid per row.
            per_row = grids.repeat(1, B)
            den = batch_model(self.denoiser, idx.repeat_interleave(C), x.device)
            out = self.spec(den, rows, per_row, noise=None, **self.run_options)
        except SamplerError:
            # Samplers that take one shared grid: one call per grid.
            den = batch_model(self.denoiser, idx, x.device)
            parts = [
                self.spec(den, x, grids[:, c], noise=None, **self.run_options) for c in range(C)
            ]
            out = torch.stack(parts, dim=1)
        return out.reshape(B, C, -1).to(torch.float64)

    @torch.no_grad()
    def add_batch(self, e: int, batch: Tensor, device: torch.device | str) -> None:
        """Round ``e``'s rows of the fitting samples ``batch`` (a long tensor of indices)."""
        idx = [int(k) for k in batch.tolist()]
        if not idx:
            return
        x = self.initial(idx, device)
        if e == 0:
            ref = self.teacher(x, batch)
            for j, k in enumerate(idx):
                self._reference[k] = ref[j].reshape(-1).to(torch.float64)
            out = self.run(x, self.candidates.T.contiguous(), batch)
            rows = (out - ref.reshape(len(idx), 1, -1).double()).pow(2).sum(-1)
        else:
            ref = torch.stack([self._reference[k] for k in idx])
            P, eps = self.param.size, self.fd_eps
            eye = torch.eye(P, dtype=torch.float64)
            trial = self._trial
            thetas = torch.cat([trial[None], trial + eps * eye, trial - eps * eye])
            out = self.run(x, self.param.sigmas(thetas.T), batch)
            # Residual at the trial grid and its Jacobian by central differences.
            r = out[:, 0] - ref
            J = (out[:, 1 : P + 1] - out[:, P + 1 :]) / (2 * eps)  # [B, P, d]
            G = J @ J.transpose(1, 2)
            g = (J @ r[..., None])[..., 0]
            rows = torch.cat([G.reshape(len(idx), -1), g, r.pow(2).sum(-1, keepdim=True)], 1)
        self._rows[torch.tensor(idx)] = rows.cpu()

    def finish_round(self, e: int, all_reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Sum round ``e``'s rows over shards (``all_reduce`` of the host rows, returning
        the host sum; none for one shard) and take the Levenberg-Marquardt step."""
        # Each shard filled its own samples' rows: the reduction adds zeros only, and the
        # sum over samples runs in sample order on every shard.
        rows = self._rows.clone()
        sums = (rows if all_reduce is None else all_reduce(rows)).sum(0)
        norm = self.num_samples * self.dim
        P = self.param.size
        if e == 0:
            self.candidate_loss.copy_(sums / norm)
            best = int(torch.argmin(sums))
            self._trial = self.param.theta(self.candidates[best])
            return
        G, g, rr = sums[: P * P].reshape(P, P), sums[P * P : P * P + P], sums[-1]
        loss = rr / norm
        self.trial_loss[e - 1] = loss
        if bool(loss < self.best_loss):
            # Accept: the trial becomes the current point; trust the model more.
            self.accepted[e - 1] = True  # (each rank's own best_loss: see start_round)
            self.best_loss.copy_(loss)
            self.theta.copy_(self._trial)
            self._G, self._g = G, g
            self._mu = self._mu / 3 if e > 1 else self._mu
        else:
            # Reject: stay, and damp harder.
            self._mu = self._mu * 4
        # Next trial: the damped normal equations (Marquardt scaling of the diagonal).
        d = torch.diagonal(self._G).clamp_min(1e-12 * float(torch.diagonal(self._G).max()) + 1e-300)
        A = self._G + self._mu * torch.diag(d)
        step = -torch.linalg.solve(A, self._g)
        big = float(step.abs().max())
        if big > MAX_STEP:
            step = step * (MAX_STEP / big)
        self._trial = (self.theta + step).clamp(-LIMIT, LIMIT)


@dataclass
class CalibrationPlan:
    """A checked calibration request: grids, parameterisation, fit object and settings."""

    name: str
    spec: SamplerSpec
    options: dict[str, Any]
    grid_steps: int
    default: Tensor
    param: GridParam
    starts: Tensor
    fit: GridFit
    settings: dict[str, Any]
    fitted_for: dict[str, Any]


def plan_calibration(
    denoiser: Any,
    sampler: str,
    *,
    steps: int,
    schedule: str | None = None,
    schedule_options: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    num_samples: int = 64,
    batch_size: int | None = None,
    iterations: int = 20,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float64,
    teacher_steps: int = 100,
    teacher_sigma_end: float | None = None,
    candidates: bool = True,
    cond: Any = None,
    guidance: Any = None,
    uncond: Any = None,
    guidance_interval: tuple[float, float] | None = None,
    devices: int = 1,
) -> CalibrationPlan:
    """Check a calibration request (one line for the first bad input); build its grids."""
    name = base_sampler(sampler)
    spec = get_sampler(name)
    options = dict(options or {})
    spec.check_options(options)
    if not spec.deterministic(options):
        raise ConfigError(f"sampler '{sampler}' is stochastic; calibration needs an ODE sampler")
    for key, value, lo in (
        ("steps", steps, 1),
        ("num_samples", num_samples, 1),
        ("iterations", iterations, 1),
        ("teacher_steps", teacher_steps, 1),
        ("devices", devices, 1),
    ):
        check_int(key, value, lo)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    # (noise, condition) pairs: fitting sample k takes condition row k.
    model, guidance_scale = bind_conditioning(
        denoiser, num_samples, cond=cond, guidance=guidance, uncond=uncond,
        guidance_interval=guidance_interval,
    )  # fmt: skip
    grid_steps, planned = spec.plan(steps, options)
    default = build_sigmas(denoiser, spec, grid_steps, schedule, schedule_options, options)
    if float(default[-1]) != 0.0:
        raise ConfigError(f"schedule {schedule!r} does not end at sigma = 0; cannot calibrate")
    lo, _ = model_sigma_range(denoiser)
    param = GridParam(float(default[0]), min(lo, float(default[-2])), grid_steps)
    shape = sample_shape(denoiser, shape)
    starts = candidate_grids(denoiser, spec, grid_steps, default) if candidates else default[None]
    end = float(teacher_sigma_end if teacher_sigma_end is not None else lo)
    if not 0 < end < float(default[0]):
        raise ConfigError(f"teacher_sigma_end must be in (0, {float(default[0])}), got {end}")
    fit = GridFit(
        model, spec.name, {**planned, **options}, param, starts, shape=shape,
        num_samples=num_samples, iterations=iterations, seed=seed, dtype=dtype,
        teacher_steps=teacher_steps, teacher_sigma_end=end,
    )  # fmt: skip
    settings = {
        "steps": steps, "schedule": schedule, "num_samples": num_samples,
        "batch_size": batch_size or num_samples, "iterations": iterations, "seed": seed,
        "teacher_steps": teacher_steps, "teacher_sigma_end": end,
        "guidance_scale": guidance_scale, "conditional": cond is not None,
    }  # fmt: skip
    fitted_for = fit_metadata(num_samples, cond, uncond, guidance_interval)
    return CalibrationPlan(
        name, spec, options, grid_steps, default, param, starts, fit, settings, fitted_for
    )


def finish_calibration(
    denoiser: Any, sampler: str, plan: CalibrationPlan, fit: GridFit, seconds: float, world: int
) -> Calibration:
    """The calibration of a finished fit, with the metadata every fit records."""
    s, param, starts = plan.settings, plan.param, plan.starts
    steps, iterations, teacher_steps = s["steps"], s["iterations"], s["teacher_steps"]
    end = s["teacher_sigma_end"]
    cand = fit.candidate_loss.detach().cpu()
    loss = float(fit.best_loss)
    if loss < float(cand.min()):
        sigmas = param.sigmas(fit.theta.detach().cpu())
    else:
        # Nothing beat the best starting grid (exactly, not its re-parameterised copy).
        sigmas, loss = starts[int(torch.argmin(cand))].clone(), float(cand.min())
    nfe = plan.spec.nfe(steps, plan.options)
    # Teacher, starting grids, then 2 P + 1 grids per Levenberg-Marquardt trial.
    per_sample = 3 * teacher_steps + 1 + (len(starts) + iterations * (2 * param.size + 1)) * nfe
    vp = describe(denoiser).vp is not None
    metadata = {
        "sampler": plan.name,
        "requested_sampler": sampler,
        "steps": steps,
        "grid_steps": plan.grid_steps,
        "nfe": nfe,
        "schedule": s["schedule"] or plan.spec.grid_owner(plan.options).schedule_for(vp),
        "num_samples": s["num_samples"],
        "iterations": iterations,
        "seed": s["seed"],
        "teacher": f"dpm_solver_3 x {teacher_steps} log-SNR steps to {end:g}, then 0",
        "fingerprint": model_fingerprint(denoiser),
        "library_version": library_version(),
        "default_loss": float(cand[0]),
        "start_loss": float(cand.min()),
        "loss": loss,
        "candidate_loss": cand.tolist(),
        "trial_loss": fit.trial_loss.detach().cpu().tolist(),
        "fit_seconds": seconds,
        "fit_nfe_per_sample": per_sample,
        "fit_nfe": per_sample * s["num_samples"],
        "world_size": world,
        "default_sigmas": plan.default.tolist(),
    }
    if s["conditional"]:
        # What the grid was fitted for: guidance, its interval, digests of the rows.
        metadata["guidance_scale"] = s["guidance_scale"]
        metadata.update(plan.fitted_for)
    return Calibration(plan.name, steps, sigmas, plan.options, metadata)


def fit_calibration(
    denoiser: Any,
    sampler: str,
    *,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
    indices: Sequence[int] | None = None,
    world_size: int | None = None,
    **kwargs: Any,
) -> Calibration:
    """Calibrate a grid in this process, without Lightning.

    Takes the keyword arguments of :func:`samplerlab.calibrate.fit` (Lightning's
    ``devices``, ``strategy``, ``accelerator``, ``progress`` and ``trainer_kwargs`` are
    accepted and ignored) and, as :func:`samplerlab.iia.fit_coefficients`:

    Args:
        all_reduce: sums a float64 tensor over the processes of a DDP world, in place or
            returning the sum; ``None`` for one process. Called once per round, on every
            process, with a tensor on the model's device.
        indices: the fitting samples this process holds (default: all of them); the
            processes' ``indices`` must partition ``range(num_samples)``.
        world_size: recorded in the metadata (default: the DDP world's size with
            ``all_reduce``, else 1).
    """
    for key in ("devices", "strategy", "accelerator", "progress", "trainer_kwargs"):
        kwargs.pop(key, None)
    plan = plan_calibration(denoiser, sampler, **kwargs)
    fit = plan.fit
    n = plan.settings["num_samples"]
    mine = list(range(n)) if indices is None else [int(k) for k in indices]
    if any(not 0 <= k < n for k in mine):
        raise ConfigError(f"indices must lie in [0, {n}) (num_samples), got {mine}")
    if world_size is None:
        dist = torch.distributed
        in_world = all_reduce is not None and dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if in_world else 1
    device = device_of(denoiser)

    def reduce(t: Tensor) -> Tensor:
        # Host rows: reduced on the model's device (NCCL), summed on the host.
        d = t.to(device)
        out = all_reduce(d)  # type: ignore[misc]
        return (d if out is None else out).cpu()

    batch_size = plan.settings["batch_size"]
    batches = shard_batches(mine, batch_size, max(1, math.ceil(len(mine) / batch_size)))
    start = time.perf_counter()
    for e in range(fit.iterations + 1):
        fit.start_round(e)
        for b in batches:
            fit.add_batch(e, torch.tensor(b, dtype=torch.long), device)
        fit.finish_round(e, None if all_reduce is None else reduce)
    seconds = time.perf_counter() - start
    return finish_calibration(denoiser, sampler, plan, fit, seconds, world_size)
