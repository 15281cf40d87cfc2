"""Tiny SD-like (prompts) and DiT-like (class labels) latent pipelines through every sampler.

Every registered sampler runs with guidance on both pipelines: a batch of two samples (each
its own condition and guidance scale) equals each sample run alone (float64, 1e-8). The IIA
samplers run with their default coefficients (which reproduce the base sampler's steps
through IIA's code path); one test fits iia_ddim coefficients under guidance on (noise,
prompt) pairs first.
"""

from __future__ import annotations

import pytest
import torch
from helpers_latent import PROMPTS, make_dit, make_sd

import samplerlab as sl
from samplerlab.latent import LatentPipeline, generate, load, read_prompts
from samplerlab.samplers import SAMPLERS, SamplerError

F64 = torch.float64
STEPS = 2
SLOW_SAMPLERS = {"dpm_adaptive"}  # ~70-100 NFE per sample here


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return make_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    return make_dit(tmp_path_factory.mktemp("dit"))


@pytest.fixture(scope="module")
def sd(sd_folder) -> LatentPipeline:
    return load(sd_folder, dtype=F64)


@pytest.fixture(scope="module")
def dit(dit_folder) -> LatentPipeline:
    return load(dit_folder, dtype=F64)


def test_sd_pipeline_encodes_prompts_and_decodes(sd):
    assert sd.kind == "text" and sd.latent_shape == (4, 4, 4) and sd.image_shape == (3, 8, 8)
    emb = sd.encode_prompts(PROMPTS, batch_size=3)
    assert emb.shape == (4, 16, 16) and emb.dtype == F64
    for k, p in enumerate(PROMPTS):  # each prompt's embedding is independent of its batch
        torch.testing.assert_close(sd.encode_prompts([p]), emb[k : k + 1], rtol=0, atol=0)
    ids = sd.tokenizer(PROMPTS[:1], padding="max_length", max_length=16, return_tensors="pt")
    torch.testing.assert_close(emb[:1], sd.text_encoder(ids.input_ids)[0], rtol=0, atol=0)
    torch.testing.assert_close(sd.uncond(), sd.encode_prompts([""]), rtol=0, atol=0)
    assert float((emb[0] - emb[1]).abs().max()) > 1e-3  # prompts differ
    z = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    img = sd.decode(z, batch_size=2)
    want = sd.vae.decode(z / sd.vae.config.scaling_factor).sample.float().clamp(-1, 1)
    assert img.shape == (3, 3, 8, 8) and img.dtype == torch.float32
    torch.testing.assert_close(img, want, rtol=0, atol=1e-6)
    with pytest.raises(SamplerError, match=r"latents have shape \(3, 4, 8, 8\)"):
        sd.decode(torch.zeros(3, 4, 8, 8))


def test_generate_is_sample_then_decode_whatever_the_batch(sd):
    """generate(): sample k has seed k and prompt k mod P; batches do not change a sample."""
    seeds = [3, 4, 5, 6, 7]
    got = generate(sd, "dpmpp_2m", steps=3, seeds=seeds, values=PROMPTS[:2], guidance=4.0,
                   batch_size=2, dtype=F64)  # fmt: skip
    cond = sd.encode_prompts([PROMPTS[k % 2] for k in range(5)])
    res = sl.sample(sd.denoiser, "dpmpp_2m", steps=3, shape=(5, 4, 4, 4), seeds=seeds,
                    cond=cond, guidance=4.0, uncond=sd.encode_prompts([""]), dtype=F64)  # fmt: skip
    torch.testing.assert_close(got.latents, res.x, rtol=0, atol=1e-10)
    torch.testing.assert_close(got.images, sd.decode(res.x), rtol=0, atol=1e-6)
    assert got.images.shape == (5, 3, 8, 8) and got.nfe == res.nfe == 6.0


def _batch_equals_alone(pipe, name, cond, uncond, steps=STEPS):
    w = torch.tensor([3.0, 1.5])
    kw = {"steps": steps, "dtype": F64, "uncond": uncond}
    batch = sl.sample(pipe.denoiser, name, shape=(2, 4, 4, 4), seeds=[7, 2], cond=cond,
                      guidance=w, **kw)  # fmt: skip
    assert bool(torch.isfinite(batch.x).all())
    for k, seed in enumerate([7, 2]):
        one = sl.sample(pipe.denoiser, name, shape=(1, 4, 4, 4), seeds=[seed],
                        cond=cond[k : k + 1], guidance=w[k : k + 1], **kw)  # fmt: skip
        torch.testing.assert_close(batch.x[k : k + 1], one.x, rtol=0, atol=1e-8)
    assert pipe.decode(batch.x).shape == (2, *pipe.image_shape)


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SAMPLERS else n for n in names]


@pytest.mark.parametrize("name", _params(SAMPLERS))
def test_every_sampler_on_sd_with_prompts_and_guidance(sd, name):
    _batch_equals_alone(sd, name, sd.encode_prompts(PROMPTS[1:3]), sd.uncond())


@pytest.mark.parametrize("name", _params(SAMPLERS))
def test_every_sampler_on_dit_with_class_labels_and_guidance(dit, name):
    _batch_equals_alone(dit, name, dit.labels([1, 3]), dit.uncond())


