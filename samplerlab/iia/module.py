"""The IIA fit stage: a LightningModule with no optimiser, run by ``Trainer.fit``.

One epoch = one coarse step ``i``; its batches are fitting samples (indices; the initial
noise of sample ``k`` comes from its own seed, so results do not depend on the batch size
or the number of processes). The module only shards the fitting samples over ranks and
all-reduces their Gram sums: each batch goes to the pure fit
(:class:`samplerlab.samplers.iia.GreedyFit`, which runs the coarse step, the fine
reference and the Gram rows), and at the end of the epoch the rows are all-reduced across
ranks, the fit solves the step and advances this rank's samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..fitstage.stage import FitStageModule, run_stage
from ..samplers.iia import GreedyFit, IIACoefficients
from .fitting import finish_fit, greedy_fit, plan_fit


class IIAFitModule(FitStageModule):
    """Drives ``fit`` (a :class:`GreedyFit`) over the fitting samples of this rank."""

    def __init__(self, fit: GreedyFit, num_samples: int, batch_size: int | None = None) -> None:
        super().__init__(fit.denoiser, num_samples, batch_size)
        self.fit = fit
        # Buffers: returned to the main process by Lightning's spawn launcher.
        self.register_buffer("coefficients", fit.coefficients.clone())
        self.register_buffer("fitted", fit.fitted.clone())
        self.register_buffer("local_error", fit.local_error.clone())

    @property
    def steps(self) -> int:
        return self.fit.steps

    def on_train_epoch_start(self) -> None:
        self.fit.start_step(self.device)

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        self.fit.add_batch(self.current_epoch, [int(k) for k in batch.tolist()], self.device)
        return None

    def on_train_epoch_end(self) -> None:
        i = self.current_epoch
        self.fit.finish_step(i, self.all_reduce)
        self.coefficients[i] = self.fit.coefficients[i].to(self.coefficients)
        self.local_error[i] = self.fit.local_error[i].to(self.local_error)


def fit(
    denoiser: Any,
    sampler: str,
    *,
    steps: int | None = None,
    schedule: str | None = None,
    schedule_options: dict[str, Any] | None = None,
    sigmas: Tensor | None = None,
    calibration: Any = None,
    M: int = 3,
    num_samples: int = 16,
    batch_size: int | None = None,
    r: int = 1,
    seed: int = 0,
    ridge: float = 1e-10,
    form: str = "default",
    spacing: str = "auto",
    shape: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float64,
    warm_start: bool = True,
    guidance_scale: float | None = None,
    cond: Any = None,
    guidance: Any = None,
    uncond: Any = None,
    guidance_interval: tuple[float, float] | None = None,
    devices: int = 1,
    strategy: Any = "auto",
    accelerator: str | None = None,
    progress: bool = True,
    trainer_kwargs: dict[str, Any] | None = None,
) -> IIACoefficients:
    """Fit IIA coefficients for ``sampler`` on ``denoiser`` (Lightning ``Trainer.fit``).

    Args:
        sampler: ``iia_ddim``, ``iia_dpmpp_2m``, ``iia_edm`` or ``biia_edm``.
        steps: as for ``samplerlab.sample`` (grid steps; the registry's schedule); or
            ``sigmas``, an explicit ``[N+1]`` grid; or ``calibration``, a grid calibrated
            for the base sampler (``samplerlab.calibrate``). Sampling must use the same grid.
        M: fine sub-steps per coarse step; ``num_samples``: fitting noises (seeded per
            sample, so the result is independent of ``batch_size`` and ``devices``);
        r: past terms of the EDM forms; ``ridge``: relative ridge of the solve;
        form: ``default`` or ``guided`` (iia_ddim with a guided denoiser, eq. 8);
        spacing: fine grid ``auto`` (the solver's time), ``sigma``, ``time``, ``logsnr``.
        warm_start: DPM-Solver++ only: the first fine sub-step uses the coarse previous
            data prediction (second order) instead of a first-order start (except on the
            step to sigma = 0, whose coarse step is first order; see ``fine_reference``).
        shape: one sample's shape (default: the denoiser's ``data_shape``).
        cond: per-sample conditioning of a conditional ``D(x, sigma, cond)`` (a tensor or a
            dict of tensors, first dimension ``num_samples``, or 1 for all): fitting sample
            ``k`` pairs its noise with row ``k``, so the fit averages over (noise,
            condition) pairs (Zhang et al. 2024, Sec. 5.2, text-to-image) and each DDP
            shard carries its own rows. ``guidance`` (one number) with ``uncond`` fits the
            classifier-free-guided sampler at that scale, only on ``guidance_interval`` if
            given (as ``samplerlab.sample``); the file records them and a digest of the rows.
        guidance_scale: only for a denoiser that is already a guided wrapper (no ``cond``):
            the scale to record; with ``cond`` pass ``guidance`` (equal if both are given).
        devices, strategy, accelerator: Lightning's; several devices use DDP
            (``ddp_spawn`` by default, ``ddp`` for scripts/CLI and cluster launchers).

    :func:`samplerlab.iia.fit_coefficients` runs the same fit without Lightning.
    """
    plan = plan_fit(
        denoiser, sampler, steps=steps, schedule=schedule, schedule_options=schedule_options,
        sigmas=sigmas, calibration=calibration, M=M, num_samples=num_samples,
        batch_size=batch_size, r=r, seed=seed, ridge=ridge, form=form, spacing=spacing,
        shape=shape, dtype=dtype, warm_start=warm_start, guidance_scale=guidance_scale,
        devices=devices, cond=cond, guidance=guidance, uncond=uncond,
        guidance_interval=guidance_interval,
    )  # fmt: skip
    module = IIAFitModule(greedy_fit(denoiser, sampler, plan), num_samples, batch_size)
    seconds, world_size = run_stage(
        module,
        max_epochs=module.steps,
        devices=devices,
        strategy=strategy,
        accelerator=accelerator,
        progress=progress,
        trainer_kwargs=trainer_kwargs,
    )
    # The main process's copy of the fit: its results come back in the module's buffers.
    result = module.fit
    result.coefficients = module.coefficients.detach().cpu().to(torch.float64)
    result.fitted = module.fitted.detach().cpu()
    result.local_error = module.local_error.detach().cpu()
    return finish_fit(denoiser, sampler, plan, result, seconds, world_size)
