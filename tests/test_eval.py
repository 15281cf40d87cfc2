import json
import time

import pytest
import torch
from omegaconf import OmegaConf

from samplerlab.analytic import GaussianMixture
from samplerlab.errors import ConfigError
from samplerlab.evaluation.evaluator import Evaluator
from samplerlab.evaluation.features import INCEPTION_FILE, build_features
from samplerlab.evaluation.fid import fid_from_stats
from samplerlab.evaluation.fid import stats_of as _stats
from samplerlab.evaluation.plan import plan_jobs, steps_for_budget
from samplerlab.samplers import SAMPLERS, get_sampler
from samplerlab.trainer.config import load_config
from samplerlab.trainer.data import DiffusionDataModule


def make_evaluator(tmp_path, *overrides):
    cfg = load_config("test", overrides=[f"out_dir={tmp_path / 'run'}", *overrides])
    dm = DiffusionDataModule(cfg.data)
    return Evaluator(cfg, dm, tmp_path / "run"), cfg


def exact_gmm(cfg):
    g = cfg.data.gmm
    return GaussianMixture.default(dim=g.dim, components=g.components, seed=g.seed)


def test_steps_for_budget_respects_nfe():
    assert steps_for_budget(get_sampler("euler"), 10) == 10
    assert steps_for_budget(get_sampler("edm_heun"), 10) == 5  # 2n - 1 <= 10
    for name, spec in SAMPLERS.items():
        s = steps_for_budget(spec, 12)
        assert spec.nfe(s) <= 12 or s == 1, name


def test_plan_covers_every_registered_sampler_at_run_time():
    cfg = load_config(overrides=["eval.exclude=[ddpm]", "eval.samplers.ddpm_sde.sampler=ddpm"])
    jobs = plan_jobs(cfg.eval)
    labels = {j.label for j in jobs}
    assert labels == (set(SAMPLERS) - {"ddpm"}) | {"ddpm_sde"}
    assert all(len([j for j in jobs if j.label == lab]) == len(cfg.eval.nfe) for lab in labels)


def test_plan_budgets_count_the_entry_options():
    # rmm_pc's NFE depends on corrector_steps: 5 steps cost 33 NFE with 3 corrector steps.
    cfg = load_config(
        overrides=[
            "eval.all_samplers=false",
            "eval.nfe=[20]",
            "eval.samplers.pc.sampler=rmm_pc",
            "eval.samplers.pc.options.corrector_steps=3",
            "eval.samplers.pc3.sampler=rmm_pc",
            "eval.samplers.pc3.options.corrector_steps=3",
            "eval.samplers.pc3.steps=[3]",
        ]
    )
    spec = get_sampler("rmm_pc")
    (job,), (fixed,) = ([j for j in plan_jobs(cfg.eval) if j.label == lab] for lab in ("pc", "pc3"))
    assert job.steps == 3 and spec.nfe(job.steps, job.options) <= 20
    assert spec.nfe(job.steps + 1, job.options) > 20
    assert fixed.budget == int(spec.nfe(3, {"corrector_steps": 3})) == 17  # 5 + 2*3*2


def test_fid_from_stats_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    b = a * 2 + 1
    fid = fid_from_stats(_stats(a), _stats(b))
    ca, _cb = torch.cov(a.T), torch.cov(b.T)
    ma, mb = a.mean(0), b.mean(0)
    # b = 2a + 1: Sigma_b = 4 Sigma_a, so Tr(Sa + Sb - 2 sqrt(Sa Sb)) = Tr(Sa) (1 + 4 - 4).
    expect = float(((ma - mb) ** 2).sum() + torch.trace(ca))
    assert fid == pytest.approx(expect, rel=1e-9)
    assert fid_from_stats(_stats(a), _stats(a)) == pytest.approx(0.0, abs=1e-9)


