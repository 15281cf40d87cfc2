"""The evaluation sweep with classifier-free guidance: samplers x budgets x guidance scales
on a class-conditional model, scored by FID and the digits classifier's accuracy."""

from __future__ import annotations

import threading

import pytest
import torch

import samplerlab as sl
from samplerlab.errors import ConfigError
from samplerlab.evaluation.dist import Dist
from samplerlab.evaluation.evaluator import Evaluator
from samplerlab.evaluation.features import load_classifier, shipped_classifier
from samplerlab.evaluation.guidance import class_accuracy, guided_kwargs
from samplerlab.evaluation.job import JobContext, run_job
from samplerlab.evaluation.plan import plan_jobs
from samplerlab.evaluation.report import flat_metrics
from samplerlab.trainer.checkpoints import load_checkpoint
from samplerlab.trainer.config import load_config
from samplerlab.trainer.data import DiffusionDataModule
from samplerlab.trainer.run import evaluate, train

COND = ["data.name=digits", "data.conditional=true", "model.num_classes=10"]
TINY = ["model.backbone=mlp", "model.mlp.hidden=32", "model.mlp.depth=1", "eval.feature=classifier"]
GUIDED = [
    "eval.guidance=[1,3]",
    "eval.nfe=[3]",
    "eval.num_samples=20",
    "eval.batch_size=7",  # uneven batches: labels follow the seeds, not the batches
    "eval.fid_bootstrap=0",
    "eval.grid_size=4",
]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny class-conditional digits MLP after one training step."""
    tmp = tmp_path_factory.mktemp("guided")
    over = [f"out_dir={tmp / 'run'}", *COND, *TINY, "eval.enabled=false", "trainer.max_steps=1"]
    train(load_config("test", overrides=over))
    return tmp / "run" / "checkpoints" / "last.ckpt"


def test_plan_repeats_each_job_per_scale_and_unguided_jobs_are_unchanged():
    base = ["eval.nfe=[2,4]"]
    plain = plan_jobs(load_config("test", overrides=base).eval)
    ev = load_config("test", overrides=[*base, *COND, "eval.guidance=[1,2.5]"]).eval
    guided = plan_jobs(ev)
    assert len(guided) == 2 * len(plain)
    assert [(j.label, j.budget, j.steps, j.guidance) for j in guided[:2]] == [
        (plain[0].label, 2, plain[0].steps, 1.0),
        (plain[0].label, 2, plain[0].steps, 2.5),
    ]
    assert [j.tag for j in guided[:2]] == ["euler_2_w1", "euler_2_w2.5"]
    assert all(j.guidance is None and j.tag == f"{j.label}_{j.budget}" for j in plain)
    ev.guidance_interval = [0.5, 10.0]
    assert {j.guidance_interval for j in plan_jobs(ev)} == {(0.5, 10.0)}


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["eval.guidance=[1,2]"], "eval.guidance: the model is unconditional"),
        ([*COND, "eval.guidance=[2,2]"], "eval.guidance: repeated scales"),
        ([*COND, "eval.guidance=[1,nan]"], "eval.guidance: need a non-empty list of finite"),
        ([*COND, "eval.guidance_interval=[0.1,1]"], "eval.guidance_interval: needs eval.guidance"),
        ([*COND, "eval.guidance=[2]", "eval.guidance_interval=[3,1]"], "eval.guidance_interval"),
    ],
)
def test_bad_guidance_settings_one_line(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config("test", overrides=overrides)
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


def test_guided_dry_run_needs_a_conditional_model(ckpt, tmp_path):
    module, _ = load_checkpoint(ckpt)
    cfg = load_config("test", overrides=[f"out_dir={tmp_path}", *COND, *TINY, *GUIDED])
    ev = Evaluator(cfg, DiffusionDataModule(cfg.data), tmp_path)
    with pytest.raises(ConfigError, match=r"^eval\.guidance: the evaluated model is uncond"):
        ev.check_jobs(module.denoiser)  # no classes given
    ev.use_classes(module.num_classes, module.null_label)
    ev.check_jobs(module.denoiser)
    ev.use_classes(module.num_classes, None)  # guided jobs dry-run with guidance: no uncond
    with pytest.raises(ConfigError, match=r"eval\.samplers\.euler: .*uncond"):
        ev.check_jobs(module.denoiser)


def test_evaluate_checkpoint_with_guidance_scales_fid_accuracy_and_resume(ckpt):
    out = evaluate(str(ckpt), [], GUIDED)
    rows = out["reports"][-1]["results"]
    assert [(r["label"], r["guidance"]) for r in rows] == [
        ("euler", 1.0), ("euler", 3.0), ("ddim", 1.0), ("ddim", 3.0)
    ]  # fmt: skip
    assert all(r["status"] == "ok" and r["fid"] is not None for r in rows)
    assert [r["nfe"] for r in rows] == [3.0, 6.0, 3.0, 6.0]  # both guided rows counted
    assert not any(r["over_budget"] for r in rows)  # the budget counts guided evaluations
    assert len({r["key"] for r in rows}) == 4
    # The accuracy is the classifier's on samples drawn with the seeds' balanced labels.
    module, _ = load_checkpoint(ckpt)
    net = load_classifier(shipped_classifier("digits"))
    seeds = list(range(20))
    kw = guided_kwargs(seeds, 10, 3.0, module.null_label)
    res = sl.sample(module.denoiser, "ddim", steps=3, shape=(20, 1, 8, 8), seeds=seeds, **kw)
    assert rows[3]["accuracy"] == float(class_accuracy(net, res.x, kw["cond"])) / 20
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    report_dir = out["out_dir"]
    md = (report_dir / "report.md").read_text()
    assert "| sampler | guidance |" in md and "| accuracy |" in md
    assert (report_dir / "grids" / "ddim_nfe3_w3.png").is_file()
    metrics = flat_metrics(out["reports"][-1], "val")
    assert metrics["val/accuracy/ddim_3_w3"] == rows[3]["accuracy"]
    assert metrics["val/fid/euler_3_w1"] == rows[0]["fid"]
    # A rerun reads every row back instead of sampling again.
    again = evaluate(str(ckpt), [], GUIDED)["reports"][-1]["results"]
    assert all(r.get("resumed") for r in again)
    assert [(r["fid"], r["accuracy"]) for r in again] == [(r["fid"], r["accuracy"]) for r in rows]
    # Another scale is another row; the finished ones are still read back.
    more = evaluate(str(ckpt), [], [*GUIDED, "eval.guidance=[3,5]"])["reports"][-1]["results"]
    assert [bool(r.get("resumed")) for r in more] == [True, False, True, False]


class _Threads:
    """The collectives Dist reads of a Lightning strategy, for ranks run as threads."""

    def __init__(self, world: int) -> None:
        self.world, self.barrier, self.parts = world, threading.Barrier(world), {}

    def rank(self, r: int):
        shared = self

        class Strategy:
            world_size, global_rank = shared.world, r

            def _collect(self, t):
                shared.parts[r] = t
                shared.barrier.wait()
                got = [shared.parts[k] for k in range(shared.world)]
                shared.barrier.wait()
                return got

            def reduce(self, t, reduce_op):
                got = self._collect(t.clone())
                return sum(got[1:], got[0]) if reduce_op == "sum" else torch.stack(got).amax(0)

            def all_gather(self, t):
                return torch.stack(self._collect(t.clone()))

            def broadcast(self, obj, src=0):
                return self._collect(obj)[src]

            def barrier(self):
                shared.barrier.wait()

        return Strategy()


def test_two_ranks_give_the_rows_of_one(ckpt, tmp_path):
    module, _ = load_checkpoint(ckpt)
    over = [f"out_dir={tmp_path}", *COND, *TINY, *GUIDED, "eval.guidance_interval=[0.05,50]"]
    cfg = load_config("test", overrides=[*over, "eval.fid_bootstrap=4", "eval.dtype=float64"])
    ev = Evaluator(cfg, DiffusionDataModule(cfg.data), tmp_path)
    ev.use_classes(module.num_classes, module.null_label)
    real, den = ev.real_stats(CPU), module.double().denoiser  # batches agree in float64
    job = next(j for j in ev.jobs if j.sampler == "ddim" and j.guidance == 3.0)

    def ctx(dist):
        c = JobContext(cfg.eval, dist, ev.features, (1, 8, 8), real, CPU, "m")
        c.num_classes, c.null_label, c.classifier = 10, module.null_label, ev.classifier
        return c

    one = run_job(job, den, ctx(Dist()))
    threads, out = _Threads(2), {}

    def run(r):
        out[r] = run_job(job, den, ctx(Dist(threads.rank(r))))

    ts = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert one.row["guidance_interval"] == (0.05, 50.0) and one.row["accuracy"] is not None
    for r in (0, 1):
        row = out[r].row
        assert row["accuracy"] == one.row["accuracy"] and row["nfe"] == one.row["nfe"]
        assert row["fid"] == pytest.approx(one.row["fid"], rel=1e-6)  # as test_ddp_eval
        assert row["fid_std"] == pytest.approx(one.row["fid_std"], rel=1e-6)
        torch.testing.assert_close(out[r].grid, one.grid, rtol=1e-9, atol=1e-12)
