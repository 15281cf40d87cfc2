"""The calibration fit stage: a LightningModule with no torch optimiser, run by ``Trainer.fit``.

Method: the grid is fitted end to end, as in LD3 (Tong et al., ICLR 2025): the loss is the
mean squared distance between the sampler's endpoint on the grid and a fine teacher solve
from the same initial noise, over ``num_samples`` fitting noises, as a function of the
``N - 1`` free grid parameters ``theta`` (:class:`samplerlab.calibrate.grid.GridParam`).
Because ``theta`` is small (``N - 1`` numbers) and the loss is a sum of squares over
samples, it is minimised by Levenberg-Marquardt (damped Gauss-Newton) instead of LD3's
first-order optimiser: the Jacobian of every sample's endpoint with respect to ``theta``
comes from central differences, i.e. ``2 (N - 1)`` perturbed grids run in the *same*
batched sampler call as the trial grid (one grid per row). That treats the sampler as a
black box: any registered deterministic sampler is calibrated, whatever it does with its
grid on the host (branching, per-step orders, history), with no autograd through it.

Epochs: epoch 0 computes each fitting sample's teacher endpoint (DPM-Solver-3 on
``teacher_steps`` log-SNR steps) and the loss of a few standard grids (the sampler's
default and the other schedules of the library), and starts from the best. Every later
epoch evaluates the trial ``theta``: each sample adds its rows ``J^T J``, ``J^T r`` and
``r^T r`` into a per-sample buffer; at the end of the epoch the buffer is all-reduced over
DDP ranks and summed in sample order (so the sums, and everything after them, do not depend
on the batch size or the number of processes), the trial is accepted if it lowered the
loss, and the next trial solves the damped normal equations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fitstage import check_int, fit_seeds, library_version, model_fingerprint, sample_shape
from ..fitstage.conditioning import batch_model, bind_conditioning, fit_metadata
from ..fitstage.stage import FitStageModule, run_stage
from ..samplers.api import build_sigmas, model_sigma_range
from ..samplers.core import SamplerError, describe
from ..samplers.dpm_solver import sample_dpm_solver
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


class CalibrationFitModule(FitStageModule):
    """Fits the grid of ``spec`` at ``grid_steps`` (see the module docstring)."""

    def __init__(
        self,
        denoiser: Any,
        spec: SamplerSpec,
        run_options: dict[str, Any],
        param: GridParam,
        candidates: Tensor,
        *,
        shape: Sequence[int],
        num_samples: int,
        batch_size: int | None,
        iterations: int,
        seed: int,
        dtype: torch.dtype,
        teacher_steps: int,
        teacher_sigma_end: float,
        fd_eps: float | None = None,
    ) -> None:
        super().__init__(denoiser, num_samples, batch_size)
        # The name, not the spec: specs hold lambdas, and spawned DDP processes pickle this.
        self.sampler_name, self.run_options, self.param = spec.name, dict(run_options), param
        self.shape = tuple(int(s) for s in shape)
        self.iterations, self.seed = iterations, seed
        self.fit_dtype, self.teacher_steps = dtype, teacher_steps
        self.teacher_sigma_end = teacher_sigma_end
        # Central differences: the step that balances truncation and rounding, eps^(1/3) of
        # the working precision (a float32 network's, even when the fit runs in float64).
        self.fd_eps = fd_eps or torch.finfo(working_dtype(denoiser, dtype)).eps ** (1 / 3)
        self.candidates = candidates
        P = param.size
        # Buffers: returned to the main process by Lightning's spawn launcher.
        self.register_buffer("theta", torch.zeros(P, dtype=torch.float64))
        self.register_buffer("candidate_loss", torch.zeros(len(candidates), dtype=torch.float64))
        self.register_buffer("trial_loss", torch.full((iterations,), math.nan, dtype=torch.float64))
        self.register_buffer("accepted", torch.zeros(iterations, dtype=torch.bool))
        self.register_buffer("best_loss", torch.tensor(math.inf, dtype=torch.float64))
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

    def on_train_epoch_start(self) -> None:
        P = self.param.size
        width = len(self.candidates) if self.current_epoch == 0 else P * P + P + 1
        self._rows = torch.zeros(self.num_samples, width, dtype=torch.float64)

    def _initial(self, idx: list[int]) -> Tensor:
        z = PerSampleNoise(calibration_seeds(self.seed, idx)).randn(
            (len(idx), *self.shape), device=self.device, dtype=self.fit_dtype
        )
        prior = describe(self.denoiser).prior_std
        return z * math.sqrt(self.param.sigma_0**2 + prior**2)

    def _teacher(self, x: Tensor, idx: Tensor) -> Tensor:
        grid = logsnr(self.teacher_steps + 1, self.teacher_sigma_end, self.param.sigma_0)
        den = batch_model(self.denoiser, idx, x.device)
        return sample_dpm_solver(den, x, grid, orders=[3] * self.teacher_steps + [1])

    def _run(self, x: Tensor, grids: Tensor, idx: Tensor) -> Tensor:
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

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        idx = [int(k) for k in batch.tolist()]
        if not idx:
            return None
        with torch.no_grad():
            x = self._initial(idx)
            if self.current_epoch == 0:
                ref = self._teacher(x, batch)
                for j, k in enumerate(idx):
                    self._reference[k] = ref[j].reshape(-1).to(torch.float64)
                out = self._run(x, self.candidates.T.contiguous(), batch)
                rows = (out - ref.reshape(len(idx), 1, -1).double()).pow(2).sum(-1)
            else:
                ref = torch.stack([self._reference[k] for k in idx])
                P, eps = self.param.size, self.fd_eps
                eye = torch.eye(P, dtype=torch.float64)
                thetas = torch.cat(
                    [self._trial[None], self._trial + eps * eye, self._trial - eps * eye]
                )
                out = self._run(x, self.param.sigmas(thetas.T), batch)
                # Residual at the trial grid and its Jacobian by central differences.
                r = out[:, 0] - ref
                J = (out[:, 1 : P + 1] - out[:, P + 1 :]) / (2 * eps)  # [B, P, d]
                G = J @ J.transpose(1, 2)
                g = (J @ r[..., None])[..., 0]
                rows = torch.cat([G.reshape(len(idx), -1), g, r.pow(2).sum(-1, keepdim=True)], 1)
            self._rows[torch.tensor(idx)] = rows.cpu()
        return None

    def _all_reduce(self, t: Tensor) -> Tensor:
        # Host rows: reduced on this rank's device (NCCL), summed on the host.
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            t = self.all_reduce(t.to(self.device))
        return t.cpu()

    def on_train_epoch_end(self) -> None:
        # Each rank filled its own samples' rows: the reduction adds zeros only, and the
        # sum over samples runs in sample order on every rank.
        sums = self._all_reduce(self._rows.clone()).sum(0)
        norm = self.num_samples * self.dim
        P = self.param.size
        e = self.current_epoch
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
            self.accepted[e - 1] = True
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


def fit(
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
    strategy: Any = "auto",
    accelerator: str | None = None,
    progress: bool = True,
    trainer_kwargs: dict[str, Any] | None = None,
) -> Calibration:
    """Calibrate ``sampler``'s grid at ``steps`` for ``denoiser`` (Lightning ``Trainer.fit``).

    Args:
        sampler: any registered deterministic sampler (an IIA sampler's grid is its base's).
        steps: as for ``samplerlab.sample``; ``schedule`` / ``schedule_options``: the starting
            grid (default: the sampler's); ``options``: sampler options (sampling must use
            the same).
        num_samples: fitting noises (seeded per sample: the result does not depend on
            ``batch_size`` or ``devices``); ``iterations``: Levenberg-Marquardt steps.
        teacher_steps: DPM-Solver-3 steps of the teacher solve (``3 teacher_steps + 1`` NFE),
            down to ``teacher_sigma_end`` (default: the model's sigma_min), then 0.
        candidates: also try the library's other schedules as starting grids.
        shape: one sample's shape (default: the denoiser's ``data_shape``).
        cond, guidance, uncond, guidance_interval: as for ``samplerlab.iia.fit``: fitting
            sample ``k`` pairs its noise with condition row ``k`` (first dimension
            ``num_samples``, or 1 for all), sampler and teacher run the (guided) conditional
            ODE, so the loss averages over (noise, condition) pairs; the file records them.
        devices, strategy, accelerator: Lightning's; several devices use DDP.
    """
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
    default = build_sigmas(denoiser, spec, grid_steps, schedule, schedule_options)
    if float(default[-1]) != 0.0:
        raise ConfigError(f"schedule {schedule!r} does not end at sigma = 0; cannot calibrate")
    lo, _ = model_sigma_range(denoiser)
    param = GridParam(float(default[0]), min(lo, float(default[-2])), grid_steps)
    shape = sample_shape(denoiser, shape)
    starts = candidate_grids(denoiser, spec, grid_steps, default) if candidates else default[None]
    end = float(teacher_sigma_end if teacher_sigma_end is not None else lo)
    if not 0 < end < float(default[0]):
        raise ConfigError(f"teacher_sigma_end must be in (0, {float(default[0])}), got {end}")
    module = CalibrationFitModule(
        model,
        spec,
        {**planned, **options},
        param,
        starts,
        shape=shape,
        num_samples=num_samples,
        batch_size=batch_size,
        iterations=iterations,
        seed=seed,
        dtype=dtype,
        teacher_steps=teacher_steps,
        teacher_sigma_end=end,
    )
    seconds, world_size = run_stage(
        module,
        max_epochs=iterations + 1,
        devices=devices,
        strategy=strategy,
        accelerator=accelerator,
        progress=progress,
        trainer_kwargs=trainer_kwargs,
    )
    cand = module.candidate_loss.detach().cpu()
    loss = float(module.best_loss)
    if loss < float(cand.min()):
        sigmas = param.sigmas(module.theta.detach().cpu())
    else:
        # Nothing beat the best starting grid (exactly, not its re-parameterised copy).
        sigmas, loss = starts[int(torch.argmin(cand))].clone(), float(cand.min())
    nfe = spec.nfe(steps, options)
    per_sample = (
        (3 * teacher_steps + 1) + len(starts) * nfe + iterations * (2 * param.size + 1) * nfe
    )
    metadata = {
        "sampler": name,
        "requested_sampler": sampler,
        "steps": steps,
        "grid_steps": grid_steps,
        "nfe": nfe,
        "schedule": schedule or spec.schedule_for(describe(denoiser).vp is not None),
        "num_samples": num_samples,
        "iterations": iterations,
        "seed": seed,
        "teacher": f"dpm_solver_3 x {teacher_steps} log-SNR steps to {end:g}, then 0",
        "fingerprint": model_fingerprint(denoiser),
        "library_version": library_version(),
        "default_loss": float(cand[0]),
        "start_loss": float(cand.min()),
        "loss": loss,
        "candidate_loss": cand.tolist(),
        "trial_loss": module.trial_loss.detach().cpu().tolist(),
        "fit_seconds": seconds,
        "fit_nfe_per_sample": per_sample,
        "fit_nfe": per_sample * num_samples,
        "world_size": world_size,
        "default_sigmas": default.tolist(),
    }
    if cond is not None:
        # What the grid was fitted for: guidance, its interval, digests of the rows.
        metadata["guidance_scale"] = guidance_scale
        metadata.update(fit_metadata(num_samples, cond, uncond, guidance_interval))
    return Calibration(name, steps, sigmas, options, metadata)
