"""``DiffusionModule``: EDM preconditioning and loss (Karras et al. 2022, Table 1 and Eq. 2/8)
by default; VP epsilon / v-prediction DDPM training (Ho et al. 2020; Salimans & Ho 2022) as
options. ``.denoiser`` is the EMA network in eval mode as a samplerlab denoiser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ..errors import ConfigError, TrainingError
from ..samplers.core import SamplerError
from ..samplers.denoisers import EDMDenoiser, VPDenoiser
from ..samplers.schedules import DiscreteVP, betas_for
from .networks import build_backbone, load_pretrained, unet_config

EDM_TIME_SCALE = 1000.0  # the UNet's sinusoidal embedding sees 1000 * c_noise


class EMA(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` that records whether the live module holds the average.

    Lightning swaps the averaged weights into the module for validation and copies them in
    at the end of training; ``live_is_average`` tells ``DiffusionModule.denoiser`` which copy
    is the EMA one at any moment.
    """

    live_is_average = False

    def __init__(self, decay: float = 0.999, warmup: bool = True, **kwargs: Any) -> None:
        super().__init__(decay=decay, **kwargs)
        if warmup:
            # decay_n = min(decay, (1 + n) / (10 + n)): short runs are not dominated by the init.
            self._kwargs["avg_fn"] = _warmup_ema(decay)

    def _swap_models(self, pl_module: pl.LightningModule) -> None:
        super()._swap_models(pl_module)
        self.live_is_average = not self.live_is_average

    def _copy_average_to_current(self, pl_module: pl.LightningModule) -> None:
        super()._copy_average_to_current(pl_module)
        self.live_is_average = True


