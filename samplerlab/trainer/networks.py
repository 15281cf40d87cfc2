"""Backbones: a diffusers ``UNet2DModel`` built from config (images) and an MLP (vectors).

Both are called as ``net(x, t, labels)`` with ``t: [B]`` float (the VP timestep, or
``1000 * c_noise`` for EDM-preconditioned models) and ``labels: [B]`` long or None. A
class-conditional backbone (``num_classes = K > 0``) has ``K + 1`` label embeddings: the
UNet diffusers' class embedding (``num_class_embeds``, added to its time embedding), the MLP
its own table (also added to the time embedding); label ``K`` is the null label that label
dropout trains for classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.double()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class MLP(nn.Module):
    """A residual MLP on flat vectors with a sinusoidal time embedding."""

    def __init__(
        self, dim: int, hidden: int = 256, depth: int = 3, emb_dim: int = 64, num_classes: int = 0
    ) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.t_mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        shape = x.shape
        w = self.inp.weight
        e = self.t_mlp(timestep_embedding(t, self.emb_dim).to(w.dtype))  # [B, hidden]
        if self.label is not None and labels is not None:
            e = e + self.label(labels)
        h = self.inp(x.reshape(shape[0], -1).to(e.dtype)) + e
        for block in self.blocks:
            h = h + block(h + e)
        return self.out(h).reshape(shape)


class UNet(nn.Module):
    """A diffusers ``UNet2DModel`` called as ``net(x, t, labels)``."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        dtype = next(self.unet.parameters()).dtype
        return self.unet(x.to(dtype), t, class_labels=labels).sample


def unet_config(cfg: Any, shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    u = cfg.unet
    if len(u.down_block_types) != len(u.block_out_channels) or len(u.up_block_types) != len(
        u.block_out_channels
    ):
        raise ConfigError(
            "model.unet: down_block_types, up_block_types and block_out_channels need equal lengths"
        )
    levels = len(u.block_out_channels)
    if len(shape) != 3:
        raise ConfigError(f"model.backbone: the UNet takes images [C, H, W], the data are {shape}")
    if shape[-1] % 2 ** (levels - 1) or shape[-2] % 2 ** (levels - 1):
        raise ConfigError(
            f"data.image_size: {shape[-1]} is not divisible by 2**{levels - 1} "
            f"(the UNet halves it {levels - 1} time(s): model.unet.block_out_channels)"
        )
    return {
        "sample_size": shape[-1],
        "in_channels": shape[0],
        "out_channels": shape[0],
        "block_out_channels": list(u.block_out_channels),
        "layers_per_block": u.layers_per_block,
        "down_block_types": list(u.down_block_types),
        "up_block_types": list(u.up_block_types),
        "norm_num_groups": u.norm_num_groups,
        "attention_head_dim": u.attention_head_dim,
        "dropout": u.dropout,
        "num_class_embeds": num_classes + 1 if num_classes > 0 else None,
    }


def build_backbone(
    cfg: Any, shape: tuple[int, ...], num_classes: int, unet_cfg: dict[str, Any] | None
) -> nn.Module:
    if cfg.backbone == "mlp":
        m = cfg.mlp
        return MLP(math.prod(shape), m.hidden, m.depth, m.emb_dim, num_classes)
    from diffusers import UNet2DModel

    if len(shape) != 3:
        raise ConfigError(f"model.backbone: unet needs images [C, H, W], the data are {shape}")
    try:
        return UNet(UNet2DModel.from_config(unet_cfg))
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"model.unet: cannot build the UNet ({str(e).splitlines()[0]})") from None


def load_pretrained(path: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Tensor]]:
    """A local diffusers folder -> (UNet config, scheduler config, UNet state dict)."""
    from diffusers import UNet2DModel

    from ..denoisers import load_scheduler_config

    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"model.pretrained: folder {root} does not exist")
    sub = "unet" if (root / "unet" / "config.json").is_file() else None
    if sub is None and not (root / "config.json").is_file():
        raise ConfigError(
            f"model.pretrained: {root} holds neither config.json nor unet/config.json"
        )
    try:
        unet = UNet2DModel.from_pretrained(root, subfolder=sub, local_files_only=True)
        sched = load_scheduler_config(root)
    except Exception as e:
        raise ConfigError(
            f"model.pretrained: cannot load {root} ({str(e).splitlines()[0]})"
        ) from None
    cfg = json.loads(json.dumps(dict(unet.config), default=str))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return cfg, sched, unet.state_dict()
