"""The run configuration: a structured OmegaConf schema merged with YAML files and dotlist
overrides. Unknown keys and wrong types fail at load with the key's path (``ConfigError``).

``load_config("gmm", "my.yaml", overrides=["optim.lr=1e-3"])``: names without a suffix are the
presets shipped in ``samplerlab/configs``. The schema's defaults are the embedded default run
(digits, a small UNet, every sampler evaluated); files and overrides are overlays on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError

DATASETS = ("digits", "gmm", "image_folder", "cifar10")
BACKBONES = ("unet", "mlp")
PARAMETERIZATIONS = ("edm", "eps", "v")
FEATURES = ("classifier", "inception", "raw")
BETA_SCHEDULES = ("linear", "cosine")
PRESETS = ("digits", "digits_cond", "gmm", "cifar10", "test")


@dataclass
class GMMConfig:
    dim: int = 8
    components: int = 6
    seed: int = 0
    num_samples: int = 20000


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None  # image_folder / cifar10: a local folder (never downloaded)
    image_size: int = 8  # digits: 8 (native) or 16 (upsampled); image_folder: resize to this
    channels: int | None = None  # 1 (grayscale) or 3 (RGB); None: the data's own
    # (digits 1, cifar10 3, image_folder: 1 if its first image is grayscale, else 3)
    batch_size: int = 64
    num_workers: int = 0
    val_fraction: float = 0.1
    conditional: bool = False  # yield class labels to the model
    seed: int = 0
    gmm: GMMConfig = field(default_factory=GMMConfig)


@dataclass
class UNetConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32])
    layers_per_block: int = 1
    down_block_types: list[str] = field(default_factory=lambda: ["DownBlock2D", "DownBlock2D"])
    up_block_types: list[str] = field(default_factory=lambda: ["UpBlock2D", "UpBlock2D"])
    norm_num_groups: int = 8
    attention_head_dim: int = 8
    dropout: float = 0.0


@dataclass
class MLPConfig:
    hidden: int = 256
    depth: int = 3
    emb_dim: int = 64


@dataclass
class ModelConfig:
    backbone: str = "unet"
    parameterization: str = "edm"  # edm (EDM preconditioning + loss) | eps | v (VP DDPM)
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    P_mean: float = -1.2
    P_std: float = 1.2
    beta_schedule: str = "linear"  # VP only
    num_train_timesteps: int = 1000
    # > 0: class-conditional on labels 0..K-1 (needs data.conditional=true); label K is the
    # null label ("no condition", classifier-free guidance). 0 with data.conditional=true:
    # the data's number of classes.
    num_classes: int = 0
    p_uncond: float = 0.1  # label dropout: a label becomes the null label with this probability
    pretrained: str | None = None  # a local diffusers folder (UNet + scheduler) to fine-tune
    unet: UNetConfig = field(default_factory=UNetConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 100
    ema_decay: float = 0.995
    ema_warmup: bool = True  # decay_n = min(ema_decay, (1 + n) / (10 + n))
    ema: bool = True
    grad_clip: float = 1.0


@dataclass
class TrainerConfig:
    max_epochs: int = 100
    max_steps: int = -1
    # "DD:HH:MM:SS": cut training after this long (per invocation; resuming trains on).
    # None (default): train the full max_epochs / max_steps, whatever the clock says.
    max_time: str | None = None
    accelerator: str = "auto"
    devices: Any = 1  # int, list or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...
    precision: str = "32-true"
    check_val_every_n_epoch: int = 1
    limit_val_batches: float = 2
    log_every_n_steps: int = 20
    fast_dev_run: bool = False
    enable_progress_bar: bool = True
    deterministic: bool = False
    # torch CPU threads; None: OMP_NUM_THREADS if set, else min(4, half the usable CPUs)
    num_threads: int | None = None


@dataclass
class SamplerEntry:
    """Settings of one evaluated sampler (keyed by a label, by default the sampler's name)."""

    sampler: str | None = None  # registry name; defaults to the entry's key
    enabled: bool = True
    nfe: list[int] | None = None  # NFE budgets (overrides eval.nfe)
    steps: list[int] | None = None  # explicit step counts (override nfe)
    schedule: str | None = None
    schedule_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    coeffs: str | None = None  # IIA samplers: a coefficient file, "fit", or "default"
    calibration: str | None = None  # a calibrated grid: "fit" (samplerlab.calibrate) or a file


@dataclass
class IIAConfig:
    coeffs: str = "fit"  # fit | default | a file (for every IIA sampler without its own)
    M: int = 3
    num_samples: int = 16
    seed: int = 0
    check_model: bool = True  # a coefficient file must come from the evaluated model


@dataclass
class CalibrateConfig:
    samplers: list[str] = field(default_factory=list)  # race "<label>+cal" twins of these
    num_samples: int = 64
    iterations: int = 10
    teacher_steps: int = 100
    seed: int = 0


@dataclass
class EvalConfig:
    enabled: bool = True
    all_samplers: bool = True  # every registered sampler (at run time) plus eval.samplers
    exclude: list[str] = field(default_factory=list)
    samplers: dict[str, SamplerEntry] = field(default_factory=dict)
    nfe: list[int] = field(default_factory=lambda: [10, 20])
    num_samples: int = 500
    batch_size: int = 1000
    seed_offset: int = 0
    every_n_epochs: int = 0  # evaluate at these validation epochs (0: only at the end)
    at_end: bool = True
    feature: str = "classifier"
    inception_weights: str | None = None  # local torch-fidelity InceptionV3 weights (.pth)
    classifier_weights: str | None = None  # default: the one shipped for the dataset
    fid_floor: bool = True  # FID between two halves of the real set, reported beside
    cache_dir: str | None = None  # real statistics cache (default: <out_dir>/../fid_cache)
    grid_size: int = 64
    dtype: str = "float32"
    max_rows: int | None = None  # cap rows per network call
    compile: bool = False  # torch.compile the network call (CUDA graphs: mode reduce-overhead)
    fid_bootstrap: int = 50  # bootstrap resamples of the generated features (FID std); 0: none
    diverge_factor: float = 10.0  # "diverged": samples beyond this x the data's half-range
    diverge_fraction: float = 0.01  # ... for more than this fraction of the samples
    resume: bool = True  # reuse the finished rows of the same evaluation (rows.jsonl)
    iia: IIAConfig = field(default_factory=IIAConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)


@dataclass
class LoggerConfig:
    wandb: bool = True
    mode: str = "offline"  # offline | online | disabled
    project: str = "samplerlab"
    entity: str | None = None
    group: str | None = None
    dir: str | None = None  # default: out_dir


@dataclass
class RunConfig:
    name: str = "digits"
    out_dir: str = "runs/${name}"
    seed: int = 0
    ckpt_path: str | None = None  # resume training from this Lightning checkpoint
    overwrite: bool = False  # replace an earlier run in out_dir (default: refuse to mix runs)
    export: str | None = None  # after training, save the EMA UNet as a diffusers folder here
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def _one_line(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    head = msg[0] if msg else type(e).__name__
    key = getattr(e, "full_key", None)
    if key and key not in head:
        head = f"{key}: {head}"
    return head


def preset_path(name: str) -> Path:
    return Path(str(resources.files("samplerlab") / "configs" / f"{name}.yaml"))


def _load_yaml(spec: str) -> DictConfig:
    p = Path(spec)
    if not p.suffix and not p.exists():
        if spec not in PRESETS:
            raise ConfigError(
                f"config '{spec}' is neither a file nor a preset; presets: {', '.join(PRESETS)}"
            )
        p = preset_path(spec)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        cfg = OmegaConf.load(p)
    except Exception as e:
        raise ConfigError(f"{p}: cannot parse YAML ({_one_line(e)})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{p}: the top level must be a mapping of keys")
    return cfg


def load_config(
    *files: str, overrides: list[str] | tuple[str, ...] = (), base: dict[str, Any] | None = None
) -> DictConfig:
    """Schema defaults <- ``base`` <- files (left to right) <- ``key=value`` overrides."""
    schema = OmegaConf.structured(RunConfig)
    layers = [OmegaConf.create(base)] if base is not None else []
    layers += [_load_yaml(f) for f in files]
    dots = []
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override '{o}' must look like key=value")
        try:  # one override at a time: a YAML error names the override it is in
            dots.append(OmegaConf.from_dotlist([o]))
        except Exception as e:
            raise ConfigError(f"override '{o}': cannot parse its value ({_one_line(e)})") from None
    try:
        cfg = OmegaConf.merge(schema, *layers, *dots)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e)) from None
    validate(cfg)
    return cfg


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


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
