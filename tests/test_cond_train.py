"""Class-conditional training (both backbones), label dropout, the trained denoiser through
the conditioning contract, checkpoints, the digits_cond preset and the guided evaluation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import samplerlab as sl
from samplerlab.analytic import ClassConditionalMixture
from samplerlab.cli import main
from samplerlab.errors import ConfigError
from samplerlab.evaluation.features import RawFeatures
from samplerlab.evaluation.fid import fid_from_stats, stats_of
from samplerlab.guidance_eval import (
    GuidedJob,
    balanced_labels,
    class_accuracy,
    digits_reference,
    evaluate_guided,
    plan_guided_jobs,
    run_guided_job,
)
from samplerlab.samplers import SamplerError
from samplerlab.trainer.checkpoints import load_checkpoint
from samplerlab.trainer.config import PRESETS, load_config
from samplerlab.trainer.data import DiffusionDataModule
from samplerlab.trainer.module import build_module
from samplerlab.trainer.run import train

F64 = torch.float64
COND = ["data.name=digits", "data.conditional=true", "model.num_classes=10", "eval.enabled=false"]
TINY_UNET = [
    "model.backbone=unet",
    "model.unet.block_out_channels=[8,16]",
    "model.unet.norm_num_groups=4",
    "model.unet.attention_head_dim=4",
]
TINY_MLP = ["model.backbone=mlp", "model.mlp.hidden=32", "model.mlp.depth=1"]


def cfg_for(tmp_path, *overrides):
    return load_config("test", overrides=[f"out_dir={tmp_path / 'run'}", *COND, *overrides])


def module_for(tmp_path, *overrides):
    cfg = cfg_for(tmp_path, *overrides)
    dm = DiffusionDataModule(cfg.data)
    dm.prepare()
    return build_module(cfg, dm.shape, dm.num_classes), cfg


def _label_table(module) -> nn.Embedding:
    net = module.net
    return net.label if module.cfg.model.backbone == "mlp" else net.unet.class_embedding


@pytest.fixture(scope="module", params=["mlp", "unet"])
def trained(request, tmp_path_factory):
    """A tiny class-conditional model trained 2 epochs on the digits' labels."""
    tmp = tmp_path_factory.mktemp(f"cond_{request.param}")
    extra = TINY_MLP if request.param == "mlp" else TINY_UNET
    out = train(cfg_for(tmp, "trainer.max_epochs=2", "data.batch_size=128", *extra))
    return out["module"], tmp / "run" / "checkpoints" / "last.ckpt"


def test_trained_conditional_model_and_its_checkpoint(trained):
    module, ckpt = trained
    assert module.num_classes == 10
    table = _label_table(module)
    assert table.num_embeddings == 11  # 10 digits + the null label
    loaded, config = load_checkpoint(ckpt)
    assert loaded.num_classes == 10 and config["model"]["num_classes"] == 10
    assert config["data"]["conditional"] is True
    x = torch.randn(6, *module.data_shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0, 20.0])
    labels = torch.tensor([0, 3, 9, 10, 5, -1])
    a = module.denoiser(x, sigma, labels)
    torch.testing.assert_close(loaded.denoiser(x, sigma, labels), a, rtol=0, atol=0)
    # The null label, a negative label and a call without cond are the same (unconditional).
    unc = module.denoiser(x, sigma)
    torch.testing.assert_close(a[[3, 5]], unc[[3, 5]], rtol=0, atol=0)
    torch.testing.assert_close(
        module.denoiser(x, sigma, torch.full((6,), -1)), module.denoiser(x, sigma), rtol=0, atol=0
    )
    # Labels matter (the trained class embedding reaches the network).
    other = module.denoiser(x, sigma, (labels + 1) % 10)
    assert (other - a).abs().flatten(1).amax(1).min() > 0