def _warmup_ema(decay: float) -> Any:
    @torch.no_grad()
    def avg_fn(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        d = min(decay, (1 + float(num_averaged)) / (10 + float(num_averaged)))
        return averaged + (current - averaged) * (1 - d)

    return avg_fn


class DiffusionModule(pl.LightningModule):
    """Trains ``D(x, sigma)``; all callbacks see only ``.denoiser``."""

    def __init__(
        self,
        config: dict[str, Any],
        data_shape: tuple[int, ...],
        num_classes: int = 0,
        unet_config: dict[str, Any] | None = None,
        scheduler_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        cfg = OmegaConf.create(config)
        self.cfg = cfg
        m = cfg.model
        self.data_shape = tuple(int(s) for s in data_shape)
        self.num_classes = int(m.num_classes)
        if self.num_classes > 0 and num_classes and self.num_classes != num_classes:
            raise ConfigError(
                f"model.num_classes: the data have {num_classes} classes, not {self.num_classes}"
            )
        self.param = m.parameterization
        # diffusers' clip_sample (fine-tuned pipelines): clamp x0_hat to [-1, 1] when sampling.
        self.clip = bool((scheduler_config or {}).get("clip_sample", False))
        if m.backbone == "unet" and unet_config is None:
            unet_config = unet_config_for(cfg, self.data_shape)
            self.hparams["unet_config"] = unet_config
        self.net = build_backbone(m, self.data_shape, self.num_classes, unet_config)
        if self.param != "edm":
            ac = _alphas_cumprod(m, scheduler_config)
            self.register_buffer("alphas_cumprod", ac.float(), persistent=False)
            self.vp = DiscreteVP(ac)

    # --- the denoiser seen by samplers and callbacks -------------------------------------

    def _ema_callback(self) -> WeightAveraging | None:
        trainer = self._trainer
        if trainer is None:
            return None
        return next((c for c in trainer.callbacks if isinstance(c, WeightAveraging)), None)

    def ema_net(self) -> nn.Module:
        """The EMA copy of the network (the live one when it holds the average)."""
        cb = self._ema_callback()
        avg = getattr(cb, "_average_model", None)
        if avg is None or getattr(cb, "live_is_average", True):
            return self.net
        return avg.module.net

    def make_denoiser(
        self, net: nn.Module, labels: Tensor | None = None, compile: bool | dict = False
    ) -> Any:
        """``net`` as ``D(x, sigma)``, and for a class-conditional model also as the
        conditional ``D(x, sigma, cond)`` of :mod:`samplerlab.samplers.conditioning`
        (``cond``: one class label per row of ``x``; the null label ``num_classes``, or any
        negative label, is "no condition"; ``sample(..., cond=labels, guidance=w,
        uncond=module.null_label)``). Without ``cond`` the model is called with
        ``labels`` (per sample, bound by closure: training) or else the null label.
        ``compile``: ``torch.compile`` the network call (``True``: CUDA graphs)."""
        m = self.cfg.model
        k = self.num_classes

        def call(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
            y = None
            if cond is not None:
                if k == 0:
                    raise SamplerError(
                        "cond=: this model is unconditional (model.num_classes=0); train it "
                        "with model.num_classes=K and data.conditional=true to pass labels"
                    )
                # Rows aligned with x's by the conditioning wrapper; negative: the null label.
                y = cond.to(x.device, torch.long)
                y = torch.where(y < 0, torch.full_like(y, k), y)
            elif k > 0:
                y = labels
                if y is None:  # unconditional: the null class
                    y = torch.full((x.shape[0],), k, device=x.device)
                elif y.shape[0] != x.shape[0]:  # batched time points of the same samples
                    y = y.repeat(x.shape[0] // y.shape[0])
            return net(x, t, y).to(x.dtype)

        if self.param == "edm":
            return EDMDenoiser(
                lambda x, c_noise, *cond: call(x, EDM_TIME_SCALE * c_noise, *cond),
                sigma_data=m.sigma_data,
                sigma_min=m.sigma_min,
                sigma_max=m.sigma_max,
                data_shape=self.data_shape,
                compile=compile,
            )
        return VPDenoiser(
            call,
            self.vp,
            prediction_type="epsilon" if self.param == "eps" else "v_prediction",
            clip_denoised=self.clip,
            data_shape=self.data_shape,
            compile=compile,
        )

    @property
    def null_label(self) -> Tensor:
        """The "no condition" label of a class-conditional model (``uncond=`` of
        classifier-free guidance): ``[num_classes]``, the class that label dropout trains."""
        if self.num_classes == 0:
            raise ConfigError("model.num_classes: an unconditional model has no null label")
        return torch.tensor([self.num_classes])

    @property
    def denoiser(self) -> Any:
        """The EMA network in eval mode as a samplerlab denoiser (EDMDenoiser / VPDenoiser)."""
        return self.denoiser_for()

    def denoiser_for(self, compile: bool | dict = False) -> Any:
        """:attr:`denoiser`, optionally with the network call compiled (``eval.compile``)."""
        net = self.ema_net()
        if net is not self.net:
            net.eval()
        elif self._trainer is None or not self.trainer.training:
            self.eval()
        return self.make_denoiser(net, compile=compile)

    # --- training ------------------------------------------------------------------------

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.make_denoiser(self.net, labels)(x, sigma)

    def _labels(self, y: Tensor, gen: torch.Generator) -> Tensor | None:
        """The training labels of a class-conditional model: label dropout (Ho & Salimans
        2022, "Classifier-Free Diffusion Guidance", Algorithm 1: the condition is replaced by
        the null label with probability ``p_uncond``) trains the conditional and the
        unconditional model in one network; unlabelled items (``y < 0``), and every item
        when ``data.conditional`` is false (a conditional fine-tune source on unlabelled
        use), get the null label."""
        if self.num_classes == 0:
            return None
        drop = torch.rand(y.shape, generator=gen, device=y.device) < self.cfg.model.p_uncond
        if not OmegaConf.select(self.cfg, "data.conditional", default=True):
            drop = torch.ones_like(drop)
        return torch.where(drop | (y < 0), torch.full_like(y, self.num_classes), y)

    def loss(self, batch: Any, gen: torch.Generator) -> Tensor:
        x0, y = batch
        m = self.cfg.model
        labels = self._labels(y, gen)
        n = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        if self.param == "edm":
            # EDM: log-normal sigma, loss weight (sigma^2 + sd^2) / (sigma sd)^2.
            r = torch.randn(x0.shape[0], generator=gen, device=x0.device, dtype=x0.dtype)
            sigma = (m.P_mean + m.P_std * r).exp()
            s = sigma.reshape(-1, *[1] * (x0.ndim - 1))
            weight = (s**2 + m.sigma_data**2) / (s * m.sigma_data) ** 2
            D = self(x0 + s * n, sigma, labels)
            return (weight * (D - x0) ** 2).mean()
        # VP DDPM: uniform timestep, x_t = sqrt(abar) x0 + sqrt(1 - abar) eps.
        T = self.alphas_cumprod.numel()
        t = torch.randint(0, T, (x0.shape[0],), generator=gen, device=x0.device)
        ab = self.alphas_cumprod[t].reshape(-1, *[1] * (x0.ndim - 1)).to(x0.dtype)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * n
        target = n if self.param == "eps" else ab.sqrt() * n - (1 - ab).sqrt() * x0
        out = self.net(xt, t.to(x0.dtype), labels)
        return ((out - target) ** 2).mean()

    def _generator(self, *key: int) -> torch.Generator:
        # Training noise depends only on (seed, step, rank): resuming reproduces it exactly.
        seed = int(self.cfg.seed)
        for k in key:
            seed = (seed * 1_000_003 + int(k)) % (2**63 - 1)
        return torch.Generator(device=self.device).manual_seed(seed)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        gen = self._generator(1, self.global_step, self.global_rank)
        loss = self.loss(batch, gen)
        self._step_loss = loss.detach()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop before a non-finite loss or gradient reaches the weights (or the EMA).

        One host sync per step (Lightning's progress bar already reads the loss every step);
        the decision is shared by every rank so that DDP processes stop together. The
        exception leaves the weights and the last checkpoint as they were.
        """
        loss = getattr(self, "_step_loss", None)
        if loss is None:
            return
        self._step_loss = None
        checks = [loss.float().reshape(1)]
        if str(self.trainer.precision) not in ("16-mixed", "16"):  # GradScaler skips inf steps
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            if grads:
                checks.append(_total_norm(grads).reshape(1).float())
        values = torch.cat(checks)
        bad = not bool(torch.isfinite(values).all())
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            what = "loss" if not bool(torch.isfinite(values[0])) else "gradient"
            value = float(values[0] if what == "loss" else values[-1])
            raise TrainingError(
                f"training stopped at step {self.global_step} (epoch {self.current_epoch}): the "
                f"training {what} is {value} (optim.lr={self.cfg.optim.lr:g}: try a lower one); "
                "no update was applied"
            )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        gen = self._generator(2, batch_idx, self.global_rank)
        self.log("val/loss", self.loss(batch, gen), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        opt = torch.optim.AdamW(
            self.net.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay
        )
        warm = max(int(o.warmup_steps), 0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: min(1.0, (step + 1) / warm) if warm else 1.0
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- diffusers export --------------------------------------------------------------

    def check_exportable(self) -> None:
        if self.param == "edm" or self.cfg.model.backbone != "unet":
            raise ConfigError(
                "export: diffusers folders hold VP UNets; train with model.backbone=unet "
                "and model.parameterization=eps or v"
            )

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the EMA UNet and its DDPM scheduler as a diffusers folder (safetensors)."""
        from diffusers import DDPMScheduler

        self.check_exportable()
        folder = Path(folder)
        self.ema_net().unet.save_pretrained(folder / "unet", safe_serialization=True)
        sched = DDPMScheduler(
            num_train_timesteps=self.alphas_cumprod.numel(),
            trained_betas=_betas(self.vp.alphas_cumprod).tolist(),
            prediction_type="epsilon" if self.param == "eps" else "v_prediction",
            clip_sample=self.clip,
        )
        sched.save_pretrained(folder / "scheduler")
        return folder


def _total_norm(grads: list[Tensor]) -> Tensor:
    """The 2-norm of all gradients together (torch >= 2.6 has it built in)."""
    total = getattr(torch.nn.utils, "get_total_norm", None)
    if total is not None:
        return total(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _betas(ac: Tensor) -> Tensor:
    prev = torch.cat([ac.new_ones(1), ac[:-1]])
    return 1 - ac / prev


def _alphas_cumprod(m: DictConfig, scheduler_config: dict[str, Any] | None) -> Tensor:
    if scheduler_config is not None:
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(scheduler_config).alphas_cumprod.double()
    kind = "squaredcos_cap_v2" if m.beta_schedule == "cosine" else "linear"
    betas = betas_for(kind, m.num_train_timesteps)
    return torch.cumprod(1 - betas, 0)


def unet_config_for(cfg: DictConfig, shape: tuple[int, ...]) -> dict[str, Any]:
    return unet_config(cfg.model, shape, int(cfg.model.num_classes))


def build_module(cfg: DictConfig, data_shape: tuple[int, ...], num_classes: int) -> DiffusionModule:
    """A new module from the run config; fine-tunes from ``model.pretrained`` if set.

    ``data.conditional=true`` with ``model.num_classes=0`` takes the data's number of
    classes (recorded in ``cfg``, hence in the saved config and the checkpoint).
    """
    m = cfg.model
    if cfg.data.conditional and m.num_classes == 0 and m.pretrained is None:
        if num_classes < 1:
            raise ConfigError(
                f"data.conditional: the {cfg.data.name} data have no class labels "
                "(image_folder: one subfolder per class)"
            )
        m.num_classes = int(num_classes)
    config = OmegaConf.to_container(cfg, resolve=True)
    if m.pretrained is None:
        return DiffusionModule(config, data_shape, num_classes)
    ucfg, sched, state = load_pretrained(m.pretrained)
    want = (ucfg["in_channels"], ucfg["sample_size"], ucfg["sample_size"])
    if tuple(data_shape) != want:
        raise ConfigError(
            f"model.pretrained: the UNet takes {want} images but the data are {tuple(data_shape)}"
        )
    pred = sched.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction"):
        raise ConfigError(f"model.pretrained: prediction_type '{pred}' cannot be fine-tuned here")
    config["model"]["backbone"] = "unet"
    config["model"]["parameterization"] = "eps" if pred == "epsilon" else "v"
    n_cls = (ucfg.get("num_class_embeds") or 1) - 1
    config["model"]["num_classes"] = max(n_cls, 0)
    module = DiffusionModule(
        config, data_shape, num_classes, unet_config=ucfg, scheduler_config=sched
    )
    module.net.unet.load_state_dict(state)
    return module
