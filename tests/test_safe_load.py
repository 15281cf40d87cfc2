"""No entry point runs code from a user's checkpoint file: every load is
``torch.load(weights_only=True)``; a malicious pickle is one line naming the file."""

import pickle

import pytest
import torch

from samplerlab.cli import main
from samplerlab.errors import ConfigError
from samplerlab.trainer.checkpoints import load_checkpoint
from samplerlab.trainer.config import load_config
from samplerlab.trainer.run import train


class Payload:
    """Unpickling this creates ``marker``: code from the file runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious(tmp_path, kind):
    marker = tmp_path / f"PWNED_{kind}"
    f = tmp_path / f"evil_{kind}.ckpt"
    payload = {"hyper_parameters": {"config": {}}, "state_dict": Payload(marker)}
    if kind == "zip":  # what torch.save writes
        torch.save(payload, f)
    else:  # a plain pickle stream (torch.load's legacy format)
        f.write_bytes(pickle.dumps(payload))
    return f, marker


ENTRY_POINTS = {
    "sample": lambda f, tmp: ["sample", "--ckpt", str(f), "--sampler", "ddim", "--steps", "2",
                              "--out", str(tmp / "s.pt")],
    "evaluate": lambda f, tmp: ["evaluate", "--ckpt", str(f)],
    "iia-fit": lambda f, tmp: ["iia-fit", "--ckpt", str(f), "--steps", "3",
                               "--out", str(tmp / "c.safetensors")],
    "train": lambda f, tmp: ["train", "test", f"ckpt_path={f}", f"out_dir={tmp / 'run'}"],
}  # fmt: skip


@pytest.mark.parametrize("kind", ["zip", "raw"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_malicious_checkpoint_never_runs(tmp_path, capsys, entry, kind):
    f, marker = malicious(tmp_path, kind)
    rc = main(ENTRY_POINTS[entry](f, tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert not marker.exists(), "code from the checkpoint ran"
    assert rc == 2 and len(err) == 1, err
    assert str(f) in err[0] and "refused to unpickle" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_lightning_resume_path_is_weights_only(tmp_path, monkeypatch):
    """Even past samplerlab's own check, Lightning's restore loads with weights_only=True."""
    train(load_config("test", overrides=[f"out_dir={tmp_path / 'a'}", "eval.enabled=false"]))
    seen = []
    real = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    cfg = load_config(
        "test",
        overrides=[f"out_dir={tmp_path / 'b'}", "eval.enabled=false", "trainer.max_epochs=2",
                   f"ckpt_path={ckpt}"],
    )  # fmt: skip
    assert train(cfg)["trainer"].global_step == 6
    assert seen and all(w is True for w in seen), seen


def test_genuine_checkpoints_load_weights_only(tmp_path):
    train(load_config("test", overrides=[f"out_dir={tmp_path / 'a'}", "eval.enabled=false"]))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    module, saved = load_checkpoint(ckpt)
    assert saved["name"] == "test" and module.training_summary["steps"] == 3
    from samplerlab.trainer.checkpoints import read_checkpoint

    with pytest.raises(ConfigError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt", "--ckpt")
