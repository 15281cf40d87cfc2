import math

import pytest
import torch

import samplerlab as sl
from samplerlab.cli import main
from samplerlab.errors import ConfigError
from samplerlab.trainer.checkpoints import load_checkpoint
from samplerlab.trainer.config import load_config
from samplerlab.trainer.run import train

TINY_UNET = [
    "data.name=digits",
    "data.batch_size=32",
    "model.backbone=unet",
    "model.unet.block_out_channels=[8,16]",
    "model.unet.norm_num_groups=4",
    "model.unet.attention_head_dim=4",
    "eval.feature=classifier",
    "eval.num_samples=8",
    "eval.batch_size=8",
    "eval.nfe=[2]",
    "eval.grid_size=8",
]


def cfg_for(tmp_path, *overrides):
    return load_config("test", overrides=[f"out_dir={tmp_path / 'run'}", *overrides])


@pytest.mark.parametrize("unet", [False, True], ids=["mlp", "unet"])
def test_fast_dev_run_with_callbacks(tmp_path, unet):
    extra = TINY_UNET if unet else []
    cfg = cfg_for(tmp_path, "trainer.fast_dev_run=true", "eval.every_n_epochs=1", *extra)
    out = train(cfg)
    metrics = out["trainer"].callback_metrics
    fids = [k for k in metrics if k.startswith("val/fid/")]
    assert {"val/fid/euler_2", "val/fid/ddim_2"} <= set(fids)
    assert all(math.isfinite(float(metrics[k])) for k in fids)
    assert "val/nfe/euler_2" in metrics and float(metrics["val/nfe/euler_2"]) == 2.0
    assert (tmp_path / "run" / "report.md").is_file()
    assert (tmp_path / "run" / "grids" / "euler_nfe2.png").is_file()


def test_train_writes_checkpoint_config_and_report(tmp_path):
    out = train(cfg_for(tmp_path, "trainer.max_epochs=2"))
    run = tmp_path / "run"
    for f in (
        "report.json",
        "report.md",
        "fid_vs_nfe.png",
        "config.yaml",
        "checkpoints/config.yaml",
    ):
        assert (run / f).is_file(), f
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rows = out["reports"][-1]["results"]
    assert {(r["label"], r["budget"]) for r in rows} == {
        ("euler", 2),
        ("euler", 4),
        ("ddim", 2),
        ("ddim", 4),
    }
    # The checkpoint holds the EMA weights: .denoiser after training is the same network.
    module, saved = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert saved["name"] == "test"
    x = torch.randn(5, 2)
    s = torch.full((5,), 0.7)
    trained = out["module"]
    assert torch.allclose(module.denoiser(x, s), trained.denoiser(x, s), atol=1e-6)
    ema = trained.ema_net().state_dict()
    for k, v in module.net.state_dict().items():
        torch.testing.assert_close(v, ema[k], rtol=0, atol=0)


def test_ema_differs_from_live_weights(tmp_path):
    out = train(cfg_for(tmp_path, "trainer.max_epochs=2", "eval.enabled=false"))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    ema, live = ckpt["state_dict"], ckpt["current_model_state"]
    assert any(not torch.equal(ema[k], live[k]) for k in ema)
    assert out["module"].ema_net() is out["module"].net  # after fit the module holds the EMA


def test_resume_is_exact(tmp_path):
    base = ["eval.enabled=false", "data.gmm.num_samples=160"]
    a = load_config("test", overrides=[f"out_dir={tmp_path / 'a'}", "trainer.max_epochs=4", *base])
    full = train(a)["module"]
    b = load_config("test", overrides=[f"out_dir={tmp_path / 'b'}", "trainer.max_epochs=2", *base])
    train(b)
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    c = load_config(
        "test",
        overrides=[f"out_dir={tmp_path / 'c'}", "trainer.max_epochs=4", f"ckpt_path={ckpt}", *base],
    )
    resumed = train(c)["module"]
    for (k, p), q in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), k


@pytest.mark.parametrize("param", ["eps", "v"])
def test_vp_training_gives_vp_denoiser(tmp_path, param):
    out = train(cfg_for(tmp_path, f"model.parameterization={param}", "eval.enabled=false"))
    den = out["module"].denoiser
    assert den.vp is not None and den.prediction_type.startswith(param[0])
    res = sl.sample(den, "ddim", steps=3, shape=(4, 2))
    assert torch.isfinite(res.x).all()


