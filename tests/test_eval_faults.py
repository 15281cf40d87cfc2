"""Evaluations that survive faults: checks before any work, error rows of any exception,
resumable rows, diverged and over-budget rows, FID with its spread, a content-keyed cache."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from samplerlab.analytic import GaussianMixture
from samplerlab.callbacks.sampler_eval import SamplerEvalCallback
from samplerlab.errors import ConfigError
from samplerlab.evaluation import checks, job
from samplerlab.evaluation.evaluator import Evaluator
from samplerlab.trainer.config import load_config
from samplerlab.trainer.data import DiffusionDataModule
from samplerlab.trainer.module import build_module

CPU = torch.device("cpu")


def make(tmp_path, *overrides, out="run"):
    cfg = load_config("test", overrides=[f"out_dir={tmp_path / out}", *overrides])
    dm = DiffusionDataModule(cfg.data)
    return Evaluator(cfg, dm, tmp_path / out), cfg


def exact_gmm(cfg):
    g = cfg.data.gmm
    return GaussianMixture.default(dim=g.dim, components=g.components, seed=g.seed)


def callback(tmp_path, *overrides):
    cfg = load_config("test", overrides=[f"out_dir={tmp_path / 'run'}", *overrides])
    dm = DiffusionDataModule(cfg.data)
    dm.prepare()
    return SamplerEvalCallback(cfg, dm, tmp_path / "run"), build_module(cfg, dm.shape, 0)


# --- checks before any work ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("eval.samplers.ddim.options.eta=abc", "eval.samplers.ddim"),
        ("eval.samplers.euler.schedule_options.rho=0", "eval.samplers.euler"),
        ("eval.samplers.euler.schedule_options.sigma_min=-1", "eval.samplers.euler"),
        ("eval.samplers.x.sampler=iia_ddim", "eval.samplers.x.coeffs: file .* not found"),
    ],
)
def test_bad_job_fails_before_training(tmp_path, override, key):
    extra = [f"eval.samplers.x.coeffs={tmp_path / 'none.safetensors'}"] if "x." in override else []
    cb, module = callback(tmp_path, override, *extra)
    with pytest.raises(ConfigError) as e:
        cb.check(module)
    assert re.search(key, str(e.value)) and "\n" not in str(e.value)


def test_bad_value_of_an_option_the_nfe_rule_reads_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^eval\.samplers\.pc: TypeError"):
        callback(
            tmp_path,
            "eval.samplers.pc.sampler=rmm_pc",
            "eval.samplers.pc.options.corrector_steps=abc",
        )


def test_train_with_a_bad_option_value_trains_nothing(tmp_path):
    from samplerlab.trainer.run import train

    cfg = load_config(
        "test", overrides=[f"out_dir={tmp_path / 'run'}", "eval.samplers.ddim.options.eta=abc"]
    )
    with pytest.raises(ConfigError, match=r"eval\.samplers\.ddim"):
        train(cfg)
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def test_every_problem_is_listed_at_once(tmp_path):
    cb, module = callback(
        tmp_path,
        "eval.samplers.ddim.options.eta=abc",
        "eval.samplers.euler.schedule_options.rho=0",
    )
    with pytest.raises(ConfigError) as e:
        cb.check(module)
    msg = str(e.value)
    assert "eval.samplers.ddim" in msg and "eval.samplers.euler" in msg
    assert "rho=0" in msg and "eta='abc'" in msg


def _fit_file(tmp_path, den, steps, name="c.safetensors"):
    from samplerlab import iia

    c = iia.fit(den, "iia_ddim", steps=steps, M=2, num_samples=4, progress=False)
    return iia.save(c, tmp_path / name)


def test_coefficient_file_of_another_grid_or_model_fails_first(tmp_path):
    cb, module = callback(tmp_path, "eval.all_samplers=false")
    den = module.make_denoiser(module.net)
    other_grid = _fit_file(tmp_path, den, 3, "grid3.safetensors")
    opts = ["eval.samplers.ddim.enabled=false", "eval.samplers.euler.enabled=false"]
    cb, module = callback(
        tmp_path, *opts, "eval.samplers.x.sampler=iia_ddim", f"eval.samplers.x.coeffs={other_grid}"
    )
    with pytest.raises(ConfigError, match=r"eval\.samplers\.x\.coeffs.*another grid"):
        cb.check(module, stage="validate")
    # Same grid, another model (the evaluated weights differ from the fitted ones).
    matching = _fit_file(tmp_path, den, 2, "grid2.safetensors")
    cb, module = callback(
        tmp_path,
        *opts,
        "eval.nfe=[2]",
        "eval.samplers.x.sampler=iia_ddim",
        f"eval.samplers.x.coeffs={matching}",
    )
    torch.nn.init.constant_(next(module.net.parameters()), 0.5)
    with pytest.raises(ConfigError, match=r"another model .*eval\.iia\.check_model=false"):
        cb.check(module, stage="validate")
    # Training a new model: a file cannot match it.
    cb2, module2 = callback(
        tmp_path,
        *opts,
        "eval.nfe=[2]",
        "eval.samplers.x.sampler=iia_ddim",
        f"eval.samplers.x.coeffs={matching}",
    )
    with pytest.raises(ConfigError, match="trains a new one"):
        cb2.check(module2, stage="fit")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_fails_first(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write into"):
            make(tmp_path, out="ro/run")
    finally:
        ro.chmod(0o700)


def test_unwritable_output_fails_first(tmp_path, monkeypatch):
    """As the read-only test, for a process that may write anywhere (root, CI containers)."""

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checks.tempfile, "mkstemp", refuse)
    with pytest.raises(ConfigError, match=r"out_dir: cannot write into .*Permission denied"):
        make(tmp_path)


def test_output_file_that_is_a_folder_fails_first(tmp_path):
    (tmp_path / "run" / "report.json").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"report\.json is a folder"):
        make(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        make(tmp_path, out="file")


# --- faults are rows -------------------------------------------------------------------------


def test_any_exception_is_that_jobs_error_row(tmp_path, monkeypatch):
    real_sample = job.sample

    def flaky(den, name, **kw):
        if name == "ddim":
            raise KeyError("boom")
        return real_sample(den, name, **kw)

    monkeypatch.setattr(job, "sample", flaky)
    ev, cfg = make(tmp_path)
    rep = ev.evaluate(exact_gmm(cfg), CPU)
    by = {(r["label"], r["budget"]): r for r in rep["results"]}
    assert len(by) == 4
    for b in (2, 4):
        assert by["ddim", b]["status"] == "error" and by["ddim", b]["error"] == "KeyError: 'boom'"
        assert by["euler", b]["status"] == "ok" and by["euler", b]["fid"] is not None
    assert "KeyError: 'boom'" in (tmp_path / "run" / "report.md").read_text()


def test_wrong_shape_denoiser_is_an_error_row(tmp_path):
    ev, cfg = make(tmp_path)
    mix = exact_gmm(cfg)

    def narrow(x, sigma):
        return mix(x, sigma)[:, :1]  # [B, 1] would broadcast silently against [B, 2]

    narrow.data_shape = mix.data_shape
    rep = ev.evaluate(narrow, CPU)
    for r in rep["results"]:
        assert r["status"] == "error" and "shape" in r["error"], r


class Interrupt(BaseException):
    """Stands in for a kill between two rows."""


def test_killed_evaluation_resumes_and_skips_finished_rows(tmp_path, monkeypatch):
    real_sample = job.sample
    calls: list[tuple[str, int]] = []

    def counting(den, name, *, steps, **kw):
        calls.append((name, steps))
        if len(calls) == 3 and kill:
            raise Interrupt()
        return real_sample(den, name, steps=steps, **kw)

    monkeypatch.setattr(job, "sample", counting)
    kill = True
    ev, cfg = make(tmp_path)
    with pytest.raises(Interrupt):
        ev.evaluate(exact_gmm(cfg), CPU)
    lines = (tmp_path / "run" / "rows.jsonl").read_text().splitlines()
    assert len(lines) == 2  # two rows finished before the kill, each kept
    md = (tmp_path / "run" / "report.md").read_text()
    assert "2 of 4 rows finished" in md  # the report was rewritten as rows finished
    kill, calls[:] = False, []
    ev2, _ = make(tmp_path)
    rep = ev2.evaluate(exact_gmm(cfg), CPU)
    assert len(calls) == 2  # only the two missing rows ran
    assert [r.get("resumed", False) for r in rep["results"]] == [True, True, False, False]
    fresh, _ = make(tmp_path, out="fresh")
    ref = fresh.evaluate(exact_gmm(cfg), CPU)
    for a, b in zip(rep["results"], ref["results"], strict=True):
        assert a["fid"] == pytest.approx(b["fid"], rel=1e-9)
    # Another model: nothing is reused.
    calls[:] = []
    ev3, _ = make(tmp_path)
    ev3.evaluate(exact_gmm(cfg), CPU, model_id="another-model")
    assert len(calls) == 4


def test_diverged_samples_are_not_ok(tmp_path):
    ev, cfg = make(tmp_path)
    mix = exact_gmm(cfg)

    def blown_up(x, sigma):
        return mix(x, sigma) * 1e6  # like coefficients scaled by 1e6: finite, absurd

    blown_up.data_shape = mix.data_shape
    rep = ev.evaluate(blown_up, CPU)
    for r in rep["results"]:
        assert r["status"] == "diverged" and r["fid"] is None and r["range_ratio"] > 1e4, r
    assert "diverged" in (tmp_path / "run" / "report.md").read_text()
    # The exact model's samples stay within the data's range.
    ev2, _ = make(tmp_path, out="exact")
    for r in ev2.evaluate(mix, CPU)["results"]:
        assert r["status"] == "ok" and r["range_ratio"] < 3


def test_pmm_at_few_steps_is_diverged(tmp_path):
    ev, cfg = make(tmp_path, "eval.all_samplers=false", "eval.samplers.ddim.sampler=pmm")
    ev.jobs = [j for j in ev.jobs if j.label == "ddim"]
    for r in ev.evaluate(exact_gmm(cfg), CPU)["results"]:
        assert r["status"] == "diverged", r


def test_over_budget_rows_are_marked_and_plotted_at_their_nfe(tmp_path, monkeypatch):
    import matplotlib.figure

    figs = []
    real_savefig = matplotlib.figure.Figure.savefig

    def keep(self, *a, **k):
        figs.append(self)
        return real_savefig(self, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    ev, cfg = make(tmp_path, "eval.samplers.ddim.sampler=srds", "eval.nfe=[4]")
    rep = ev.evaluate(exact_gmm(cfg), CPU)
    by = {r["label"]: r for r in rep["results"]}
    assert by["ddim"]["nfe"] > 4 and by["ddim"]["over_budget"]
    assert by["euler"]["nfe"] == 4 and not by["euler"]["over_budget"]
    md = (tmp_path / "run" / "report.md").read_text()
    assert "(over budget)" in md
    pick = next(line for line in md.splitlines() if "Pick at 4 NFE" in line)
    assert "`euler`" in pick and "`ddim`" not in pick  # an over-budget row is never picked
    ax = figs[-1].axes[0]
    assert ax.get_xscale() == "log"
    xs = {float(x) for line in ax.get_lines() for x in line.get_xdata()}
    assert by["ddim"]["nfe"] in xs and 4.0 in xs  # plotted at the realised NFE


# --- FID and its spread ----------------------------------------------------------------------


def test_no_private_torchmetrics_api():
    import samplerlab.callbacks.sampler_eval as cb

    roots = [Path(cb.__file__).parent, Path(job.__file__).parent]
    for p in [p for root in roots for p in root.glob("*.py")]:
        for line in p.read_text().splitlines():
            if "torchmetrics" in line and "import" in line:
                names = line.split("import", 1)[1].replace("(", "").split(",")
                assert not any(n.strip().startswith("_") for n in names), (p, line)


def test_frechet_distance_matches_torchmetrics_public_fid():
    from torchmetrics.image.fid import FrechetInceptionDistance

    from samplerlab.evaluation.fid import fid_from_stats, stats_of

    class Ident(torch.nn.Module):
        num_features = 5

        def forward(self, x):
            return x.double()

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 5, generator=g, dtype=torch.float64)
    b = (
        torch.randn(200, 5, generator=g, dtype=torch.float64)
        @ torch.randn(5, 5, generator=g, dtype=torch.float64)
        + 0.3
    )
    m = FrechetInceptionDistance(feature=Ident())
    m.update(a, real=True)
    m.update(b, real=False)
    assert fid_from_stats(stats_of(a), stats_of(b)) == pytest.approx(float(m.compute()), rel=1e-6)


def test_bootstrap_std_matches_the_spread_over_independent_sets():
    from samplerlab.evaluation.fid import bootstrap_fid_std, fid_from_stats, stats_of

    g = torch.Generator().manual_seed(1)
    cov = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.2]], dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    real = stats_of(torch.randn(5000, 3, generator=g, dtype=torch.float64) @ chol.T)

    def draw(n):
        return (torch.randn(n, 3, generator=g, dtype=torch.float64) @ chol.T) * 1.2 + 0.1

    fids = torch.tensor([fid_from_stats(real, stats_of(draw(200))) for _ in range(60)])
    boot = torch.tensor([bootstrap_fid_std(real, draw(200), 60, seed=s) for s in range(8)])
    ratio = float(boot.mean() / fids.std())
    assert 0.6 < ratio < 1.6, ratio


def test_rows_carry_fid_std_and_report_opens_with_pick_lines(tmp_path):
    ev, cfg = make(tmp_path)
    rep = ev.evaluate(exact_gmm(cfg), CPU)
    assert all(r["fid_std"] is not None and r["fid_std"] > 0 for r in rep["results"])
    md = (tmp_path / "run" / "report.md").read_text().splitlines()
    first = [line for line in md if line.strip()][1:3]
    assert first[0].startswith("- **Pick at 2 NFE:**") and first[1].startswith("- **Pick at 4")


def test_pick_lines_name_best_and_those_within_noise():
    from samplerlab.evaluation.report import pick_lines

    def row(label, fid, std, budget=10, status="ok", over=False):
        return dict(
            label=label, fid=fid, fid_std=std, budget=budget, status=status, over_budget=over
        )

    rows = [
        row("a", 3.0, 0.2),
        row("b", 3.3, 0.2),  # 0.3 <= 2 * 0.28: within
        row("c", 5.0, 0.2),
        row("d", 1.0, 0.1, over=True),  # over budget: never picked
        row("e", None, None, status="error"),
    ]
    (line,) = pick_lines(rows)
    assert "`a`" in line and "`b`" in line and "`c`" not in line and "`d`" not in line


# --- the real-statistics cache ---------------------------------------------------------------


def _images(root, n=6, seed=0):
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        px = torch.randint(0, 256, (4, 4), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(px).save(root / f"{i}.png")


def test_cache_is_rebuilt_after_the_images_change(tmp_path):
    root = tmp_path / "img"
    _images(root)
    data = [
        "data.name=image_folder",
        f"data.root={root}",
        "data.image_size=4",
        "eval.feature=raw",
        f"eval.cache_dir={tmp_path / 'cache'}",
    ]
    ev, _ = make(tmp_path, *data)
    first = ev.real_stats(CPU)["all"]["sum"].clone()
    _images(root, seed=1)  # same names and count, other pixels
    st = (root / "0.png").stat()
    os.utime(root / "0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ev2, _ = make(tmp_path, *data)
    second = ev2.real_stats(CPU)["all"]["sum"]
    assert not torch.allclose(first, second)
    assert len(list((tmp_path / "cache").glob("real-*.pt"))) == 2


def test_corrupt_cache_is_rebuilt_with_a_note(tmp_path):
    ev, _ = make(tmp_path)
    good = ev.real_stats(CPU)["all"]["sum"].clone()
    path = ev.cache_path()
    path.write_bytes(b"not a torch file")
    ev2, _ = make(tmp_path)
    torch.testing.assert_close(ev2.real_stats(CPU)["all"]["sum"], good)
    assert any(str(path) in n and "corrupt" in n for n in ev2.notes)
    torch.load(path, weights_only=True)  # rewritten


# --- evaluate: checkpoint, stale grids, one progress bar -------------------------------------


def test_evaluate_records_checkpoint_and_clears_stale_grids(tmp_path, capsys):
    from samplerlab.cli import main
    from samplerlab.trainer.run import evaluate, train

    train(load_config("test", overrides=[f"out_dir={tmp_path / 't'}", "eval.enabled=false"]))
    ckpt = tmp_path / "t" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True, mmap=True)
    out = tmp_path / "e"
    evaluate(str(ckpt), [], [f"out_dir={out}"])
    capsys.readouterr()
    assert main(["evaluate", "--ckpt", str(ckpt), f"out_dir={out}"]) == 0  # the same again
    assert "4 rows: 4 ok; 4 resumed" in capsys.readouterr().out
    assert {p.name for p in (out / "grids").iterdir()} == {
        f"{s}_nfe{b}.png" for s in ("euler", "ddim") for b in (2, 4)
    }
    (report,) = evaluate(str(ckpt), [], [f"out_dir={out}", "eval.samplers.ddim.enabled=false"])[
        "reports"
    ]
    assert {p.name for p in (out / "grids").iterdir()} == {"euler_nfe2.png", "euler_nfe4.png"}
    assert report["checkpoint"]["path"] == str(ckpt.resolve())
    assert (report["epoch"], report["step"]) == (saved["epoch"], saved["global_step"])
    assert report["step"] > 0
    md = (out / "report.md").read_text()
    assert str(ckpt.resolve()) in md and f"step {saved['global_step']}" in md
    assert json.loads((out / "report.json").read_text())["checkpoint"]["step"] == report["step"]
    # A coefficient file fitted on this checkpoint (as `iia-fit --ckpt` does) matches it.
    from samplerlab import iia
    from samplerlab.trainer.checkpoints import load_denoiser

    c = iia.fit(load_denoiser(ckpt), "iia_ddim", steps=4, M=2, num_samples=4, progress=False)
    path = iia.save(c, tmp_path / "c.safetensors")
    (rep,) = evaluate(
        str(ckpt),
        [],
        [
            f"out_dir={tmp_path / 'e2'}",
            "eval.nfe=[4]",
            "eval.dtype=float64",
            "eval.samplers.x.sampler=iia_ddim",
            f"eval.samplers.x.coeffs={path}",
        ],
    )["reports"]
    assert {r["label"]: r["status"] for r in rep["results"]}["x"] == "ok"


def test_one_progress_bar_and_quiet_iia_fits(tmp_path, capfd, caplog):
    import logging

    caplog.set_level(logging.INFO)
    ev, cfg = make(
        tmp_path,
        "trainer.enable_progress_bar=true",
        "eval.samplers.ddim.sampler=iia_ddim",
        "eval.iia.M=2",
        "eval.iia.num_samples=4",
    )
    ev.evaluate(exact_gmm(cfg), CPU)
    err = capfd.readouterr().err
    assert "samplerlab eval" in err and "4/4" in err  # one bar over the four jobs
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for banner in ("GPU available", "TPU available", "max_epochs", "Training:"):
        assert banner not in err and banner not in logged, banner


@pytest.mark.parametrize("nf", [3, 40])
def test_bootstrap_resample_fid_is_the_fid_of_the_resampled_set(nf):
    """The Gram-matrix path (n <= F) and the F x F path give the FID of the resampled set."""
    from samplerlab.evaluation import fid as F

    g = torch.Generator().manual_seed(2)
    real = F.stats_of(torch.randn(300, nf, generator=g, dtype=torch.float64))
    feats = torch.randn(30, nf, generator=g, dtype=torch.float64) * 1.5 + 0.2
    got = F.bootstrap_fid_std(real, feats, 5, seed=7)
    gen = torch.Generator().manual_seed(7)
    fids = []
    for _ in range(5):
        idx = torch.randint(0, 30, (30,), generator=gen)
        fids.append(F.fid_from_stats(real, F.stats_of(feats[idx])))
    assert got == pytest.approx(float(torch.tensor(fids, dtype=torch.float64).std()), rel=1e-6)


def test_coefficients_scaled_by_1e6_are_a_diverged_row(tmp_path):
    import dataclasses

    from samplerlab import iia

    _, cfg = make(tmp_path, out="fit")
    mix = exact_gmm(cfg)
    c = iia.fit(mix, "iia_ddim", steps=4, M=2, num_samples=4, progress=False)
    # Hand-made scalars (no fit digest: a file edited after fitting is refused on load).
    meta = {k: v for k, v in c.metadata.items() if k != "coeffs_digest"}
    big = dataclasses.replace(c, coeffs=c.coeffs * 1e6, metadata=meta)
    path = iia.save(big, tmp_path / "big.safetensors")
    ev, _ = make(
        tmp_path,
        "eval.nfe=[4]",
        "eval.samplers.ddim.enabled=false",
        "eval.samplers.euler.enabled=false",
        "eval.samplers.x.sampler=iia_ddim",
        f"eval.samplers.x.coeffs={path}",
    )
    ev.check_jobs(mix)  # the file itself is fine: same grid, same model
    (row,) = ev.evaluate(mix, CPU)["results"]
    assert row["status"] == "diverged" and row["range_ratio"] > 1e3, row


def test_unwritable_cache_is_a_note_not_a_failure(tmp_path):
    (tmp_path / "blocker").write_text("a file where the cache folder would be")
    ev, cfg = make(tmp_path, f"eval.cache_dir={tmp_path / 'blocker' / 'cache'}")
    rep = ev.evaluate(exact_gmm(cfg), CPU)
    assert all(r["status"] == "ok" for r in rep["results"])
    assert any("FID cache" in n and "not written" in n for n in rep["notes"])


def test_row_store_skips_a_damaged_line(tmp_path):
    from samplerlab.evaluation.rows import RowStore

    store = RowStore(tmp_path / "rows.jsonl")
    store.append({"key": "a", "fid": 1.0})
    with open(store.path, "a") as f:
        f.write('{"key": "b", "fi')  # a hand-truncated line: that row is simply re-run
    store.append({"key": "c", "fid": 3.0})
    assert set(store.load()) == {"a", "c"}
    assert not list(tmp_path.glob("*.tmp"))


def test_check_model_false_lets_another_models_coefficients_sample(tmp_path):
    from samplerlab import iia

    _, cfg = make(tmp_path, out="fit")
    mix = exact_gmm(cfg)
    # Same grid, another model: the fit's fingerprint differs from the evaluated model's.
    other = GaussianMixture(mix.weights, mix.means + 0.05, mix.stds)
    c = iia.fit(other, "iia_ddim", steps=4, M=2, num_samples=4, progress=False)
    path = iia.save(c, tmp_path / "other.safetensors")
    jobs = [
        "eval.nfe=[4]",
        "eval.samplers.ddim.enabled=false",
        "eval.samplers.euler.enabled=false",
        "eval.samplers.x.sampler=iia_ddim",
        f"eval.samplers.x.coeffs={path}",
    ]
    ev, _ = make(tmp_path, *jobs, out="strict")
    (row,) = ev.evaluate(mix, CPU)["results"]
    assert row["status"] == "error" and "another model" in row["error"], row
    ev, _ = make(tmp_path, *jobs, "eval.iia.check_model=false", out="override")
    (row,) = ev.evaluate(mix, CPU)["results"]
    assert row["status"] == "ok", row


def test_one_outlier_sample_is_not_a_diverged_row(tmp_path):
    many = ["eval.num_samples=200", "eval.batch_size=200", "eval.nfe=[4]"]
    ev, cfg = make(tmp_path, *many, "eval.all_samplers=false", "eval.samplers.ddim.sampler=ddim")
    ev.jobs = [j for j in ev.jobs if j.label == "ddim"]
    mix = exact_gmm(cfg)
    n = cfg.eval.num_samples

    def outliers(k):
        def den(x, sigma):
            out = mix(x, sigma)
            # The last step (sigma -> 0) sends the first k rows of each call far away.
            far = (sigma == sigma.min()).all() and bool(sigma.max() < 1e-2)
            return torch.cat([out[:k] * 1e6, out[k:]]) if far else out

        den.data_shape = mix.data_shape
        return den

    (r,) = ev.evaluate(outliers(1), CPU)["results"][:1]
    assert r["status"] == "ok" and r["range_ratio"] > 1e4, r  # 1 of n: a sample, not a sampler
    assert 0 < r["beyond_fraction"] <= cfg.eval.diverge_fraction
    ev2, _ = make(
        tmp_path, *many, "eval.all_samplers=false", "eval.samplers.ddim.sampler=ddim", out="many"
    )
    ev2.jobs = [j for j in ev2.jobs if j.label == "ddim"]
    (r,) = ev2.evaluate(outliers(max(2, n // 8)), CPU)["results"][:1]
    assert r["status"] == "diverged" and r["beyond_fraction"] > cfg.eval.diverge_fraction, r


def test_diverge_fraction_is_checked():
    from samplerlab.errors import ConfigError as CE

    with pytest.raises(CE, match=r"eval\.diverge_fraction"):
        load_config("test", overrides=["eval.diverge_fraction=1.5"])
