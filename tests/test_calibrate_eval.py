"""The evaluation sweep races calibrated twins ("<label>+cal") beside the defaults."""

from __future__ import annotations

import pytest
import torch

from samplerlab import calibrate
from samplerlab.analytic import GaussianMixture
from samplerlab.errors import ConfigError
from samplerlab.evaluation.evaluator import Evaluator
from samplerlab.evaluation.plan import plan_jobs
from samplerlab.evaluation.report import write_report
from samplerlab.trainer.config import load_config
from samplerlab.trainer.data import DiffusionDataModule

BASE = [
    "eval.all_samplers=false",
    "eval.samplers.dpmpp_2m.enabled=true",
    "eval.samplers.iia_ddim.enabled=true",
    "eval.nfe=[6]",
    "eval.num_samples=128",
    "eval.iia.M=2",
    "eval.iia.num_samples=4",
    "eval.calibrate.num_samples=8",
    "eval.calibrate.iterations=2",
    "eval.calibrate.teacher_steps=30",
]


def _evaluator(tmp_path, *overrides):
    cfg = load_config("test", overrides=[f"out_dir={tmp_path / 'run'}", *BASE, *overrides])
    return Evaluator(cfg, DiffusionDataModule(cfg.data), tmp_path / "run"), cfg


def test_calibrated_twins_are_raced_with_their_cost(tmp_path):
    ev, cfg = _evaluator(tmp_path, "eval.calibrate.samplers=[dpmpp_2m,iia_ddim]")
    g = cfg.data.gmm
    mix = GaussianMixture.default(dim=g.dim, components=g.components, seed=g.seed)
    labels = [j.label for j in plan_jobs(cfg.eval)]
    assert labels[-2:] == ["dpmpp_2m+cal", "iia_ddim+cal"]
    assert {"dpmpp_2m", "iia_ddim"} <= set(labels[:-2])
    rep = ev.evaluate(mix, torch.device("cpu"))
    rows = {r["label"]: r for r in rep["results"]}
    for label in ("dpmpp_2m+cal", "iia_ddim+cal"):
        r = rows[label]
        assert r["status"] == "ok" and r["fid"] is not None, r
        assert r["calibration_fit_nfe"] > 0 and r["calibration_fit_seconds"] > 0
        assert r["calibration_samples"] == 8
    assert "calibration_fit_nfe" not in rows["dpmpp_2m"]
    assert rows["dpmpp_2m+cal"]["fid"] != rows["dpmpp_2m"]["fid"]
    write_report(tmp_path / "run", rep)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "dpmpp_2m+cal at 6 NFE: grid calibrated on 8 noises" in md


def test_calibration_file_entry_and_bad_names(tmp_path):
    ev, cfg = _evaluator(tmp_path)
    g = cfg.data.gmm
    mix = GaussianMixture.default(dim=g.dim, components=g.components, seed=g.seed)
    c = calibrate.fit(mix, "dpmpp_2m", steps=6, num_samples=4, iterations=1, progress=False)
    path = calibrate.save(c, tmp_path / "c.safetensors")
    ev, cfg = _evaluator(tmp_path, f"eval.samplers.dpmpp_2m.calibration={path}")
    rep = ev.evaluate(mix, torch.device("cpu"))
    (row,) = [r for r in rep["results"] if r["label"] == "dpmpp_2m"]
    assert row["status"] == "ok" and row["calibration_samples"] == 4
    # Checked when the sweep is planned, before anything runs.
    with pytest.raises(
        ConfigError, match=r"eval\.calibrate\.samplers: 'edm_heun' is not evaluated"
    ):
        _evaluator(tmp_path, "eval.calibrate.samplers=[edm_heun]")
