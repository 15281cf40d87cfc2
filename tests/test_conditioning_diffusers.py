"""A tiny class-conditional diffusers UNet through ``sample(cond=, guidance=, uncond=)``."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

import samplerlab as sl
from samplerlab.denoisers import from_diffusers
from samplerlab.samplers import SamplerError
from samplerlab.samplers.conditioning import condition

F64 = torch.float64
NULL = torch.tensor([3])  # the class embedding's 4th entry stands for "no label"


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg_unet")
    torch.manual_seed(0)
    UNet2DModel(
        sample_size=4, in_channels=1, out_channels=1, block_out_channels=(4, 8),
        layers_per_block=1, norm_num_groups=4, num_class_embeds=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).save_pretrained(root)  # fmt: skip
    DDPMScheduler(beta_schedule="linear", clip_sample=False).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def den(unet_folder):
    return from_diffusers(unet_folder, dtype=F64)


LABELS = torch.tensor([2, 0, 1, 2])
KW = {"steps": 6, "dtype": F64, "seeds": [5, 1, 9, 4]}


@pytest.mark.parametrize("name", ["ddim", "pmm", "srds"])
def test_cond_reaches_class_labels_like_bound_labels(unet_folder, den, name):
    """``cond=`` labels reach the UNet's ``class_labels`` with their rows, as labels bound
    by ``from_diffusers(class_labels=)`` do; a dict of keyword arguments is the same."""
    bound = from_diffusers(unet_folder, dtype=F64, class_labels=LABELS)
    ref = sl.sample(bound, name, shape=(4, 1, 4, 4), **KW).x
    got = sl.sample(den, name, shape=(4, 1, 4, 4), cond=LABELS, **KW).x
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    as_dict = sl.sample(den, name, shape=(4, 1, 4, 4), cond={"class_labels": LABELS}, **KW).x
    torch.testing.assert_close(as_dict, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "name", ["ddim", "pmm", "srds", "paradigms", "rmm_parallel", "dpm_adaptive"]
)
def test_guided_batch_equals_each_sample_alone(den, name):
    w = torch.tensor([3.0, 1.5, 1.0, 5.0])
    guided = {"cond": LABELS, "guidance": w, "uncond": NULL, "guidance_interval": (0.1, 20.0)}
    batch = sl.sample(den, name, shape=(4, 1, 4, 4), **guided, **KW)
    for k in range(4):
        one = {"cond": LABELS[k : k + 1], "guidance": w[k : k + 1], "uncond": NULL}
        one["guidance_interval"] = guided["guidance_interval"]
        kw = {**KW, "seeds": KW["seeds"][k : k + 1]}
        row = sl.sample(den, name, shape=(1, 1, 4, 4), **one, **kw).x
        torch.testing.assert_close(batch.x[k : k + 1], row, rtol=0, atol=1e-8)
    plain = sl.sample(den, name, shape=(4, 1, 4, 4), cond=LABELS, **KW)
    assert float((batch.x - plain.x).abs().max()) > 1e-4  # guidance changes the samples


def test_guided_unet_is_the_combination_of_its_two_predictions(den):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 4, 4, generator=g, dtype=F64) * 3
    sigma = torch.tensor([0.5, 1.0, 2.0, 8.0], dtype=F64)
    w = torch.tensor([2.0, 0.0, 4.0, 7.5])
    guided = condition(den, 4, cond=LABELS, guidance=w, uncond=NULL)
    d_c, d_u = den(x, sigma, LABELS), den(x, sigma, NULL.expand(4))
    want = d_u + w[:, None, None, None] * (d_c - d_u)
    torch.testing.assert_close(guided(x, sigma), want, rtol=0, atol=1e-12)
    res = sl.sample(den, "ddim", shape=(4, 1, 4, 4), cond=LABELS, guidance=w, uncond=NULL, **KW)
    assert res.nfe == 12 and res.rounds == 6  # both rows of each sample, in one call


def test_conflicting_or_unknown_conditioning_is_one_line(unet_folder, den):
    bound = from_diffusers(unet_folder, dtype=F64, class_labels=LABELS)
    with pytest.raises(SamplerError, match="bound by from_diffusers"):
        sl.sample(bound, "ddim", shape=(4, 1, 4, 4), cond=LABELS, **KW)
    with pytest.raises(SamplerError, match=r"cond keys \['prompt'\] are not arguments"):
        sl.sample(den, "ddim", shape=(4, 1, 4, 4), cond={"prompt": LABELS}, **KW)


def _pipeline(root, sub, network):
    network.save_pretrained(root / sub)
    DDPMScheduler(beta_schedule="scaled_linear", clip_sample=False).save_pretrained(
        root / "scheduler"
    )
    return root


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A tiny Stable-Diffusion-style pipeline folder: a text-conditional UNet on latents."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )  # fmt: skip
    return _pipeline(tmp_path_factory.mktemp("sd"), "unet", unet)


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    """A tiny DiT pipeline folder: a class-conditional transformer with learned variance."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    dit = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8,
        num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=4,
    )  # fmt: skip
    return _pipeline(tmp_path_factory.mktemp("dit"), "transformer", dit)


