"""Entry points behind ``samplerlab train`` and ``samplerlab evaluate``."""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ..callbacks.sampler_eval import SamplerEvalCallback
from ..errors import ConfigError, TrainingError
from ..fileio import atomic_write_text
from .checkpoints import SAFE_GLOBALS, check_resume, load_checkpoint, read_checkpoint
from .config import check_accelerator, load_config, validate
from .data import DiffusionDataModule
from .module import EMA, DiffusionModule, build_module
from .runs import SessionTimer, TrainingSummary, make_timer, run_dir, set_threads

_FIT_WEIGHTS_ONLY = "weights_only" in inspect.signature(pl.Trainer.fit).parameters


def make_logger(cfg: DictConfig, out_dir: Path) -> Any:
    lg = cfg.logger
    if not lg.wandb or lg.mode == "disabled":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(out_dir), name="logs")
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    save_dir = Path(lg.dir or out_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=lg.project,
        entity=lg.entity,
        group=lg.group,
        name=cfg.name,
        save_dir=str(save_dir),
        offline=lg.mode == "offline",
        mode=lg.mode,
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def make_trainer(
    cfg: DictConfig, out_dir: Path, callbacks: list[Any], *, checkpoints: bool = True
) -> pl.Trainer:
    t = cfg.trainer
    cbs = list(callbacks)
    if checkpoints:
        cbs.append(ModelCheckpoint(dirpath=str(out_dir / "checkpoints"), save_last=True))
    timer = make_timer(t.max_time)  # per invocation: a resumed run trains on
    if timer is not None:
        cbs.append(timer)
    return pl.Trainer(
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        fast_dev_run=t.fast_dev_run,
        enable_progress_bar=t.enable_progress_bar,
        deterministic=t.deterministic,
        gradient_clip_val=cfg.optim.grad_clip or None,
        logger=make_logger(cfg, out_dir),
        callbacks=cbs,
        default_root_dir=str(out_dir),
        enable_checkpointing=checkpoints,
    )


def save_config(cfg: DictConfig, out_dir: Path) -> None:
    text = OmegaConf.to_yaml(cfg)
    atomic_write_text(out_dir / "config.yaml", text)
    atomic_write_text(out_dir / "checkpoints" / "config.yaml", text)


def _threads(cfg: DictConfig, prefix: str) -> None:
    n, why = set_threads(cfg.trainer.num_threads)
    if rank_zero_only.rank == 0:
        print(f"{prefix}: torch uses {n} CPU thread(s) ({why}; trainer.num_threads=N to change)")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit a model (resuming from ``ckpt_path``), evaluate the samplers, export if asked.

    Cheap checks come first (config, accelerator, resume compatibility, the run folder):
    nothing is trained or written on bad input.
    """
    validate(cfg)
    check_accelerator(cfg.trainer)
    out_dir = Path(cfg.out_dir)
    resume = read_checkpoint(cfg.ckpt_path, "ckpt_path") if cfg.ckpt_path is not None else None
    with run_dir(cfg):
        _threads(cfg, "samplerlab train")
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        dm = DiffusionDataModule(cfg.data)
        dm.prepare()
        module = build_module(cfg, dm.shape, dm.num_classes)
        if resume is not None:
            check_resume(module, resume, cfg)
        if cfg.export is not None:
            module.check_exportable()
        checkpoints = not cfg.trainer.fast_dev_run
        last = out_dir / "checkpoints" / "last.ckpt" if checkpoints else None
        callbacks: list[Any] = []
        evalcb = SamplerEvalCallback(cfg, dm, out_dir) if cfg.eval.enabled else None
        if evalcb is not None:
            evalcb.check(module)  # every evaluation job dry-runs now, before any training
            callbacks.append(evalcb)
        if cfg.optim.ema:
            callbacks.append(EMA(decay=cfg.optim.ema_decay, warmup=cfg.optim.ema_warmup))
        trainer = make_trainer(cfg, out_dir, callbacks, checkpoints=checkpoints)
        timer = next((c for c in trainer.callbacks if isinstance(c, SessionTimer)), None)
        summary = TrainingSummary(cfg, timer, last)
        # First among the callbacks: its on_train_end (the cut announcement and the summary
        # the evaluation report opens with) runs before the evaluation's.
        trainer.callbacks.insert(0, summary)
        if trainer.global_rank == 0:
            save_config(cfg, out_dir)
        start = time.perf_counter()
        try:
            # Lightning's own restore reads the checkpoint weights-only too (already checked
            # by read_checkpoint above; Lightning < 2.6 has no weights_only argument).
            safe = {"weights_only": True} if _FIT_WEIGHTS_ONLY else {}
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path, **safe)
        except TrainingError as e:
            _finish_loggers(trainer, "failed")
            raise TrainingError(f"{e}; {_last_good(last)}") from None
        seconds = time.perf_counter() - start
        if cfg.export is not None and trainer.global_rank == 0:
            module.save_pretrained(cfg.export)
        _finish_loggers(trainer)
    return {
        "trainer": trainer,
        "module": module,
        "seconds": seconds,
        "out_dir": out_dir,
        "reports": evalcb.reports if evalcb is not None else [],
        "training": summary.summary,
    }


def _last_good(last: Path | None) -> str:
    """Where the last good weights are after training stopped on a non-finite loss."""
    if last is None or not last.is_file():
        return "no checkpoint was written before it (none is left behind)"
    step = read_checkpoint(last, "checkpoint").get("global_step")
    return f"the last good checkpoint is {last} (step {step})"


def evaluate(ckpt: str, files: list[str], overrides: list[str]) -> dict[str, Any]:
    """Evaluate every configured sampler on a checkpoint (its saved config <- files <- k=v)."""
    module, saved = load_checkpoint(ckpt)
    base = dict(saved)
    base["out_dir"] = str(Path(saved["out_dir"]) / "eval")
    base["ckpt_path"] = None
    base["eval"] = {**saved["eval"], "enabled": True}  # evaluate always evaluates
    cfg = load_config(*files, overrides=overrides, base=base)
    if OmegaConf.to_container(cfg.model) != saved["model"]:
        raise ConfigError(
            "model: evaluate uses the checkpoint's architecture; drop model.* settings"
        )
    check_accelerator(cfg.trainer)
    _threads(cfg, "samplerlab evaluate")
    out_dir = Path(cfg.out_dir)
    dm = DiffusionDataModule(cfg.data)
    dm.prepare()
    if tuple(dm.shape) != tuple(module.data_shape):
        raise ConfigError(
            f"data: the checkpoint's model takes {module.data_shape}, data are {dm.shape}"
        )
    evalcb = SamplerEvalCallback(cfg, dm, out_dir, checkpoint=ckpt)
    trainer = make_trainer(cfg, out_dir, [evalcb], checkpoints=False)
    evalcb.check(module, stage="validate")  # every job dry-runs before any fit
    # The jobs' IIA and calibration fits run here, before Trainer.validate (not inside it).
    evalcb.prefit(module, trainer.strategy.root_device)
    trainer.validate(module, datamodule=dm, verbose=False)
    _finish_loggers(trainer)
    return {"trainer": trainer, "reports": evalcb.reports, "out_dir": out_dir}


def _finish_loggers(trainer: pl.Trainer, status: str = "success") -> None:
    for lg in trainer.loggers:
        lg.finalize(status)
    if trainer.global_rank == 0:
        try:
            import wandb

            if wandb.run is not None:
                wandb.finish()
        except ImportError:
            pass


__all__ = ["DiffusionModule", "evaluate", "make_trainer", "train"]
