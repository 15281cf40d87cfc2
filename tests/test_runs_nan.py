"""A non-finite training loss or gradient stops training with one line naming the step; the
weights are not updated and the last checkpoint stays the last good one."""

import math

import torch

from samplerlab.cli import main
from samplerlab.trainer.config import load_config
from samplerlab.trainer.module import DiffusionModule
from samplerlab.trainer.run import train


def finite(ckpt):
    sd = torch.load(ckpt, weights_only=True)
    tensors = [*sd["state_dict"].values(), *sd["current_model_state"].values()]
    return sd["global_step"], all(
        bool(t.isfinite().all()) for t in tensors if t.is_floating_point()
    )


def test_lr_1e8_stops_with_one_line_and_no_nan_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "test", f"out_dir={run}", "optim.lr=1e8", "optim.grad_clip=0",
               "trainer.max_epochs=3"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "training stopped at step" in err[0] and "optim.lr=1e+08" in err[0]
    last = run / "checkpoints" / "last.ckpt"
    if last.exists():
        assert finite(last)[1]
    assert not (run / "report.json").exists()  # no evaluation of a diverged model


def test_nan_mid_run_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    loss = DiffusionModule.loss

    def poisoned(self, batch, gen):
        out = loss(self, batch, gen)
        return out * math.nan if self.global_step == 4 else out

    monkeypatch.setattr(DiffusionModule, "loss", poisoned)
    cfg = load_config("test", overrides=[f"out_dir={tmp_path / 'run'}", "trainer.max_epochs=3"])
    from samplerlab.errors import TrainingError

    try:
        train(cfg)
        raise AssertionError("training went on after a NaN loss")
    except TrainingError as e:
        msg = str(e)
    assert "\n" not in msg and "step 4 (epoch 1)" in msg and "the training loss is nan" in msg
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"last good checkpoint is {last} (step 3)" in msg
    step, ok = finite(last)
    assert step == 3 and ok


def test_inf_gradient_with_a_finite_loss_is_caught(tmp_path, monkeypatch):
    check = DiffusionModule.on_before_optimizer_step

    def huge_grads(self, optimizer):
        if self.global_step == 1:
            for p in self.parameters():
                p.grad.fill_(math.inf)
        check(self, optimizer)

    monkeypatch.setattr(DiffusionModule, "on_before_optimizer_step", huge_grads)
    cfg = load_config("test", overrides=[f"out_dir={tmp_path / 'run'}", "eval.enabled=false"])
    from samplerlab.errors import TrainingError

    try:
        train(cfg)
        raise AssertionError("training went on after an inf gradient")
    except TrainingError as e:
        assert "step 1" in str(e) and "gradient is inf" in str(e)