def _eps_denoised(net, den, x, sigma, **kw):
    """``x - sigma eps`` with eps from the diffusers network called directly."""
    alpha = (1 + sigma**2).rsqrt()[:, None, None, None]
    eps = net(x * alpha, den.vp.t(sigma), **kw).sample[:, :4]
    return x - sigma[:, None, None, None] * eps


def test_text_conditional_unet_gets_embeddings_as_encoder_hidden_states(sd_folder):
    den = from_diffusers(sd_folder, dtype=F64)
    unet = den.model_fn.unet
    assert type(unet).__name__ == "UNet2DConditionModel" and den.data_shape == (4, 8, 8)
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(3, 5, 8, generator=g, dtype=F64)  # 3 prompts' embeddings
    empty = torch.zeros(1, 5, 8, dtype=F64)  # the empty prompt's
    x = torch.randn(3, 4, 8, 8, generator=g, dtype=F64)
    sigma = torch.tensor([0.5, 2.0, 6.0], dtype=F64)
    d_c = _eps_denoised(unet, den, x, sigma, encoder_hidden_states=emb)
    d_u = _eps_denoised(unet, den, x, sigma, encoder_hidden_states=empty.expand(3, -1, -1))
    guided = condition(den, 3, cond=emb, guidance=5.0, uncond=empty)
    torch.testing.assert_close(guided(x, sigma), d_u + 5.0 * (d_c - d_u), rtol=0, atol=1e-10)
    kw = {"steps": 5, "dtype": F64, "seeds": [1, 2, 3], "guidance": 5.0, "uncond": empty}
    for name in ("pmm", "srds"):
        batch = sl.sample(den, name, shape=(3, 4, 8, 8), cond=emb, **kw).x
        for k in range(3):
            one = {**kw, "seeds": [k + 1]}
            row = sl.sample(den, name, shape=(1, 4, 8, 8), cond=emb[k : k + 1], **one).x
            torch.testing.assert_close(batch[k : k + 1], row, rtol=0, atol=1e-8)
    with pytest.raises(SamplerError, match=r"needs conditioning \(encoder_hidden_states\)"):
        sl.sample(den, "ddim", steps=2, shape=(1, 4, 8, 8), dtype=F64)


def test_dit_gets_class_labels_and_drops_its_variance_channels(dit_folder):
    den = from_diffusers(dit_folder, dtype=F64)
    dit = den.model_fn.unet
    assert type(dit).__name__ == "DiTTransformer2DModel" and den.data_shape == (4, 8, 8)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 8, 8, generator=g, dtype=F64)
    sigma = torch.tensor([0.3, 1.0, 9.0], dtype=F64)
    labels = torch.tensor([0, 2, 1])
    want = _eps_denoised(dit, den, x, sigma, class_labels=labels)
    torch.testing.assert_close(den(x, sigma, labels), want, rtol=0, atol=1e-10)
    null = torch.tensor([3])
    kw = {"steps": 5, "dtype": F64, "seeds": [4, 5, 6], "guidance": 4.0, "uncond": null}
    batch = sl.sample(den, "pmm", shape=(3, 4, 8, 8), cond=labels, **kw)
    assert batch.x.shape == (3, 4, 8, 8) and bool(torch.isfinite(batch.x).all())
    for k in range(3):
        one = {**kw, "seeds": [4 + k]}
        row = sl.sample(den, "pmm", shape=(1, 4, 8, 8), cond=labels[k : k + 1], **one).x
        torch.testing.assert_close(batch.x[k : k + 1], row, rtol=0, atol=1e-8)
