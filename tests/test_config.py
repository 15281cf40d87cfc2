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


def test_cli_prints_one_line(capsys, tmp_path):
    rc = main(["train", "test", "model.nope=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "model.nope" in err
    rc = main(["train", "--print-config", "test", f"out_dir={tmp_path}"])
    assert rc == 0 and "name: test" in capsys.readouterr().out