def test_finetune_from_diffusers_folder_and_export(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    src = tmp_path / "pretrained"
    unet.save_pretrained(src / "unet")
    DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2").save_pretrained(
        src / "scheduler"
    )
    export = tmp_path / "exported"
    cfg = cfg_for(
        tmp_path,
        *TINY_UNET,
        f"model.pretrained={src}",
        f"export={export}",
        "eval.enabled=false",
        "optim.lr=1e-2",
        "trainer.max_steps=2",
    )
    out = train(cfg)
    module = out["module"]
    assert module.param == "eps" and module.alphas_cumprod.numel() == 100
    assert (export / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # The exported folder loads with the foundation's diffusers loader and equals .denoiser.
    den = sl.denoisers.from_diffusers(export)
    x = torch.randn(3, 1, 8, 8)
    s = torch.tensor([0.5, 2.0, 10.0])
    diff = (den(x, s) - module.denoiser(x, s)).abs().max()
    assert diff < 1e-4, diff
    # Weights moved away from the pretrained ones.
    tuned = UNet2DModel.from_pretrained(export / "unet")
    assert any(
        not torch.equal(a, b)
        for a, b in zip(unet.state_dict().values(), tuned.state_dict().values(), strict=True)
    )
    # The fine-tuning run resumes from its own checkpoint (same config, one more step).
    more = cfg_for(
        tmp_path,
        *TINY_UNET,
        f"model.pretrained={src}",
        "eval.enabled=false",
        "optim.lr=1e-2",
        "trainer.max_steps=3",
        "trainer.max_epochs=2",  # the checkpoint ends its epoch: resume into the next one
        f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
    )
    assert train(more)["trainer"].global_step == 3


def test_bad_input_one_line(tmp_path, capsys):
    cases = [
        (["data.name=image_folder", f"data.root={tmp_path / 'missing'}"], "data.root"),
        (["data.name=cifar10", f"data.root={tmp_path}", *TINY_UNET[2:6]], "cifar-10"),
        (["eval.feature=inception", *TINY_UNET[:-6]], "eval.inception_weights"),
        (["model.pretrained=/nonexistent/folder"], "model.pretrained"),
        (["export=/tmp/x"], "export"),
    ]
    for overrides, needle in cases:
        rc = main(["train", "test", f"out_dir={tmp_path / 'run'}", *overrides])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (overrides, err)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing half-written


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    train(cfg_for(tmp_path, "eval.enabled=false"))
    capsys.readouterr()
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    rc = main(
        ["train", "test", f"out_dir={tmp_path / 'r2'}", f"ckpt_path={ckpt}", "model.mlp.hidden=64"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "another architecture" in err[0] and "model.mlp" in err[0]
    bad = tmp_path / "junk.ckpt"
    bad.write_bytes(b"not a checkpoint")
    rc = main(["evaluate", "--ckpt", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a samplerlab checkpoint" in err[0]
    assert not (tmp_path / "r2" / "checkpoints").exists()


def test_sample_command(tmp_path, capsys):
    train(cfg_for(tmp_path, "eval.enabled=false"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = tmp_path / "s.pt"
    rc = main(
        [
            "sample",
            "--ckpt",
            str(ckpt),
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--n",
            "6",
            "--out",
            str(out),
            "--option",
            "eta=0.5",
        ]
    )
    assert rc == 0 and "NFE 3.00" in capsys.readouterr().out
    x = torch.load(out)
    assert x.shape == (6, 2) and torch.isfinite(x).all()
    rc = main(["sample", "--ckpt", str(ckpt), "--sampler", "nope", "--steps", "3"])
    assert rc == 2 and "unknown sampler" in capsys.readouterr().err


def test_iia_fit_on_a_checkpoint_then_sample_with_the_file(tmp_path, capsys):
    train(cfg_for(tmp_path, "eval.enabled=false"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    coeffs = tmp_path / "c.safetensors"
    args = ["--ckpt", str(ckpt), "--sampler", "iia_ddim", "--steps", "5", "--M", "2"]
    assert main(["iia-fit", *args, "--samples", "4", "--out", str(coeffs)]) == 0
    from samplerlab import iia
    from samplerlab.trainer.checkpoints import load_denoiser

    den = load_denoiser(ckpt)
    c = iia.load(coeffs, denoiser=den)  # fingerprint of the checkpoint's EMA weights matches
    assert c.sampler == "iia_ddim" and c.mask.any()
    res = sl.sample(den, "iia_ddim", steps=5, shape=(3, 2), coeffs=str(coeffs))
    base = sl.sample(den, "ddim", steps=5, shape=(3, 2))
    assert torch.isfinite(res.x).all() and not torch.equal(res.x, base.x)
    out = tmp_path / "s.pt"
    rc = main(["sample", "--ckpt", str(ckpt), "--sampler", "iia_ddim", "--steps", "5", "--n",
               "3", "--out", str(out), "--option", f"coeffs={coeffs}"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err


def test_image_folder_dataset(tmp_path):
    from PIL import Image

    from samplerlab.trainer.data import DiffusionDataModule

    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            arr = (torch.rand(12, 10, 3) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(tmp_path / "imgs" / cls / f"{i}.png")
    cfg = load_config(
        "test",
        overrides=[
            "data.name=image_folder",
            f"data.root={tmp_path / 'imgs'}",
            "data.image_size=8",
            "data.channels=3",
            "model.backbone=unet",
        ],
    )
    dm = DiffusionDataModule(cfg.data)
    dm.prepare()
    assert dm.shape == (3, 8, 8) and dm.num_classes == 2 and len(dm.real) == 6
    x, y = dm.real[4]
    assert x.shape == (3, 8, 8) and float(x.min()) >= -1 and float(x.max()) <= 1 and y == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg.data.root = str(empty)
    with pytest.raises(ConfigError, match="no images"):
        DiffusionDataModule(cfg.data).prepare()


def _images(folder, n, corrupt=0):
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("L", (8, 8), color=i * 20).save(folder / f"{i}.png")
    for i in range(corrupt):
        (folder / f"bad{i}.png").write_bytes(b"\x89PNG not an image")
    return folder


def test_bad_train_inputs_found_before_training(tmp_path, capsys):
    ckpt = tmp_path / "base" / "checkpoints" / "last.ckpt"
    train(load_config("test", overrides=[f"out_dir={tmp_path / 'base'}", "eval.enabled=false"]))
    capsys.readouterr()
    folder = ["data.name=image_folder", *TINY_UNET[2:6], "eval.feature=raw"]
    cases = [
        ([*folder, f"data.root={_images(tmp_path / 'bad', 6, corrupt=1)}"], "bad0.png"),
        ([*folder, f"data.root={_images(tmp_path / 'one', 1)}"], "holds 1 image(s)"),
        ([*TINY_UNET[:6], "data.image_size=7"], "data.image_size"),
        ([f"ckpt_path={ckpt}", "data.gmm.dim=4", "trainer.max_epochs=2"], "shape (2,)"),
        (
            [f"ckpt_path={ckpt}", "model.sigma_data=0.7", "trainer.max_epochs=2"],
            "model.sigma_data=1.0, this run has model.sigma_data=0.7",
        ),
    ]
    if not torch.cuda.is_available():
        cases.append((["trainer.accelerator=gpu"], "no usable CUDA device"))
    for i, (overrides, needle) in enumerate(cases):
        rc = main(["train", "test", f"out_dir={tmp_path / f'r{i}'}", *overrides])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (overrides, err)
        assert not (tmp_path / f"r{i}" / "checkpoints").exists(), overrides


def test_image_folder_channels_follow_the_images(tmp_path):
    from PIL import Image

    from samplerlab.trainer.data import DiffusionDataModule

    rgb = tmp_path / "rgb"
    rgb.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), color=(i * 40, 10, 200)).save(rgb / f"{i}.png")
    for folder, want in ((_images(tmp_path / "gray", 4), 1), (rgb, 3)):
        cfg = load_config("test", overrides=["data.name=image_folder", f"data.root={folder}",
                                             "model.backbone=unet"])  # fmt: skip
        dm = DiffusionDataModule(cfg.data)
        dm.prepare()
        assert dm.shape == (want, 8, 8) and dm.real[0][0].shape == (want, 8, 8), folder
        assert cfg.data.channels == want  # recorded in the saved config
    cfg.data.channels = 1  # an explicit choice wins: RGB images read as grayscale
    dm = DiffusionDataModule(cfg.data)
    dm.prepare()
    assert dm.shape == (1, 8, 8)


def test_bad_sample_inputs_one_line(tmp_path, capsys):
    train(cfg_for(tmp_path, "eval.enabled=false"))
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    (tmp_path / "adir").mkdir()
    base = ["sample", "--ckpt", ckpt, "--sampler", "ddim", "--steps", "2"]
    cases = [
        (["--seed", str(10**20)], "--seed"),
        (["--device", "gpu0"], "--device"),
        (["--out", str(tmp_path / "adir")], "is a folder"),
        (["--n", "0"], "--n"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no usable CUDA device"))
    for extra, needle in cases:
        rc = main([*base, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (extra, err)


def test_resume_vp_with_another_table_length_is_refused(tmp_path, capsys):
    base = ["model.parameterization=eps", "eval.enabled=false"]
    train(cfg_for(tmp_path, *base))
    capsys.readouterr()
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    rc = main(["train", "test", f"out_dir={tmp_path / 'r2'}", *base, f"ckpt_path={ckpt}",
               "trainer.max_epochs=2", "model.num_train_timesteps=500"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "model.num_train_timesteps=1000, this run has model.num_train_timesteps=500" in err[0]
