import pytest

from samplerlab.cli import main
from samplerlab.errors import ConfigError
from samplerlab.trainer.config import PRESETS, load_config


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.name == preset
    assert cfg.out_dir == f"runs/{preset}" or preset == "test"


def test_default_is_digits_with_every_sampler():
    cfg = load_config()
    assert cfg.data.name == "digits" and cfg.model.backbone == "unet"
    assert cfg.eval.all_samplers and len(cfg.eval.nfe) >= 2
    assert cfg.logger.mode == "offline"


def test_digits_preset_documents_the_schema_defaults():
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(load_config("digits")) == OmegaConf.to_container(load_config())


def test_overrides_merge_left_to_right(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("optim: {lr: 0.5}\neval: {nfe: [3, 6, 9]}\n")
    cfg = load_config(
        "test", str(f), overrides=["optim.lr=0.25", "eval.samplers.ddpm.options.variant=sde"]
    )
    assert cfg.optim.lr == 0.25 and list(cfg.eval.nfe) == [3, 6, 9]
    assert cfg.eval.samplers.ddpm.options.variant == "sde"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["optim.lrr=1"], "optim.lrr"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs"),
        (["data.name=mnist"], "data.name"),
        (["eval.samplers.nope.nfe=[2]"], "eval.samplers.nope"),
        (["eval.samplers.euler.options.eta=1"], "eval.samplers.euler.options"),
        (["eval.samplers.euler.schedule=fancy"], "eval.samplers.euler.schedule"),
        (["eval.feature=dino"], "eval.feature"),
        (["eval.num_samples=1"], "eval.num_samples"),
        (["noequals"], "key=value"),
        (["eval.nfe=[10,20"], "eval.nfe=[10,20"),  # malformed YAML in an override
        (["trainer.accelerator=tpuu"], "trainer.accelerator"),
        (["trainer.precision=fp13"], "trainer.precision"),
        (["trainer.strategy=dpp"], "trainer.strategy"),
        (["trainer.max_time=4min"], "trainer.max_time"),
        (["trainer.max_epochs=0"], "trainer.max_epochs"),
        (["trainer.max_steps=0"], "trainer.max_steps"),
        (["trainer.devices=0"], "trainer.devices"),
        (["trainer.num_threads=0"], "trainer.num_threads"),
        (["data.name=digits", "model.backbone=unet", "data.channels=3"], "data.channels"),
        (["data.channels=2"], "data.channels"),
        (["data.val_fraction=1.5"], "data.val_fraction"),
        (["data.num_workers=-1"], "data.num_workers"),
        (["data.gmm.dim=0"], "data.gmm"),
        (["optim.lr=-1"], "optim.lr"),
        (["seed=100000000000000000000"], "seed"),
    ],
)
def test_bad_config_one_line(args, needle):
    with pytest.raises(ConfigError) as e:
        load_config("test", overrides=args)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_unknown_key_in_file_and_missing_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("data:\n  nmae: digits\n")
    with pytest.raises(ConfigError, match=r"data\.nmae"):
        load_config(str(f))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="presets"):
        load_config("nopreset")


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--ckpt", "x.ckpt", "--sampler", "ddim", "--steps", "2", "--seed", "1e20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--seed" in err[0], err


def test_cli_prints_one_line(capsys, tmp_path):
    rc = main(["train", "test", "model.nope=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "model.nope" in err
    rc = main(["train", "--print-config", "test", f"out_dir={tmp_path}"])
    assert rc == 0 and "name: test" in capsys.readouterr().out
