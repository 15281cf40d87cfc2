"""Training under DDP: two gloo processes on the CPU shard the data, keep one set of weights,
evaluate, checkpoint, and the checkpoint resumes on one process."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from samplerlab.trainer.config import load_config
from samplerlab.trainer.data import DiffusionDataModule
from samplerlab.trainer.run import train

ROOT = Path(__file__).resolve().parents[1]

# Each rank saves the weights it ends with; Lightning relaunches this file for rank 1.
SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from samplerlab.trainer.config import load_config
    from samplerlab.trainer.run import train

    out = train(load_config("test", overrides=sys.argv[1:]))
    m, t = out["module"], out["trainer"]
    torch.save(
        {"net": m.net.state_dict(), "ema": m.ema_net().state_dict(), "step": t.global_step},
        f"{m.cfg.out_dir}/rank{t.global_rank}.pt",
    )
    """
)


def test_ddp_training_two_processes(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    out_dir = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    overrides = [
        f"out_dir={out_dir}",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_epochs=2",
        "eval.dtype=float64",
        f"eval.cache_dir={tmp_path / 'cache'}",
    ]
    p = subprocess.run(
        [sys.executable, str(script), *overrides],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    r0, r1 = (torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # One model: gradients are all-reduced, so both ranks hold the same weights and EMA.
    for key in ("net", "ema"):
        assert r0[key].keys() == r1[key].keys()
        for k in r0[key]:
            torch.testing.assert_close(r1[key][k], r0[key][k], rtol=0, atol=0)

    # Each rank sees its half of each epoch (per-device batch 64): it did the optimizer steps
    # of half the data, not of all of it.
    cfg = load_config("test")
    dm = DiffusionDataModule(cfg.data)
    dm.prepare()
    per_rank = math.ceil(len(dm.train) / 2)
    assert r0["step"] == r1["step"] == 2 * (per_rank // cfg.data.batch_size) > 0

    # Rank 0 wrote one report (world size 2) and the checkpoint; it resumes on one process.
    report = json.loads((out_dir / "report.json").read_text())
    assert report["world_size"] == 2
    assert {r["label"] for r in report["results"]} == {"euler", "ddim"}
    ckpt = out_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == r0["step"]
    resumed = train(
        load_config(
            "test",
            overrides=[
                f"out_dir={out_dir}",
                f"ckpt_path={ckpt}",
                "trainer.max_epochs=3",
                "eval.enabled=false",
            ],
        )
    )
    assert resumed["trainer"].global_step > r0["step"]
