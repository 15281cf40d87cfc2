"""Checks of a run configuration that need more than the schema's types: choices, ranges,
sampler names and options, Lightning's trainer settings and the machine's accelerators. Each
failure is one line naming the key (``ConfigError``).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from ..errors import ConfigError

DATASETS = ("digits", "gmm", "image_folder", "cifar10")
BACKBONES = ("unet", "mlp")
PARAMETERIZATIONS = ("edm", "eps", "v")
FEATURES = ("classifier", "inception", "raw")
BETA_SCHEDULES = ("linear", "cosine")


def _choice(key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key}: unknown value '{value}'; valid: {', '.join(valid)}")


def validate(cfg: DictConfig) -> None:
    """Checks that need more than types: choices, ranges, sampler names and options."""
    from ..samplers import SAMPLERS, SCHEDULES, SamplerError

    _choice("data.name", cfg.data.name, DATASETS)
    _choice("model.backbone", cfg.model.backbone, BACKBONES)
    _choice("model.parameterization", cfg.model.parameterization, PARAMETERIZATIONS)
    _choice("model.beta_schedule", cfg.model.beta_schedule, BETA_SCHEDULES)
    _choice("eval.feature", cfg.eval.feature, FEATURES)
    _choice("eval.dtype", cfg.eval.dtype, ("float32", "float64"))
    _choice("logger.mode", cfg.logger.mode, ("offline", "online", "disabled"))
    if cfg.data.name == "gmm" and cfg.model.backbone != "mlp":
        raise ConfigError("model.backbone: data.name=gmm holds vectors; use model.backbone=mlp")
    for key, low in (
        ("data.batch_size", 1),
        ("eval.num_samples", 2),
        ("eval.batch_size", 1),
        ("data.image_size", 1),
        ("eval.fid_bootstrap", 0),
    ):
        sect, name = key.split(".")
        if cfg[sect][name] < low:
            raise ConfigError(f"{key}: must be >= {low}, got {cfg[sect][name]}")
    if not cfg.eval.diverge_factor > 0:
        raise ConfigError(f"eval.diverge_factor: must be > 0, got {cfg.eval.diverge_factor}")
    if not 0 <= cfg.eval.diverge_fraction < 1:
        raise ConfigError(
            f"eval.diverge_fraction: must be in [0, 1), got {cfg.eval.diverge_fraction}"
        )
    if any(int(n) < 1 for n in cfg.eval.nfe):
        raise ConfigError(f"eval.nfe: budgets must be >= 1, got {list(cfg.eval.nfe)}")
    if cfg.data.channels is not None and cfg.data.channels not in (1, 3):
        raise ConfigError(
            f"data.channels: must be 1 (grayscale) or 3 (RGB), got {cfg.data.channels}"
        )
    own = {"digits": 1, "cifar10": 3}.get(cfg.data.name)
    if own is not None and cfg.data.channels not in (None, own):
        raise ConfigError(
            f"data.channels: {cfg.data.name} images have {own} channel(s), "
            f"not {cfg.data.channels}; drop data.channels"
        )
    if not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction: must be in [0, 1), got {cfg.data.val_fraction}")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers: must be >= 0, got {cfg.data.num_workers}")
    if cfg.data.name == "gmm" and min(cfg.data.gmm.dim, cfg.data.gmm.components) < 1:
        raise ConfigError("data.gmm: dim and components must be >= 1")
    if cfg.optim.lr <= 0 or cfg.optim.weight_decay < 0:
        raise ConfigError(
            f"optim.lr: must be > 0 (and optim.weight_decay >= 0), got {cfg.optim.lr} "
            f"({cfg.optim.weight_decay})"
        )
    if cfg.seed < 0 or cfg.seed >= 2**63:
        raise ConfigError(f"seed: must be in [0, 2**63), got {cfg.seed}")
    validate_trainer(cfg.trainer)
    if cfg.model.num_classes < 0:
        raise ConfigError(f"model.num_classes: must be >= 0, got {cfg.model.num_classes}")
    if cfg.model.num_classes > 0 and not cfg.data.conditional:
        raise ConfigError("model.num_classes: a conditional model needs data.conditional=true")
    if cfg.data.conditional and cfg.data.name == "gmm":
        raise ConfigError("data.conditional: data.name=gmm has no class labels")
    if not 0 <= cfg.model.p_uncond < 1:
        raise ConfigError(
            f"model.p_uncond: the label dropout probability must be in [0, 1), got "
            f"{cfg.model.p_uncond}"
        )
    validate_guidance(cfg)
    for name in cfg.eval.exclude:
        if name not in SAMPLERS:
            raise ConfigError(
                f"eval.exclude: unknown sampler '{name}'; valid: {', '.join(SAMPLERS)}"
            )
    for label, entry in cfg.eval.samplers.items():
        name = entry.sampler or label
        if name not in SAMPLERS:
            raise ConfigError(
                f"eval.samplers.{label}: unknown sampler '{name}'; valid: {', '.join(SAMPLERS)}"
            )
        if entry.schedule is not None and entry.schedule not in SCHEDULES:
            raise ConfigError(
                f"eval.samplers.{label}.schedule: unknown schedule '{entry.schedule}'; "
                f"valid: {', '.join(SCHEDULES)}"
            )
        try:
            SAMPLERS[name].check_options(dict(entry.options))
        except SamplerError as e:
            raise ConfigError(f"eval.samplers.{label}.options: {e}") from None
        for k in ("nfe", "steps"):
            vals = entry[k]
            if vals is not None and (not vals or any(int(v) < 1 for v in vals)):
                raise ConfigError(f"eval.samplers.{label}.{k}: need a list of integers >= 1")


def validate_guidance(cfg: DictConfig) -> None:
    """``eval.guidance`` / ``eval.guidance_interval`` (a conditional model only)."""
    from ..evaluation.guidance import check_guidance, check_interval

    ev = cfg.eval
    if not ev.guidance:
        if ev.guidance_interval is not None:
            raise ConfigError("eval.guidance_interval: needs eval.guidance (a list of scales)")
        return
    check_guidance(ev.guidance, "eval.guidance")
    check_interval(ev.guidance_interval, "eval.guidance_interval")
    if cfg.model.num_classes == 0 and not cfg.data.conditional:
        raise ConfigError(
            "eval.guidance: the model is unconditional (model.num_classes=0); guidance needs "
            "a class-conditional model (data.conditional=true, model.num_classes=K)"
        )


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def parse_max_time(value: str | None) -> float | None:
    """``trainer.max_time`` ("DD:HH:MM:SS", Lightning's format) in seconds; None: no cap."""
    import re

    if value is None:
        return None
    m = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", str(value).strip())
    if not m or int(m[3]) > 59 or int(m[4]) > 59 or int(m[2]) > 23:
        raise ConfigError(
            f"trainer.max_time: '{value}' is not DD:HH:MM:SS (e.g. 00:00:10:00 for 10 minutes); "
            "null: no cap"
        )
    d, h, mi, sec = (int(g) for g in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + sec)


def validate_trainer(t: DictConfig) -> None:
    """``trainer.*`` choices, checked before anything is built (Lightning's own names)."""
    from typing import get_args

    from lightning.fabric.connector import (
        _PRECISION_INPUT_STR,
        _PRECISION_INPUT_STR_ALIAS,
    )
    from lightning.pytorch.strategies import StrategyRegistry

    _choice("trainer.accelerator", t.accelerator, ACCELERATORS)
    precisions = get_args(_PRECISION_INPUT_STR) + get_args(_PRECISION_INPUT_STR_ALIAS)
    _choice("trainer.precision", str(t.precision), precisions)
    strategies = ("auto", *StrategyRegistry.available_strategies())
    _choice("trainer.strategy", t.strategy, strategies)
    parse_max_time(t.max_time)
    if t.max_epochs < -1 or t.max_epochs == 0:
        raise ConfigError(f"trainer.max_epochs: must be >= 1 (or -1: no limit), got {t.max_epochs}")
    if t.max_steps < -1 or t.max_steps == 0:
        raise ConfigError(f"trainer.max_steps: must be >= 1 (or -1: no limit), got {t.max_steps}")
    if t.max_epochs == -1 and t.max_steps == -1:
        raise ConfigError("trainer.max_epochs: set max_epochs or max_steps (both are -1)")
    if t.num_threads is not None and t.num_threads < 1:
        raise ConfigError(f"trainer.num_threads: must be >= 1, got {t.num_threads}")
    if t.num_nodes < 1 or t.check_val_every_n_epoch < 1 or t.log_every_n_steps < 1:
        raise ConfigError(
            "trainer.num_nodes, check_val_every_n_epoch and log_every_n_steps must be >= 1"
        )
    devices = t.devices
    if isinstance(devices, int) and not isinstance(devices, bool) and devices < 1 and devices != -1:
        raise ConfigError(f"trainer.devices: must be >= 1, -1, a list or 'auto', got {devices}")


def check_accelerator(t: DictConfig) -> None:
    """The requested accelerator exists on this machine (one line, before any work)."""
    import torch

    acc = t.accelerator
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator: '{acc}' but this machine has no usable CUDA device; "
            "use trainer.accelerator=cpu (or auto)"
        )
    if acc == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator: 'mps' is not available here; use cpu or auto")
    if acc == "tpu":
        from lightning.pytorch.accelerators import XLAAccelerator

        if not XLAAccelerator.is_available():
            raise ConfigError("trainer.accelerator: 'tpu' is not available here; use cpu or auto")
