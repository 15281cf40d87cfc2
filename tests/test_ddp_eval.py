"""Two gloo processes on the CPU give the same samples and the same FID as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from samplerlab.trainer.config import load_config
from samplerlab.trainer.run import train

ROOT = Path(__file__).resolve().parents[1]


def _evaluate(ckpt, out_dir, wandb_dir, *extra):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "samplerlab.cli", "evaluate", "--ckpt", str(ckpt)]
    cmd += [
        f"out_dir={out_dir}",
        "eval.dtype=float64",
        "eval.num_samples=24",
        "eval.batch_size=5",  # uneven batches on purpose
        "eval.grid_size=24",
        "trainer.accelerator=cpu",
        "logger.wandb=true",
        f"logger.dir={wandb_dir}",
        f"eval.cache_dir={out_dir}_cache",  # each run computes its real statistics itself
        *extra,
    ]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((out_dir / "report.json").read_text())


def test_two_processes_match_one(tmp_path):
    cfg = load_config("test", overrides=[f"out_dir={tmp_path / 'train'}", "eval.enabled=false"])
    train(cfg)
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    one = _evaluate(ckpt, tmp_path / "one", tmp_path / "wb1")
    two = _evaluate(
        ckpt, tmp_path / "two", tmp_path / "wb2", "trainer.devices=2", "trainer.strategy=ddp"
    )
    assert two["world_size"] == 2 and one["world_size"] == 1
    for a, b in zip(one["results"], two["results"], strict=True):
        assert a["label"] == b["label"] and a["nfe"] == b["nfe"]
        assert b["fid"] == pytest.approx(a["fid"], rel=1e-6)
        # The bootstrap resamples the same seed-ordered features on 1 or 2 processes.
        assert a["fid_std"] > 0 and b["fid_std"] == pytest.approx(a["fid_std"], rel=1e-6)
        assert b["range_ratio"] == pytest.approx(a["range_ratio"], rel=1e-9)
    assert two["fid_floor"] == pytest.approx(one["fid_floor"], rel=1e-9)
    s1 = load_file(tmp_path / "one" / "samples.safetensors")
    s2 = load_file(tmp_path / "two" / "samples.safetensors")
    assert s1.keys() == s2.keys()
    for k in s1:
        assert s1[k].shape == (24, 2)
        torch.testing.assert_close(s2[k], s1[k], rtol=1e-9, atol=1e-12)
    # A rerun on 2 processes reads the finished rows back (rank 0 reads, broadcasts to all).
    again = _evaluate(
        ckpt, tmp_path / "two", tmp_path / "wb3", "trainer.devices=2", "trainer.strategy=ddp"
    )
    assert all(r.get("resumed") for r in again["results"])
    assert [r["fid"] for r in again["results"]] == [r["fid"] for r in two["results"]]
    # The W&B offline run of the DDP evaluation holds the FID keys (written by rank 0 only).
    runs = list((tmp_path / "wb2").rglob("*.wandb"))
    assert len(runs) == 1
    data = runs[0].read_bytes()
    for key in (b"val/fid/euler_2", b"val/fid/ddim_4", b"val/rounds/euler_4"):
        assert key in data, key
