"""benchmarks/bench_train_gpu.py: the CPU smoke run end to end, the compiled-network plumbing
(dynamo's eager backend: same samples), the row padding, and the one-line input errors."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load():
    pytest.importorskip("diffusers")
    spec = importlib.util.spec_from_file_location(
        "bench_train_gpu", ROOT / "benchmarks" / "bench_train_gpu.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _load()


@pytest.fixture(scope="module")
def smoke(bench, tmp_path_factory):
    """One smoke run (train 3 steps, evaluate, time 2 samplers); its work dir is kept."""
    root = tmp_path_factory.mktemp("bench_train")
    out, work = root / "out", root / "work"
    assert bench.main(["--smoke", "--out", str(out), "--work-dir", str(work)]) == 0
    return out, work


def test_smoke_writes_every_cell(smoke):
    out, work = smoke
    data = json.loads((out / "bench_train_gpu.json").read_text())
    md = (out / "bench_train_gpu.md").read_text()
    assert len(list((work / "data").glob("img_*.png"))) == 32
    # Training went through samplerlab's trainer with the requested settings.
    (tr,) = data["train"]
    assert tr["precision"] == "32-true" and tr["steps"] == 3 and tr["batch"] == 8
    assert math.isfinite(tr["final_loss"]) and tr["images_per_s"] > 0
    assert (work / "train_32-true" / "checkpoints" / "last.ckpt").is_file()
    # Evaluation through samplerlab's evaluate: one finite raw FID row per budget.
    (ev,) = data["eval"]["results"]
    assert ev["label"] == "ddim" and ev["budget"] == 4 and ev["status"] == "ok"
    assert math.isfinite(ev["fid"]) and ev["nfe"] == 4.0
    # Throughput: 2 samplers x 1 budget x 2 batches x 2 precisions x eager.
    cells = data["cells"]
    got = {(c["sampler"], c["batch"], c["precision"], c["mode"]) for c in cells}
    want = {
        (s, b, p, "eager") for s in ("ddim", "dpmpp_2m") for b in (2, 4) for p in ("fp32", "bf16")
    }
    assert got == want and len(cells) == len(want)
    for c in cells:
        assert "error" not in c, c
        assert c["nfe"] == 4.0 and c["steps"] == 4 and c["samples_per_s"] > 0
        assert c["samples_per_s"] == pytest.approx(c["batch"] / c["seconds"])
        if c["sampler"] == "ddim":
            assert c["vs_ddim"] == pytest.approx(1.0)
        if c["precision"] == "fp32":
            assert c["rel_diff"] == 0.0 and c["vs_eager_fp32"] == pytest.approx(1.0)
        else:  # bf16 autocast changes the samples a little, not a lot
            assert 0 < c["rel_diff"] < 0.05
    assert "| dpmpp_2m | 4 | 4 | 4 | bf16 | eager |" in md
    assert "## Training" in md and "## Evaluation" in md
    # Sampling used the counter-based per-sample noise, drawn on the sampling device.
    assert "per-sample noise `splitmix` drawn on the sampling device" in md


def test_compiled_network_gives_the_same_samples(bench, smoke, tmp_path):
    """The compiled path (dynamo, eager backend) with padded rows: SRDS's wider calls too."""
    _, work = smoke
    ckpt = work / "train_32-true" / "checkpoints" / "last.ckpt"
    argv = ["--smoke", "--ckpt", str(ckpt), "--work-dir", str(work), "--out", str(tmp_path)]
    argv += ["--eval-samples", "0", "--samplers", "ddim", "srds", "--batch", "2"]
    argv += ["--precisions", "fp32", "--modes", "eager", "compiled", "--compile-backend", "eager"]
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    try:
        assert bench.main(argv) == 0
        assert counters["stats"]["unique_graphs"] >= 1  # dynamo really traced the network
    finally:
        torch._dynamo.reset()
    data = json.loads((tmp_path / "bench_train_gpu.json").read_text())
    assert data["train"] == [] and data["eval"] is None
    compiled = [c for c in data["cells"] if c["mode"] == "compiled"]
    assert {c["sampler"] for c in compiled} == {"ddim", "srds"}
    for c in compiled:
        assert "error" not in c, c
        assert c["rel_diff"] < 1e-6  # same network, same samples
    srds = next(c for c in compiled if c["sampler"] == "srds")
    assert srds["nfe"] > 4  # SRDS evaluated more than one row block per call


def test_network_attr_names_the_wrapped_call(bench):
    from samplerlab.samplers.denoisers import EDMDenoiser, from_eps
    from samplerlab.samplers.schedules import betas_for

    ac = torch.cumprod(1 - betas_for("linear", 1000), 0)
    assert bench.network_attr(from_eps(lambda x, t: x, ac)) == "model_fn"
    assert bench.network_attr(EDMDenoiser(lambda x, c: x)) == "net"
    with pytest.raises(TypeError, match="cannot wrap"):
        bench.network_attr(lambda x, s: x)


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--samplers", "nope"], "unknown sampler 'nope'"),
        (["--ckpt", "/nonexistent/last.ckpt"], "--ckpt: checkpoint /nonexistent/last.ckpt"),
        (["--batch", "0"], "must be >= 1"),
    ],
)
def test_bad_input_is_one_line(bench, capsys, argv, msg):
    assert bench.main(["--smoke", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1
