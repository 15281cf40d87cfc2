"""Tiny random latent pipelines saved to a folder, as diffusers' own tests build them: a
Stable-Diffusion-style one (text-conditional UNet, AutoencoderKL, CLIP text encoder and a
tokenizer from a 23-token vocabulary) and a DiT-style one (class-conditional transformer
with learned variance). Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = [
    "l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "lo", "l</w>", "w</w>", "r</w>",
    "t</w>", "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider", "<unk>",
    "<|startoftext|>", "<|endoftext|>",
]  # fmt: skip
MERGES = "#version: 0.2\nl o\nlo w</w>\ne r</w>\n"
PROMPTS = ["lower newer", "wider lowest", "low", "newest tower"]


def _vae(root: Path) -> None:
    from diffusers import AutoencoderKL

    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=8,
    ).save_pretrained(root / "vae")  # fmt: skip


def _scheduler(root: Path) -> None:
    from diffusers import DDIMScheduler

    DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False).save_pretrained(
        root / "scheduler"
    )


def make_sd(root: Path) -> Path:
    """``root`` as a tiny SD-style folder: latents ``(4, 4, 4)``, images ``(3, 8, 8)``,
    prompts of 16 tokens embedded in 16 dimensions."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, cross_attention_dim=16, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).save_pretrained(root / "unet")  # fmt: skip
    _vae(root)
    CLIPTextModel(
        CLIPTextConfig(
            hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
            vocab_size=len(VOCAB), max_position_embeddings=16,
        )
    ).save_pretrained(root / "text_encoder")  # fmt: skip
    words = root / "words"
    words.mkdir()
    (words / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    (words / "merges.txt").write_text(MERGES)
    tok = CLIPTokenizer(str(words / "vocab.json"), str(words / "merges.txt"), model_max_length=16)
    tok.save_pretrained(root / "tokenizer")
    _scheduler(root)
    return root


def make_dit(root: Path) -> Path:
    """``root`` as a tiny DiT-style folder: 4 classes (null label 4), latents ``(4, 4, 4)``."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8,
        num_layers=2, sample_size=4, patch_size=2, num_embeds_ada_norm=4,
    ).save_pretrained(root / "transformer")  # fmt: skip
    _vae(root)
    _scheduler(root)
    return root
