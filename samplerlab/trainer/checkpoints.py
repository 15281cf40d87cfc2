"""Checkpoint I/O of training runs: read a checkpoint without unpickling code, rebuild its
module (EMA weights) and run config, and refuse to resume from one a run cannot continue.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.data import AttributeDict
from omegaconf import DictConfig

from ..errors import ConfigError
from .module import DiffusionModule

# The only non-primitive objects a samplerlab (Lightning) checkpoint may hold beside tensors
# and containers: Lightning's hyper-parameter dict. Everything else is refused by torch's
# weights-only unpickler, so a checkpoint file can never run code when it is loaded.
SAFE_GLOBALS: list[Any] = [AttributeDict]


def read_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """A checkpoint file as a dict of tensors and plain values, never unpickling code.

    ``key`` names the option the path came from (``--ckpt``, ``ckpt_path``) in the one-line
    error for a missing, foreign or malicious file.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{key}: {p} is a folder; pass a checkpoint file (e.g. {p}/last.ckpt)")
    if not p.is_file():
        raise ConfigError(f"{key}: checkpoint {p} does not exist")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=_is_zip(p))
    except pickle.UnpicklingError as e:
        import re

        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        why = f"it asks to import {m[1]}" if m else "it holds objects other than tensors"
        raise ConfigError(
            f"{key}: {p} is not a samplerlab checkpoint: refused to unpickle it ({why}; "
            "checkpoints are read with torch.load(weights_only=True))"
        ) from None
    except Exception as e:
        raise ConfigError(
            f"{key}: {p} is not a samplerlab checkpoint ({type(e).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("hyper_parameters"), dict):
        raise ConfigError(f"{key}: {p} is not a samplerlab checkpoint (no hyper_parameters)")
    return ckpt


def _is_zip(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def load_checkpoint(path: str | Path) -> tuple[DiffusionModule, dict[str, Any]]:
    """A trained module (EMA weights) and the run config saved in its checkpoint."""
    p = Path(path)
    ckpt = read_checkpoint(p, "--ckpt")
    try:
        hp = ckpt["hyper_parameters"]
        state = ckpt["state_dict"]
        config = hp["config"]
    except KeyError as e:
        raise ConfigError(f"--ckpt: {p} is not a samplerlab checkpoint (no {e})") from None
    try:
        module = DiffusionModule(**{k: hp[k] for k in _INIT_ARGS if k in hp})
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(
            f"--ckpt: {p} does not match its saved architecture ({str(e).splitlines()[0][:160]})"
        ) from None
    from .runs import CHECKPOINT_KEY, summary_line

    training = ckpt.get(CHECKPOINT_KEY)
    if isinstance(training, dict):  # what this checkpoint's training was, for the report
        training = {**training, "checkpoint": str(p), "seconds": None}
        module.training_summary = {**training, "line": summary_line(training)}
    return module.eval(), config


_INIT_ARGS = ("config", "data_shape", "num_classes", "unet_config", "scheduler_config")


def load_denoiser(path: str | Path) -> Any:
    """The EMA denoiser ``D(x, sigma)`` of a training checkpoint (``iia-fit``, ``sample``)."""
    return load_checkpoint(path)[0].denoiser


# Model keys that change the network; the preconditioning keys (EDM: sigma_data, VP: the
# table length) change what its output means: resuming with another value would train the
# old weights as if they were something else.
_ARCH_KEYS = ("backbone", "parameterization", "num_classes", "unet", "mlp", "beta_schedule")


def check_resume(module: DiffusionModule, ckpt: dict[str, Any], cfg: DictConfig) -> None:
    """Refuse to resume ``module`` (as built, after a fine-tune source set its model keys)
    from a checkpoint it cannot continue (one line naming the keys and both values):
    another architecture, data of another shape, another preconditioning, or a run that
    has already trained its planned epochs/steps."""
    p = cfg.ckpt_path
    try:
        hp = ckpt["hyper_parameters"]
        old = hp["config"]["model"]
    except (KeyError, TypeError):
        raise ConfigError(f"ckpt_path: {p} is not a samplerlab checkpoint") from None
    new = module.hparams["config"]["model"]
    diff = [k for k in _ARCH_KEYS if old.get(k) != new.get(k)]
    if diff:
        raise ConfigError(
            f"ckpt_path: {p} holds another architecture (model.{', model.'.join(diff)} differ)"
        )
    old_shape = tuple(hp.get("data_shape") or ())
    if old_shape and old_shape != tuple(module.data_shape):
        raise ConfigError(
            f"ckpt_path: {p} was trained on data of shape {old_shape}, these data are "
            f"{tuple(module.data_shape)}; resume with the same data.* settings"
        )
    keys = ("sigma_data",) if new.get("parameterization") == "edm" else ("num_train_timesteps",)
    for k in keys:
        if k in old and old.get(k) != new.get(k):
            raise ConfigError(
                f"ckpt_path: {p} was trained with model.{k}={old[k]}, this run has "
                f"model.{k}={new.get(k)}: resuming would train its weights under another "
                f"preconditioning; set model.{k}={old[k]} (or train a new model)"
            )
    t = cfg.trainer
    loops = ckpt.get("loops", {}).get("fit_loop", {})
    # Epochs done: Lightning saves the end-of-epoch checkpoint before it counts the epoch as
    # completed; its last batch done means the epoch is.
    epochs = loops.get("epoch_progress", {}).get("current", {})
    last_batch = loops.get("epoch_loop.batch_progress", {}).get("is_last_batch", False)
    done_epochs = epochs.get("processed" if last_batch else "completed")
    step = ckpt.get("global_step")
    if done_epochs is not None and t.max_epochs != -1 and done_epochs >= t.max_epochs:
        raise ConfigError(
            f"ckpt_path: {p} has already trained {done_epochs} epochs (step {step}) and "
            f"trainer.max_epochs={t.max_epochs}: nothing to train; raise trainer.max_epochs "
            "to train on, or use samplerlab evaluate"
        )
    if step is not None and t.max_steps != -1 and step >= t.max_steps:
        raise ConfigError(
            f"ckpt_path: {p} is at step {step} and trainer.max_steps={t.max_steps}: nothing to "
            "train; raise trainer.max_steps to train on, or use samplerlab evaluate"
        )