def test_guided_sampling_of_the_trained_model_is_the_cfg_combination(trained):
    """sample(cond=, guidance=w, uncond=null) equals the sampler on D_u + w (D_c - D_u)
    formed by hand from two separate calls; guidance=1 equals cond= alone."""
    module, _ = trained
    den = module.double().denoiser
    try:
        labels = torch.tensor([0, 4, 7, 2])
        null = module.null_label
        kw = {"steps": 5, "shape": (4, *module.data_shape), "seeds": [5, 1, 8, 3], "dtype": F64}

        def by_hand(x, sigma):
            y = labels.repeat(x.shape[0] // 4)
            d_c, d_u = den(x, sigma, y), den(x, sigma, null.expand(x.shape[0]))
            return d_u + 2.5 * (d_c - d_u)

        for name in ("dpmpp_2m", "edm_heun"):
            res = sl.sample(den, name, cond=labels, guidance=2.5, uncond=null, **kw)
            ref = sl.sample(by_hand, name, **kw)
            torch.testing.assert_close(res.x, ref.x, rtol=0, atol=1e-10)
            assert res.nfe == 2 * ref.nfe  # both rows counted
        one = sl.sample(den, "ddim", cond=labels, guidance=1, uncond=null, **kw)
        plain = sl.sample(den, "ddim", cond=labels, **kw)
        torch.testing.assert_close(one.x, plain.x, rtol=0, atol=0)
        assert one.nfe == plain.nfe == 5
    finally:
        module.float()


def test_batch_equals_each_sample_alone_with_labels_and_guidance(trained):
    module, _ = trained
    den = module.double().denoiser
    try:
        labels, seeds = torch.tensor([3, 0, 9]), [2, 7, 4]
        w = torch.tensor([1.0, 2.0, 3.5])
        kw = {"steps": 6, "dtype": F64, "uncond": module.null_label}
        shape = module.data_shape
        batch = sl.sample(den, "pmm", shape=(3, *shape), seeds=seeds, cond=labels, guidance=w, **kw)
        for k in range(3):
            one = sl.sample(
                den, "pmm", shape=(1, *shape), seeds=seeds[k : k + 1],
                cond=labels[k : k + 1], guidance=w[k : k + 1], **kw,
            )  # fmt: skip
            torch.testing.assert_close(batch.x[k : k + 1], one.x, rtol=0, atol=1e-10)
    finally:
        module.float()


@pytest.mark.parametrize("backbone", ["mlp", "unet"])
def test_label_dropout_is_p_uncond(tmp_path, backbone):
    extra = TINY_MLP if backbone == "mlp" else TINY_UNET
    module, _ = module_for(tmp_path, "model.p_uncond=0.3", *extra)
    y = torch.arange(200) % 10
    y[:5] = -1  # unlabelled items
    out = module._labels(y, torch.Generator().manual_seed(3))
    drop = torch.rand(200, generator=torch.Generator().manual_seed(3)) < 0.3
    expect = torch.where(drop | (y < 0), torch.full_like(y, 10), y)
    assert torch.equal(out, expect) and 0 < int(drop.sum()) < 200
    module.cfg.model.p_uncond = 0.0
    kept = module._labels(y, torch.Generator().manual_seed(3))
    assert torch.equal(kept, torch.where(y < 0, torch.full_like(y, 10), y))
    module.cfg.data.conditional = False  # a conditional fine-tune source on unlabelled use
    assert bool((module._labels(y, torch.Generator()) == 10).all())


def test_num_classes_follows_the_data(tmp_path):
    """data.conditional=true with model.num_classes=0 takes the data's classes, recorded in
    the config (hence the saved config and the checkpoint)."""
    module, cfg = module_for(tmp_path, "model.num_classes=0", *TINY_MLP)
    assert module.num_classes == 10 and cfg.model.num_classes == 10
    assert module.hparams["config"]["model"]["num_classes"] == 10
    with pytest.raises(ConfigError, match=r"model\.num_classes: the data have 10 classes, not 4"):
        module_for(tmp_path, "model.num_classes=4", *TINY_MLP)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (
            "model.p_uncond=1.0",
            r"model.p_uncond: the label dropout probability must be in \[0, 1\)",
        ),
        ("model.p_uncond=-0.1", r"model.p_uncond: .* got -0.1"),
        ("model.num_classes=-2", "model.num_classes: must be >= 0, got -2"),
    ],
)
def test_bad_conditional_settings_one_line(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("digits_cond", overrides=[override])


def test_conditional_needs_labelled_data():
    with pytest.raises(ConfigError, match=r"data\.conditional: data\.name=gmm has no class labels"):
        load_config("test", overrides=["data.conditional=true"])
    with pytest.raises(ConfigError, match=r"needs data\.conditional=true"):
        load_config("digits", overrides=["model.num_classes=10"])


def test_unconditional_model_refuses_cond(tmp_path):
    cfg = load_config("test", overrides=[f"out_dir={tmp_path}"])
    module = build_module(cfg, (2,), 0)
    with pytest.raises(SamplerError, match=r"cond=: this model is unconditional"):
        sl.sample(module.denoiser, "ddim", steps=2, shape=(2, 2), cond=torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="no null label"):
        _ = module.null_label


def test_exported_conditional_unet_is_the_same_denoiser(tmp_path):
    """A conditional VP UNet exported as a diffusers folder (num_class_embeds = 11) samples
    the same through from_diffusers(cond=) as the module, and fine-tunes back as a
    conditional model."""
    module, _ = module_for(tmp_path, "model.parameterization=eps", *TINY_UNET)
    module.save_pretrained(tmp_path / "export")
    den = sl.denoisers.from_diffusers(tmp_path / "export", dtype=F64)
    mine = module.double().denoiser
    labels = torch.tensor([1, 10, 6])
    kw = {"steps": 4, "shape": (3, *module.data_shape), "dtype": F64}
    a = sl.sample(den, "ddim", cond=labels, guidance=2.0, uncond=torch.tensor([10]), **kw).x
    b = sl.sample(mine, "ddim", cond=labels, guidance=2.0, uncond=module.null_label, **kw).x
    # Equal up to the exported scheduler's float32 alphas_cumprod table (diffusers rebuilds it
    # from the betas in float32); the guidance itself moves the samples far more.
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    c = sl.sample(mine, "ddim", cond=labels, **kw).x
    assert float((c - b).abs().max()) > 1e-2
    cfg = cfg_for(tmp_path, f"model.pretrained={tmp_path / 'export'}")
    again = build_module(cfg, module.data_shape, 10)
    assert again.num_classes == 10 and _label_table(again).num_embeddings == 11


# --- the preset -------------------------------------------------------------------------


def test_digits_cond_preset_is_listed_and_conditional(capsys):
    assert "digits_cond" in PRESETS
    cfg = load_config("digits_cond")
    assert cfg.data.conditional and cfg.model.num_classes == 10 and cfg.model.p_uncond == 0.1
    assert cfg.trainer.max_time is None and cfg.trainer.max_epochs == 100
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "digits_cond" in capsys.readouterr().out
    assert main(["train", "digits_cond", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "num_classes: 10" in out and "conditional: true" in out


# --- the guided evaluation ----------------------------------------------------------------


def test_balanced_labels_and_plan():
    assert balanced_labels(range(1000, 1020), 10).tolist() == list(range(10)) * 2
    assert balanced_labels(torch.tensor([13, 7]), 5).tolist() == [3, 2]
    jobs = plan_guided_jobs(["ddim", "edm_heun"], [10, 20], [1, 2.5])
    got = [(j.sampler, j.budget, j.steps, j.guidance) for j in jobs]
    assert got == [
        ("ddim", 10, 10, 1.0), ("ddim", 10, 10, 2.5), ("ddim", 20, 20, 1.0),
        ("ddim", 20, 20, 2.5), ("edm_heun", 10, 5, 1.0), ("edm_heun", 10, 5, 2.5),
        ("edm_heun", 20, 10, 1.0), ("edm_heun", 20, 10, 2.5),
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="guidance: repeated scales"):
        plan_guided_jobs(["ddim"], [10], [2, 2.0])
    with pytest.raises(ConfigError, match="guidance: need a non-empty list of finite"):
        plan_guided_jobs(["ddim"], [10], [float("nan")])
    with pytest.raises(ConfigError, match="samplers: unknown sampler 'nope'"):
        plan_guided_jobs(["nope"], [10], [1])


class _Nearest(nn.Module):
    """A classifier of the mixture: logits = -distance to each class mean."""

    def __init__(self, means):
        super().__init__()
        self.means = nn.Parameter(means.clone(), requires_grad=False)

    def forward(self, x):
        return -torch.cdist(x.reshape(x.shape[0], -1), self.means)


def test_class_accuracy_counts_exactly():
    clf = _Nearest(torch.eye(3, dtype=F64))
    x = torch.eye(3, dtype=F64)[[0, 1, 2, 2]]
    assert int(class_accuracy(clf, x, torch.tensor([0, 1, 2, 0]))) == 3


def test_guided_rows_equal_direct_sampling_on_the_mixture():
    """A row's FID and accuracy are those of sl.sample on the same seeds and balanced
    labels (any batch size), nfe counts both rows, and an erroring job is an error row."""
    mix = ClassConditionalMixture.default(dim=2, components=3, seed=0)
    feats, clf = RawFeatures((2,)), _Nearest(mix.means)
    real = {"all": stats_of(mix.sample(400, torch.Generator().manual_seed(1)))}
    kw = dict(num_classes=3, uncond=torch.tensor([-1]), shape=(2,), features=feats,
              classifier=clf, real=real, num_samples=30, seed_offset=6, dtype=F64)  # fmt: skip
    job = GuidedJob("ddim", "ddim", 8, 8, 2.0)
    row = run_guided_job(mix, job, batch_size=7, **kw)
    assert row["status"] == "ok" and row["nfe"] == 16
    seeds = list(range(6, 36))
    labels = balanced_labels(seeds, 3)
    ref = sl.sample(mix, "ddim", steps=8, shape=(30, 2), seeds=seeds, dtype=F64,
                    cond=labels, guidance=2.0, uncond=torch.tensor([-1]))  # fmt: skip
    assert abs(row["fid"] - fid_from_stats(real["all"], stats_of(ref.x))) < 1e-9
    assert row["accuracy"] == int(class_accuracy(clf, ref.x, labels)) / 30
    assert run_guided_job(mix, job, batch_size=30, **kw)["fid"] == pytest.approx(row["fid"], 1e-9)
    # Guidance 1 is conditional sampling: one row per evaluation.
    assert run_guided_job(mix, GuidedJob("ddim", "ddim", 8, 8, 1.0), **kw)["nfe"] == 8
    bad = GuidedJob("ddim", "ddim", 8, 8, 2.0, options={"nope": 1})
    rows = evaluate_guided(mix, [bad, job], batch_size=30, **kw)
    assert rows[0]["status"] == "error" and "nope" in rows[0]["error"]
    assert rows[1]["status"] == "ok" and rows[1]["beyond_fraction"] == 0
    # Samples beyond 10x the data's half-range in more than 1% of the samples: diverged.
    ratio = float(ref.x.abs().max()) / 0.05
    tiny = {**real, "range": torch.tensor([-0.05, 0.05], dtype=F64)}
    div = run_guided_job(mix, job, batch_size=30, **{**kw, "real": tiny})
    assert div["status"] == "diverged" and div["fid"] == pytest.approx(row["fid"], 1e-9)
    assert div["range_ratio"] == pytest.approx(ratio, 1e-12) and div["beyond_fraction"] > 0.01


def test_digits_reference():
    _, feats, ref = digits_reference()
    assert ref["n"] == 1797 and ref["accuracy"] > 0.98
    assert 0 < ref["fid_floor"] < 5 and feats.num_features == 64


def test_sweep_hook_guided_kwargs():
    """The hook for the evaluation sweep: sample(den, ..., **guided_kwargs(batch seeds, ...))
    per batch; a batch's labels depend only on its seeds (batches and DDP shards agree),
    and the NFE counts both guided rows."""
    from samplerlab.guidance_eval import guided_kwargs
    from samplerlab.samplers.conditioning import condition

    mix = ClassConditionalMixture.default(dim=2, components=3, seed=0)
    seeds = [10, 11, 12, 13]
    kw = guided_kwargs(seeds, 3, 2.5, torch.tensor([-1]), (0.1, 5.0))
    assert kw["cond"].tolist() == [1, 2, 0, 1] and kw["guidance_interval"] == (0.1, 5.0)
    opts = {"steps": 6, "dtype": F64}
    ref = sl.sample(mix, "pmm", shape=(4, 2), seeds=seeds, **kw, **opts)
    # The same model bound by hand (condition() is what sample() runs) gives the same run.
    bound = sl.sample(condition(mix, 4, **kw), "pmm", shape=(4, 2), seeds=seeds, **opts)
    torch.testing.assert_close(bound.x, ref.x, rtol=0, atol=0)
    assert bound.nfe == ref.nfe > sl.sample(mix, "pmm", shape=(4, 2), seeds=seeds,
                                            cond=kw["cond"], **opts).nfe  # fmt: skip
    # Two shards of the seeds (DDP rank r: seeds[r::2]) get the same samples as one batch.
    for r in range(2):
        part = guided_kwargs(seeds[r::2], 3, 2.5, torch.tensor([-1]), (0.1, 5.0))
        got = sl.sample(mix, "pmm", shape=(2, 2), seeds=seeds[r::2], **part, **opts)
        torch.testing.assert_close(got.x, ref.x[r::2], rtol=0, atol=1e-12)
    assert set(guided_kwargs(seeds, 3, None, torch.tensor([-1]))) == {"cond"}


def _load_bench():
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_digits_cond", bench / "bench_digits_cond.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(bench))


def test_bench_report_spreads_over_seed_sets_and_marks_diverged(tmp_path):
    b = _load_bench()

    def row(w, off, fid, acc, status="ok"):
        return {"label": "ddim", "budget": 10, "steps": 10, "guidance": w, "seed_offset": off,
                "fid": fid, "accuracy": acc, "status": status, "nfe": 10.0 * (1 + (w != 1)),
                "range_ratio": 1.2, "seconds": 1.0}  # fmt: skip

    rows = [row(1.0, 0, 2.0, 0.9), row(1.0, 1000, 4.0, 0.8), row(2.0, 0, 6.0, 1.0),
            row(2.0, 1000, 8.0, 1.0, "diverged"), row(1.0, 2000, 9.0, 0.5)]  # fmt: skip
    result = {
        "rows": rows, "guidance": [1.0, 2.0], "checkpoint": "c", "epoch": 1, "step": 2,
        "reference": {"fid_floor": 1.0, "accuracy": 0.99, "n": 1797}, "seconds": 3.0,
        "command": "x", "machine": "m",
        "args": {"samplers": ["ddim"], "nfe": [10], "num_samples": 8,
                 "seed_offsets": [0, 1000, 2000]},
    }  # fmt: skip
    (tmp_path / "digits_cond.json").write_text(__import__("json").dumps(result))
    b.report_only(tmp_path)  # seed set 2000 is incomplete (no w = 2 row): left out
    md = (tmp_path / "digits_cond.md").read_text()
    assert "| ddim | 10 | 3 ± 1.4 / 0.850 ± 0.071 | 7 ± 1.4 / 1.000 ± 0.000 † |" in md
    assert "2 seed sets (offsets 0, 1000)" in md and "1 diverged" in md
    s = {x["guidance"]: x for x in b.summary(rows[:4])}
    assert s[2.0]["diverged"] == 1 and s[1.0]["fid"]["mean"] == 3.0


def test_readme_conditional_block_runs_as_written(trained, tmp_path, monkeypatch):
    """The README's class-conditional Python block, on the tiny trained checkpoint."""
    import re
    import shutil
    from pathlib import Path

    _, ckpt = trained
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### Class-conditional models and classifier-free guidance") :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    where = tmp_path / "runs" / "digits_cond" / "checkpoints"
    where.mkdir(parents=True)
    shutil.copy(ckpt, where / "last.ckpt")
    monkeypatch.chdir(tmp_path)
    namespace = {"sl": sl, "torch": torch}
    exec(compile(block, "README.md", "exec"), namespace)
    res = namespace["res"]
    assert res.x.shape == (10, 1, 8, 8) and res.nfe == 20


def test_digits_cond_preset_trains_and_evaluates_unconditionally(tmp_path):
    """The preset end to end (one batch, tiny UNet): the end-of-training sampler evaluation
    runs on the conditional model with the null label."""
    cfg = load_config(
        "digits_cond",
        overrides=[
            f"out_dir={tmp_path / 'run'}", "trainer.fast_dev_run=true", "logger.wandb=false",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "eval.nfe=[2]",
            "eval.num_samples=8", "eval.batch_size=8", "eval.grid_size=8",
            "eval.fid_bootstrap=0", "eval.every_n_epochs=1", *TINY_UNET,
        ],
    )  # fmt: skip
    out = train(cfg)
    assert out["module"].num_classes == 10
    rows = out["reports"][-1]["results"]
    assert {r["label"] for r in rows} == {"ddim", "dpmpp_2m", "unipc", "edm_heun"}
    assert all(r["status"] == "ok" for r in rows)
