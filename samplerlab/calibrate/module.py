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

The rounds are :class:`samplerlab.calibrate.fitting.GridFit`'s (pure torch; also run without
Lightning by :func:`samplerlab.calibrate.fitting.fit_calibration`); this module shards
them over DDP ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..fitstage.stage import FitStageModule, run_stage
from .fitting import (
    MAX_STEP,
    GridFit,
    calibration_seeds,
    finish_calibration,
    plan_calibration,
)
from .grid import Calibration

__all__ = ["MAX_STEP", "CalibrationFitModule", "calibration_seeds", "fit"]


class CalibrationFitModule(FitStageModule):
    """Drives ``fit`` (a :class:`GridFit`) over the fitting samples of this rank: one epoch
    per round (see the module docstring)."""

    def __init__(self, fit: GridFit, batch_size: int | None = None) -> None:
        super().__init__(fit.denoiser, fit.num_samples, batch_size)
        self.fit = fit
        # Buffers: returned to the main process by Lightning's spawn launcher.
        for key in ("theta", "candidate_loss", "trial_loss", "accepted", "best_loss"):
            self.register_buffer(key, getattr(fit, key).clone())

    def on_train_epoch_start(self) -> None:
        self.fit.start_round(self.current_epoch)

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        self.fit.add_batch(self.current_epoch, batch, self.device)
        return None

    def _all_reduce(self, t: Tensor) -> Tensor:
        # Host rows: reduced on this rank's device (NCCL), summed on the host.
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            t = self.all_reduce(t.to(self.device))
        return t.cpu()

    def on_train_epoch_end(self) -> None:
        self.fit.finish_round(self.current_epoch, self._all_reduce)
        for key in ("theta", "candidate_loss", "trial_loss", "accepted", "best_loss"):
            getattr(self, key).copy_(getattr(self.fit, key))


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

    :func:`samplerlab.calibrate.fitting.fit_calibration` runs the same fit without Lightning.
    """
    plan = plan_calibration(
        denoiser, sampler, steps=steps, schedule=schedule, schedule_options=schedule_options,
        options=options, num_samples=num_samples, batch_size=batch_size,
        iterations=iterations, seed=seed, shape=shape, dtype=dtype,
        teacher_steps=teacher_steps, teacher_sigma_end=teacher_sigma_end,
        candidates=candidates, cond=cond, guidance=guidance, uncond=uncond,
        guidance_interval=guidance_interval, devices=devices,
    )  # fmt: skip
    module = CalibrationFitModule(plan.fit, batch_size)
    seconds, world_size = run_stage(
        module,
        max_epochs=plan.fit.iterations + 1,
        devices=devices,
        strategy=strategy,
        accelerator=accelerator,
        progress=progress,
        trainer_kwargs=trainer_kwargs,
    )
    # The main process's copy of the fit: its results come back in the module's buffers.
    result = module.fit
    for key in ("theta", "candidate_loss", "trial_loss", "accepted", "best_loss"):
        setattr(result, key, getattr(module, key).detach().cpu())
    return finish_calibration(denoiser, sampler, plan, result, seconds, world_size)
