"""``SamplerEvalCallback``: the evaluation (:mod:`samplerlab.evaluation`) as a Lightning
callback: every configured sampler x NFE budget -> FID, NFE, rounds, seconds at chosen
validation epochs, in ``trainer.validate`` (``samplerlab evaluate``) and at the end of
training; scalars, a table, a FID-vs-NFE plot and sample grids go to W&B (rank zero).

The callback only adapts Lightning to the :class:`~samplerlab.evaluation.evaluator.Evaluator`:
the strategy's collectives, the module's EMA denoiser and its fingerprint, the trainer's
counters and loggers.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig
from torch import Tensor

from ..evaluation.dist import Dist
from ..evaluation.evaluator import Evaluator
from ..evaluation.real import RealData
from ..evaluation.report import flat_metrics, write_report


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Path, epoch and global step of a Lightning checkpoint (read with weights_only=True)."""
    p = Path(path)
    info: dict[str, Any] = {"path": str(p.resolve()), "epoch": None, "step": None}
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        info["epoch"], info["step"] = ckpt.get("epoch"), ckpt.get("global_step")
    except Exception:  # the model loader names a bad file; here only the counters are missing
        pass
    return info


class SamplerEvalCallback(Callback):
    """Evaluates samplers at chosen validation epochs (not during sanity checking), in
    ``trainer.validate`` (``samplerlab evaluate``) and at the end of training.

    ``checkpoint``: the file being evaluated (``samplerlab evaluate``): its path, epoch and
    step are recorded in the report instead of the validating trainer's counters.
    """

    def __init__(
        self,
        cfg: DictConfig,
        datamodule: RealData,
        out_dir: str | Path,
        checkpoint: str | Path | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.dm = datamodule
        self.out_dir = Path(out_dir)
        # Built now: a bad feature extractor, sampler list or output folder fails before
        # any training.
        self.evaluator = Evaluator(cfg, datamodule, out_dir)
        if checkpoint is not None:
            self.evaluator.checkpoint = checkpoint_info(checkpoint)
        self.reports: list[dict[str, Any]] = []
        self._checked: set[str] = set()

    def check(self, pl_module: Any, stage: str = "fit") -> None:
        """Dry-run every job on an analytic stand-in of ``pl_module``'s denoiser (no network
        call): every bad option, value or coefficient file fails now, before any training."""
        if not self.cfg.eval.enabled or stage in self._checked:
            return
        use_classes(self.evaluator, pl_module)
        make = getattr(pl_module, "make_denoiser", None)
        denoiser = make(pl_module.net) if make is not None else pl_module.denoiser
        if stage != "fit":  # the weights are the evaluated ones: files must come from them
            from ..iia import fingerprint

            self.evaluator.model_id = fingerprint(denoiser)
        self.evaluator.check_jobs(denoiser, stage=stage)
        self._checked.add(stage)

    def prefit(self, pl_module: Any, device: torch.device) -> None:
        """Fit the jobs' calibrated grids and IIA coefficients for ``pl_module``'s weights on
        ``device`` now, before the trainer that evaluates them starts (``samplerlab
        evaluate``): no fit stage runs inside it."""
        from ..iia import fingerprint

        if not self.cfg.eval.enabled:
            return
        pl_module.to(device)
        use_classes(self.evaluator, pl_module)
        model_id = fingerprint(pl_module.denoiser_for())
        self.evaluator.prefit(eval_denoiser(pl_module, self.cfg.eval), device, model_id)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.evaluator.dist = Dist(trainer.strategy)
        self.check(pl_module, stage)  # also covers trainers started without run.py

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ev = self.cfg.eval
        if trainer.sanity_checking or not ev.enabled:
            return
        if trainer.state.fn == "fit":
            n = ev.every_n_epochs
            if n <= 0 or (trainer.current_epoch + 1) % n != 0:
                return
        self.run(trainer, pl_module, stage="val")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.cfg.eval.enabled and self.cfg.eval.at_end and not trainer.fast_dev_run:
            self.run(trainer, pl_module, stage="final")

    def run(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> dict[str, Any]:
        from ..iia import fingerprint

        # The weights' fingerprint as iia-fit records it (the float32 EMA network).
        model_id = fingerprint(pl_module.denoiser_for())
        denoiser = eval_denoiser(pl_module, self.cfg.eval)
        use_classes(self.evaluator, pl_module)
        counters = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        with torch.no_grad():
            report = self.evaluator.evaluate(
                denoiser, pl_module.device, stage=stage, model_id=model_id, **counters
            )
        report["stage"] = stage
        report["training"] = getattr(pl_module, "training_summary", None)  # trainer/runs.py
        self.reports.append(report)
        metrics = flat_metrics(report, "val")
        for k, v in metrics.items():
            trainer.callback_metrics[k] = torch.tensor(v)
        if trainer.global_rank == 0:
            write_report(self.out_dir, report)
            log_wandb(trainer, report, self.evaluator.last_grids, self.out_dir, metrics)
        return report


def use_classes(evaluator: Evaluator, pl_module: Any) -> None:
    """The module's classes and null label for the guided jobs (none: unconditional)."""
    k = int(getattr(pl_module, "num_classes", 0) or 0)
    evaluator.use_classes(k, pl_module.null_label if k > 0 else None)


def eval_denoiser(pl_module: Any, ev: DictConfig) -> Any:
    """The denoiser an evaluation samples: the EMA network, compiled if ``eval.compile``, or
    a float64 copy of it (eager) if ``eval.dtype=float64``."""
    if ev.dtype == "float64":
        return pl_module.make_denoiser(copy.deepcopy(pl_module.ema_net()).double().eval())
    return pl_module.denoiser_for(compile=bool(ev.compile))


def log_wandb(
    trainer: pl.Trainer,
    report: dict[str, Any],
    grids: dict[str, Tensor],
    out_dir: Path,
    metrics: dict[str, float],
) -> None:
    """Scalars, a table, a FID-vs-NFE line plot and one image grid per sampler (rank zero)."""
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return
    import wandb

    from ..evaluation.report import grid_image

    run = loggers[0].experiment
    cols = ["sampler", "budget", "steps", "nfe", "rounds", "seconds", "fid", "fid_std", "status"]
    if any("guidance" in r for r in report["results"]):
        cols[1:1] = ["guidance"]
        cols[-1:-1] = ["accuracy"]
    table = wandb.Table(columns=cols)
    for r in report["results"]:
        table.add_data(*[r["label"] if c == "sampler" else r.get(c) for c in cols])
    payload: dict[str, Any] = {**metrics, "trainer/global_step": trainer.global_step}
    payload["val/results"] = table
    payload["val/fid_vs_nfe"] = wandb.plot.line(
        table, "nfe", "fid", stroke="sampler", title="FID vs NFE"
    )
    payload["val/fid_vs_nfe_png"] = wandb.Image(str(out_dir / "fid_vs_nfe.png"))
    for tag, x in grids.items():
        if x.ndim == 4:
            payload[f"val/samples/{tag}"] = wandb.Image(grid_image(x).numpy())
    run.log(payload)  # wandb's own step: Lightning may already be past trainer.global_step
