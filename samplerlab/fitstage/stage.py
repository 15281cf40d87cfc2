"""The Lightning side of the fit stages: a module with no optimiser, run by ``Trainer.fit``.

A fit stage's epochs are its rounds (IIA: one coarse step; calibration: one
Levenberg-Marquardt trial); its batches are fitting-sample indices, sharded over DDP
ranks (:func:`samplerlab.fitstage.shard`), and its only collective is the epoch-end
all-reduce of its sums.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor
from torch.utils.data import DataLoader

from . import device_of, shard


class NoWrapDDP(DDPStrategy):
    """DDP processes without the ``DistributedDataParallel`` wrapper.

    The fit has no parameters and no gradients; the only collective is the epoch-end
    all-reduce of the sums (DDP refuses to wrap a module without trainable weights).
    """

    def configure_ddp(self) -> None:
        pass


_START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


def strategy_for(strategy: Any, devices: int) -> Any:
    """Lightning's ``strategy``, with DDP names mapped to :class:`NoWrapDDP` (``ddp_spawn``
    when ``auto`` has several devices)."""
    if not isinstance(strategy, str):
        return strategy
    if strategy == "auto" and devices > 1:
        strategy = "ddp_spawn"
    if strategy in _START_METHODS:
        return NoWrapDDP(start_method=_START_METHODS[strategy])
    return strategy


class FitStageModule(L.LightningModule):
    """A fit stage: no optimiser, the denoiser held outside the module tree, fitting
    samples sharded over ranks in batches of ``batch_size``."""

    def __init__(self, denoiser: Any, num_samples: int, batch_size: int | None) -> None:
        super().__init__()
        self.automatic_optimization = False
        # Not a submodule: Lightning must neither move nor wrap the model.
        self.__dict__["denoiser"] = denoiser
        self.num_samples = num_samples
        self.batch_size = batch_size or num_samples

    def configure_optimizers(self) -> None:
        return None

    def train_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        batches = [
            torch.tensor(b, dtype=torch.long)
            for b in shard(self.num_samples, rank, world, self.batch_size)
        ]
        return DataLoader(batches, batch_size=None, shuffle=False)

    def all_reduce(self, t: Tensor) -> Tensor:
        """The sum of ``t`` over ranks (in place; ``t`` itself with one process)."""
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t


def run_stage(
    module: FitStageModule,
    *,
    max_epochs: int,
    devices: int = 1,
    strategy: Any = "auto",
    accelerator: str | None = None,
    progress: bool = True,
    trainer_kwargs: dict[str, Any] | None = None,
) -> tuple[float, int]:
    """``Trainer.fit(module)`` for ``max_epochs`` rounds on the model's accelerator (unless
    given); returns the seconds it took and the world size."""
    device = device_of(module.denoiser)
    kwargs: dict[str, Any] = {
        "accelerator": accelerator or ("cpu" if device.type == "cpu" else "gpu"),
        "devices": devices,
        "strategy": strategy_for(strategy, devices),
        "max_epochs": max_epochs,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "use_distributed_sampler": False,
        "enable_progress_bar": progress,
        "deterministic": False,
        **(trainer_kwargs or {}),
    }
    trainer = L.Trainer(**kwargs)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Running without an optimiser is the point of this stage.
        warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`")
        trainer.fit(module)
    return time.perf_counter() - start, trainer.world_size