def test_exact_denoiser_reaches_floor_and_cache_is_reused(tmp_path):
    ev, cfg = make_evaluator(
        tmp_path, "eval.num_samples=256", "eval.batch_size=128", "eval.nfe=[25]"
    )
    rep = ev.evaluate(exact_gmm(cfg), torch.device("cpu"))
    fids = {r["label"]: r["fid"] for r in rep["results"]}
    # Samples of the exact model are as close to the data as two halves of the data are.
    assert all(f < 3 * rep["fid_floor"] + 0.05 for f in fids.values()), (fids, rep["fid_floor"])
    cache = list((tmp_path / "fid_cache").glob("real-*.pt"))
    assert len(cache) == 1
    ev2, _ = make_evaluator(tmp_path, "eval.num_samples=256", "eval.batch_size=64", "eval.nfe=[25]")
    assert ev2.real_stats(torch.device("cpu"))["all"]["n"] == 256
    rep2 = ev2.evaluate(exact_gmm(cfg), torch.device("cpu"))
    # Batch size does not change samples (per-sample seeds): same FID.
    for r, r2 in zip(rep["results"], rep2["results"], strict=True):
        assert r2["fid"] == pytest.approx(r["fid"], rel=1e-5)


def test_non_finite_is_reported_not_averaged(tmp_path):
    ev, cfg = make_evaluator(tmp_path)
    mix = exact_gmm(cfg)

    def broken(x, sigma):
        out = mix(x, sigma)
        return torch.where(sigma[:, None] < 1.0, torch.full_like(out, float("nan")), out)

    broken.data_shape = mix.data_shape
    rep = ev.evaluate(broken, torch.device("cpu"))
    for r in rep["results"]:
        assert r["status"] == "non-finite" and r["fid"] is None
        assert "round" in r["error"]
    from samplerlab.evaluation.report import write_report

    write_report(tmp_path / "run", rep)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "non-finite" in md
    assert json.loads((tmp_path / "run" / "report.json").read_text())["results"][0]["fid"] is None


def test_iia_fit_integration(tmp_path):
    """IIA samplers get coeffs= fitted on the fly by samplerlab.iia.fit, or from a file."""
    from samplerlab import iia
    from samplerlab.evaluation.fits import job_coeffs
    from samplerlab.evaluation.plan import Job

    _, cfg = make_evaluator(tmp_path, "eval.iia.M=2", "eval.iia.num_samples=4")
    cpu = torch.device("cpu")
    mix = exact_gmm(cfg)
    fitted = job_coeffs(Job("x", "iia_edm", 11, 6, coeffs="fit"), mix, cfg.eval, device=cpu)
    assert isinstance(fitted, iia.IIACoefficients) and fitted.sampler == "iia_edm"
    assert fitted.metadata["M"] == 2 and fitted.metadata["num_samples"] == 4
    assert fitted.mask.any()
    path = iia.save(fitted, tmp_path / "edm.safetensors")
    loaded = job_coeffs(Job("x", "iia_edm", 11, 6, coeffs=str(path)), mix, cfg.eval, device=cpu)
    assert isinstance(loaded, iia.IIACoefficients) and loaded.sampler == "iia_edm"
    torch.testing.assert_close(loaded.coeffs, fitted.coeffs, rtol=0, atol=0)
    default = Job("x", "iia_edm", 11, 6, coeffs="default")
    assert job_coeffs(default, None, cfg.eval, device=cpu) is None
    missing = Job("x", "iia_edm", 11, 6, coeffs=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigError, match="coeffs"):
        job_coeffs(missing, None, cfg.eval, device=cpu)


