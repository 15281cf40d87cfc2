"""Runs never mix: a used out_dir is refused unless overwrite=true or the run resumes its own
checkpoint, a lock keeps a second writer out, the report's checkpoint is that run's, and a
run that has finished its plan says so instead of training nothing."""

import json

import pytest
import torch

from samplerlab.cli import main
from samplerlab.errors import ConfigError
from samplerlab.trainer.config import load_config
from samplerlab.trainer.run import train


def cfg_for(tmp_path, *overrides):
    return load_config("test", overrides=[f"out_dir={tmp_path / 'run'}", *overrides])


def ckpts(folder):
    return sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt"))


def test_rerun_into_a_used_folder_is_refused(tmp_path, capsys):
    train(cfg_for(tmp_path, "eval.enabled=false"))
    run = tmp_path / "run"

    from samplerlab.trainer.runs import LOCK_NAME

    def stamps():  # every file but the lock (its text names the last process that held it)
        return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != LOCK_NAME}

    before = stamps()
    rc = main(["train", "test", f"out_dir={run}", "eval.enabled=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "already holds a run" in err[0] and "overwrite=true" in err[0] and str(run) in err[0]
    assert stamps() == before  # nothing touched


def test_overwrite_replaces_the_earlier_run(tmp_path):
    train(cfg_for(tmp_path, "trainer.max_epochs=2"))
    run = tmp_path / "run"
    (run / "grids" / "stale_nfe99.png").write_bytes(b"old")
    out = train(cfg_for(tmp_path, "overwrite=true", "eval.samplers={euler: {}}",
                        "eval.all_samplers=false"))  # fmt: skip
    # Only this run's files: one epoch checkpoint and last.ckpt, no last-v1.ckpt, no old grid.
    assert ckpts(run) == ["epoch=0-step=3.ckpt", "last.ckpt"]
    assert not (run / "grids" / "stale_nfe99.png").exists()
    rep = json.loads((run / "report.json").read_text())
    ckpt = torch.load(rep["training"]["checkpoint"], weights_only=True)
    assert ckpt["global_step"] == rep["step"] == out["trainer"].global_step == 3


def test_resume_into_its_own_folder_continues_the_run(tmp_path):
    train(cfg_for(tmp_path, "eval.enabled=false"))
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    out = train(cfg_for(tmp_path, "eval.enabled=false", "trainer.max_epochs=2",
                        f"ckpt_path={last}"))  # fmt: skip
    assert out["trainer"].global_step == 6
    assert "last-v1.ckpt" not in ckpts(run)
    assert torch.load(last, weights_only=True)["global_step"] == 6


def test_a_second_writer_is_locked_out(tmp_path, capsys):
    from samplerlab.trainer.runs import RunLock

    run = tmp_path / "run"
    run.mkdir()
    holder = RunLock(run)
    holder.acquire()  # another process holds the folder (flock is per open file)
    try:
        rc = main(["train", "test", f"out_dir={run}", "eval.enabled=false"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "in use by another samplerlab run" in err[0], err
        assert not (run / "config.yaml").exists()
    finally:
        holder.release()
    # Released (as when the other process ends): the folder can be used.
    assert train(cfg_for(tmp_path, "eval.enabled=false"))["trainer"].global_step == 3


def test_resuming_a_finished_run_says_why_not(tmp_path, capsys):
    train(cfg_for(tmp_path, "eval.enabled=false"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    rc = main(["train", "test", f"out_dir={tmp_path / 'run'}", f"ckpt_path={last}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "nothing to train" in err[0] and "trainer.max_epochs=1" in err[0]
    rc = main(["train", "test", f"out_dir={tmp_path / 'run'}", f"ckpt_path={last}",
               "trainer.max_epochs=5", "trainer.max_steps=2"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "trainer.max_steps=2" in err[0]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_bad_out_dir_or_ckpt_path(tmp_path, capsys, kind):
    if kind == "file":
        f = tmp_path / "afile"
        f.write_text("x")
        args, needle = [f"out_dir={f}"], "is a file"
    else:
        args, needle = [f"out_dir={tmp_path / 'r'}", f"ckpt_path={tmp_path}"], "is a folder"
    rc = main(["train", "test", "eval.enabled=false", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err


def test_claim_refuses_without_markers_only(tmp_path):
    from samplerlab.trainer.runs import claim_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")  # a folder without a run in it is usable
    lock = claim_run_dir(cfg_for(tmp_path))
    lock.release()
    (run / "config.yaml").write_text("name: x\n")
    with pytest.raises(ConfigError, match="already holds a run"):
        claim_run_dir(cfg_for(tmp_path))


def test_unwritable_out_dir_is_one_line_before_any_work(tmp_path, monkeypatch):
    """A folder the user cannot write to (root ignores permissions: simulated)."""
    import os
    import pathlib

    from samplerlab.trainer.runs import claim_run_dir

    real = pathlib.Path.write_text

    def denied(self, *args, **kwargs):
        if self.name.startswith(".write-test"):
            raise PermissionError(13, os.strerror(13))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", denied)
    with pytest.raises(ConfigError, match=r"out_dir: cannot write to .*Permission denied"):
        claim_run_dir(cfg_for(tmp_path))
    if os.geteuid() != 0:  # a real read-only folder, where permissions apply
        monkeypatch.undo()
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cfg = load_config("test", overrides=[f"out_dir={ro / 'run'}"])
        with pytest.raises(ConfigError, match="out_dir: cannot write"):
            claim_run_dir(cfg)
