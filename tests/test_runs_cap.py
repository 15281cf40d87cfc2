"""The main job trains a fixed number of steps; a wall-clock cap, when set and reached, is
said on the console and first in the report; resuming a capped run trains on; the thread
count is chosen and printed."""

import json

import pytest
import torch

from samplerlab.cli import main
from samplerlab.trainer.config import PRESETS, RunConfig, load_config
from samplerlab.trainer.run import train

# Enough steps that a 2-second cap always cuts: 57 steps per epoch, 1000 epochs.
LONG = ["trainer.max_epochs=1000", "data.gmm.num_samples=4096"]


def cfg_for(tmp_path, *overrides, name="run"):
    return load_config("test", overrides=[f"out_dir={tmp_path / name}", *overrides])


@pytest.mark.parametrize("preset", PRESETS)
def test_no_wall_clock_cap_by_default(preset):
    assert RunConfig().trainer.max_time is None
    assert load_config(preset).trainer.max_time is None


def test_full_run_says_what_it_trained(tmp_path):
    out = train(cfg_for(tmp_path, "trainer.max_epochs=2"))
    s = out["training"]
    assert s["steps"] == s["planned_steps"] == out["trainer"].global_step == 6
    assert not s["cut_by_max_time"]
    md = (tmp_path / "run" / "report.md").read_text().splitlines()
    assert md[2].startswith("Training: 6 of 6 planned steps"), md[:3]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert next(iter(rep)) == "training" and rep["training"]["steps"] == 6
    assert rep["training"]["checkpoint"] == str(tmp_path / "run" / "checkpoints" / "last.ckpt")


def test_reached_cap_is_loud_and_first_in_the_report(tmp_path, capsys):
    rc = main(["train", "test", f"out_dir={tmp_path / 'run'}", *LONG,
               "trainer.max_time=00:00:00:02"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "WARNING: training was CUT by trainer.max_time=00:00:00:02" in out
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert next(iter(rep)) == "training"
    s = rep["training"]
    assert s["cut_by_max_time"] and 0 < s["steps"] < s["planned_steps"] == 57000
    md = (tmp_path / "run" / "report.md").read_text().splitlines()
    assert md[2].startswith("**WARNING: training was CUT by trainer.max_time"), md[:3]
    assert f"{s['steps']} of 57000 planned steps" in md[2]
    # The last line on the console repeats it.
    assert "WARNING: training was CUT" in out.strip().splitlines()[-1]


def test_resuming_a_capped_run_trains_on(tmp_path, capsys):
    cap = ["trainer.max_time=00:00:00:02", "eval.enabled=false"]
    first = train(cfg_for(tmp_path, *LONG, *cap))
    assert first["training"]["cut_by_max_time"]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    step0 = torch.load(ckpt, weights_only=True)["global_step"]
    assert step0 == first["trainer"].global_step  # the checkpoint holds what was trained
    again = train(cfg_for(tmp_path, *LONG, *cap, f"ckpt_path={ckpt}"))
    s = again["training"]
    assert s["steps_this_session"] > 0 and s["steps"] > step0, s
    assert torch.load(ckpt, weights_only=True)["global_step"] == s["steps"]


def test_bad_max_time_is_one_line():
    from samplerlab.errors import ConfigError

    for bad in ("4min", "00:00:61:00", "1:2:3"):
        with pytest.raises(ConfigError, match=r"trainer\.max_time"):
            load_config("test", overrides=[f"trainer.max_time={bad}"])


def test_thread_choice(monkeypatch):
    import samplerlab.trainer.runs as runs
    from samplerlab.trainer.runs import choose_threads

    assert choose_threads(3) == (3, "trainer.num_threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(None) == (2, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    for cpus, want in ((1, 1), (2, 1), (4, 2), (8, 4), (64, 4)):
        monkeypatch.setattr(runs, "usable_cpus", lambda c=cpus: c)
        assert choose_threads(None)[0] == want, cpus


def test_thread_count_is_set_and_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    old = torch.get_num_threads()
    try:
        rc = main(["train", "test", f"out_dir={tmp_path / 'run'}", "eval.enabled=false",
                   "trainer.num_threads=2"])  # fmt: skip
        assert rc == 0 and torch.get_num_threads() == 2
        assert "torch uses 2 CPU thread(s) (trainer.num_threads" in capsys.readouterr().out
    finally:
        torch.set_num_threads(old)