def test_feature_errors_one_line(tmp_path):
    ev_cfg = OmegaConf.create({"feature": "inception", "inception_weights": None})
    data = OmegaConf.create({"name": "digits"})
    with pytest.raises(ConfigError) as e:
        build_features(ev_cfg, data, (1, 8, 8))
    assert "eval.inception_weights" in str(e.value) and INCEPTION_FILE in str(e.value)
    ev_cfg.inception_weights = str(tmp_path / "nope.pth")
    with pytest.raises(ConfigError, match="does not exist"):
        build_features(ev_cfg, data, (1, 8, 8))
    with pytest.raises(ConfigError, match=r"eval\.feature=raw"):
        build_features(OmegaConf.create({"feature": "classifier"}), data, (8,))
    cls_cfg = OmegaConf.create({"feature": "classifier", "classifier_weights": None})
    with pytest.raises(ConfigError, match="no classifier ships"):
        build_features(cls_cfg, OmegaConf.create({"name": "cifar10"}), (3, 32, 32))


def test_shipped_digits_classifier_is_accurate():
    from samplerlab.evaluation.features import load_classifier, shipped_classifier
    from samplerlab.trainer.data import digits_tensor

    path = shipped_classifier("digits")
    assert path is not None and path.stat().st_size < 1_000_000
    net = load_classifier(path)
    x, y = digits_tensor(8)
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean()
    assert acc > 0.97
    blob = torch.load(path, weights_only=True)
    assert blob["test_accuracy"] > 0.95


def test_wandb_offline_run_holds_fid_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    from samplerlab.trainer.run import train

    cfg = load_config(
        "test",
        overrides=[
            f"out_dir={tmp_path / 'run'}",
            "logger.wandb=true",
            "logger.mode=offline",
            f"logger.dir={tmp_path / 'wb'}",
        ],
    )
    train(cfg)
    keys = (b"val/fid/euler_2", b"val/fid/ddim_4", b"val/nfe/euler_2", b"val/results")
    # W&B's service process writes the offline file; on a loaded machine it may still be
    # flushing when train() returns, so wait for it (at most a minute).
    deadline = time.monotonic() + 60
    while True:
        files = list((tmp_path / "wb").rglob("wandb-summary.json")) + list(
            (tmp_path / "wb").rglob("*.wandb")
        )
        data = b"".join(f.read_bytes() for f in files)
        if all(k in data for k in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert files, list((tmp_path / "wb").rglob("*"))
    for key in keys:
        assert key in data, key


def test_iia_fit_of_a_job_is_sharded_over_the_evaluations_ranks(tmp_path):
    """Two ranks (threads) fit a job's coefficients on halves of the fitting noises and
    all-reduce through Dist: the coefficients one process fits, on every rank."""
    import threading

    from samplerlab.evaluation.dist import Dist
    from samplerlab.evaluation.fits import job_coeffs
    from samplerlab.evaluation.plan import Job

    _, cfg = make_evaluator(tmp_path, "eval.iia.M=2", "eval.iia.num_samples=7")
    mix, cpu = exact_gmm(cfg), torch.device("cpu")
    job = Job("x", "iia_edm", 11, 6, coeffs="fit")
    one = job_coeffs(job, mix, cfg.eval, device=cpu)
    barrier, parts, out, seen = threading.Barrier(2), {}, {}, {0: [], 1: []}

    class Strategy:  # the collectives Dist reads of a Lightning strategy
        world_size = 2

        def __init__(self, rank):
            self.global_rank = rank

        def reduce(self, t, reduce_op):
            assert reduce_op == "sum"
            parts[self.global_rank] = t.clone()
            barrier.wait()
            total = parts[0] + parts[1]
            barrier.wait()
            seen[self.global_rank].append(not torch.equal(parts[0], parts[1]))
            return total

    def run(rank):
        out[rank] = job_coeffs(job, mix, cfg.eval, device=cpu, dist=Dist(Strategy(rank)))

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every fitted step all-reduced on both ranks, each rank holding its own noises.
    assert seen[0] and seen[0] == seen[1] and all(seen[0])
    for rank in (0, 1):
        assert torch.equal(out[rank].mask, one.mask)
        torch.testing.assert_close(out[rank].coeffs, one.coeffs, rtol=1e-12, atol=1e-14)
        assert out[rank].metadata["world_size"] == 2 and out[rank].metadata["num_samples"] == 7
