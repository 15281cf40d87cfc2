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
from .checks import check_accelerator, parse_max_time, validate

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
    # DDP: split the parallel samplers' calls over the ranks (their rows equal 1 process's)
    spread_rows: bool = False
    compile: bool = False  # torch.compile the network call (CUDA graphs: mode reduce-overhead)
    fid_bootstrap: int = 50  # bootstrap resamples of the generated features (FID std); 0: none
    diverge_factor: float = 10.0  # "diverged": samples beyond this x the data's half-range
    diverge_fraction: float = 0.01  # ... for more than this fraction of the samples
    resume: bool = True  # reuse the finished rows of the same evaluation (rows.jsonl)
    # Classifier-free guidance scales of a class-conditional model: every sampler x budget
    # once per scale, on balanced labels (empty: unguided, the null label).
    guidance: list[float] = field(default_factory=list)
    guidance_interval: list[float] | None = None  # guide only for sigma in (lo, hi]
    class_accuracy: bool = True  # guided rows: the dataset classifier's accuracy on the labels
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


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


# check_accelerator, parse_max_time and validate live in .checks; importable from here too.
__all__ = [
    "PRESETS",
    "RunConfig",
    "check_accelerator",
    "load_config",
    "parse_max_time",
    "preset_path",
    "to_yaml",
    "validate",
]
