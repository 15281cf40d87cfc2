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