def test_dit_pipeline_labels_null_class_and_errors(dit, sd):
    assert dit.kind == "class" and dit.num_classes == 4 and dit.null_label == 4
    assert dit.uncond().tolist() == [4] and dit.image_shape == (3, 8, 8)
    with pytest.raises(SamplerError, match=r"class labels \[4\] are out of range"):
        dit.labels([0, 4])
    with pytest.raises(SamplerError, match="takes no prompts"):
        dit.encode_prompts(["low"])
    with pytest.raises(SamplerError, match="takes no labels"):
        sd.labels([0])
    with pytest.raises(SamplerError, match="needs prompts"):
        generate(sd, "ddim", steps=1, seeds=[0])


def test_fitted_iia_under_guidance_batch_equals_alone(sd):
    """iia_ddim coefficients fitted under guidance on (noise, prompt) pairs (each fitting
    sample its own prompt, samplerlab.iia.fit_coefficients(cond=, guidance=, uncond=))
    sample a batch of prompts as each alone."""
    from samplerlab.iia import fit_coefficients

    cond, empty = sd.encode_prompts(PROMPTS[:2]), sd.uncond()
    fit_cond = sd.encode_prompts([PROMPTS[k % 4] for k in range(4)])
    c = fit_coefficients(sd.denoiser, "iia_ddim", steps=3, M=2, num_samples=4,
                         cond=fit_cond, guidance=3.0, uncond=empty)  # fmt: skip
    default = type(c).defaults("iia_ddim", c.sigmas)
    assert float((c.coeffs - default.coeffs).abs().max()) > 1e-6  # really fitted
    kw = {"steps": 3, "dtype": F64, "coeffs": c, "guidance": 3.0, "uncond": empty}
    batch = sl.sample(sd.denoiser, "iia_ddim", shape=(2, 4, 4, 4), seeds=[0, 1], cond=cond, **kw)
    for k in range(2):
        one = sl.sample(sd.denoiser, "iia_ddim", shape=(1, 4, 4, 4), seeds=[k],
                        cond=cond[k : k + 1], **kw)  # fmt: skip
        torch.testing.assert_close(batch.x[k : k + 1], one.x, rtol=0, atol=1e-8)
    plain = sl.sample(sd.denoiser, "iia_ddim", shape=(2, 4, 4, 4), seeds=[0, 1], cond=cond,
                      **{**kw, "coeffs": None})  # fmt: skip
    assert float((batch.x - plain.x).abs().max()) > 1e-8  # the coefficients change samples


def test_bad_folders_and_prompt_files_are_one_line(tmp_path, sd_folder):
    with pytest.raises(SamplerError, match="does not exist"):
        load(tmp_path / "nope")
    import shutil

    broken = tmp_path / "novae"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(SamplerError, match=r"no vae/ folder"):
        load(broken)
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    with pytest.raises(SamplerError, match="holds no prompt"):
        read_prompts(empty)
    empty.write_text("a red cube\n\nlow tower  \n")
    assert read_prompts(empty) == ["a red cube", "low tower"]


def test_ddim_with_guidance_matches_diffusers_stable_diffusion_pipeline(sd_folder, sd):
    """Oracle: diffusers' own StableDiffusionPipeline (prompts tokenized and encoded, CFG
    against the empty prompt, DDIM eta=0, VAE decode) from the same folder and initial
    latents gives the images of our ddim on its timesteps (float64; diffusers' float32
    alphas table upcast, as in test_diffusers_parity)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from samplerlab.samplers.conditioning import condition

    oracle = StableDiffusionPipeline.from_pretrained(sd_folder, torch_dtype=F64)
    oracle.scheduler = DDIMScheduler.from_config(
        oracle.scheduler.config, set_alpha_to_one=True, clip_sample=False
    )
    oracle.set_progress_bar_config(disable=True)
    sch = oracle.scheduler
    for key in ("alphas_cumprod", "final_alpha_cumprod"):
        setattr(sch, key, getattr(sch, key).double())
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    ref = oracle(PROMPTS[:2], num_inference_steps=5, guidance_scale=3.0, latents=z,
                 output_type="pt").images  # fmt: skip
    sch.set_timesteps(5)
    sigmas = torch.cat([sd.denoiser.vp.sigmas[sch.timesteps.long()], torch.zeros(1, dtype=F64)])
    guided = condition(sd.denoiser, 2, cond=sd.encode_prompts(PROMPTS[:2]), guidance=3.0,
                       uncond=sd.uncond())  # fmt: skip
    x = SAMPLERS["ddim"](guided, z * (1 + sigmas[0] ** 2).sqrt(), sigmas)
    lat = oracle(PROMPTS[:2], num_inference_steps=5, guidance_scale=3.0, latents=z,
                 output_type="latent").images  # fmt: skip
    torch.testing.assert_close(x, lat, rtol=0, atol=1e-12 * float(lat.abs().max()))
    ours = (sd.decode(x) + 1) / 2  # our images in [-1, 1]; diffusers' in [0, 1]
    assert ref.shape == ours.shape == (2, 3, 8, 8)
    torch.testing.assert_close(ours, ref.float(), rtol=0, atol=1e-6)
