"""Tiny random latent pipelines saved to a folder, as diffusers' own tests build them: a
Stable-Diffusion-style one (text-conditional UNet, AutoencoderKL, CLIP text encoder and a
tokenizer from a 23-token vocabulary) and a DiT-style one (class-conditional transformer
with learned variance). Nothing is downloaded."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

VOCAB = [
    "l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "lo", "l</w>", "w</w>", "r</w>",
    "t</w>", "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider", "<unk>",
    "<|startoftext|>", "<|endoftext|>",
]  # fmt: skip
MERGES = "#version: 0.2\nl o\nlo w</w>\ne r</w>\n"
PROMPTS = ["lower newer", "wider lowest", "low", "newest tower"]


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=8,
    )  # fmt: skip


def make_sd(root: Path):
    """``root`` as a tiny SD-style folder written by diffusers' ``StableDiffusionPipeline``
    (the real layout: ``model_index.json``, a PNDM scheduler as SD v1 ships): latents
    ``(4, 4, 4)``, images ``(3, 8, 8)``, prompts of 16 tokens embedded in 16 dimensions."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, cross_attention_dim=16, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )  # fmt: skip
    vae = _vae()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
            vocab_size=len(VOCAB), max_position_embeddings=16,
        )
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as words:
        vocab, merges = Path(words) / "vocab.json", Path(words) / "merges.txt"
        vocab.write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
        merges.write_text(MERGES)
        tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=16)
    scheduler = PNDMScheduler(beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1)
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(root)  # fmt: skip
    return root


def make_dit(root: Path) -> Path:
    """``root`` as a tiny DiT-style folder written by diffusers' ``DiTPipeline``: 4 classes
    (null label 4), latents ``(4, 4, 4)``, learned variance."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    dit = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8,
        num_layers=2, sample_size=4, patch_size=2, num_embeds_ada_norm=4,
    )  # fmt: skip
    vae = _vae()
    DiTPipeline(transformer=dit, vae=vae, scheduler=DDIMScheduler()).save_pretrained(root)
    return root
