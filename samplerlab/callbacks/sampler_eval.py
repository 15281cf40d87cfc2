"""``SamplerEvalCallback``: every configured sampler x NFE budget -> FID, NFE, rounds, seconds.

Samples use per-sample seeds sharded over DDP ranks (``seeds[rank::world]``), so the samples
and the FID do not depend on the world size. FID is torchmetrics'
``FrechetInceptionDistance`` with an injected feature extractor; its states are summed across
ranks on ``compute()``. Real statistics are computed once (sharded, all-reduced) and cached
on disk keyed by dataset, feature extractor and N; rank 0 holds them in the metric and the
other ranks hold zeros, so the synced sums are exact. NaN/Inf samples are recorded and
reported, never averaged in.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from ..errors import ConfigError
from ..samplers import SAMPLERS, NonFiniteError, SamplerError, get_sampler, sample
from ..samplers.registry import SamplerSpec
from ..trainer.data import DiffusionDataModule, dataset_id
from .features import build_features
from .report import atomic_write, save_samples_png, write_report


@dataclass
class Job:
    """One evaluated (sampler, NFE budget)."""

    label: str
    sampler: str
    budget: int
    steps: int
    schedule: str | None = None
    schedule_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    coeffs: str | None = None  # IIA: fit | default | a path
    calibration: str | None = None  # calibrated grid: fit | a path (samplerlab.calibrate)


def steps_for_budget(
    spec: SamplerSpec, budget: int, options: Mapping[str, Any] | None = None
) -> int:
    """The most steps whose (expected) NFE with these options stays within ``budget``
    (at least 1)."""
    return spec.steps_for_nfe(budget, options) or 1


def plan_jobs(ev: DictConfig) -> list[Job]:
    """Every registered sampler (looked up now, so later registrations count) plus entries."""
    entries: dict[str, Any] = {}
    if ev.all_samplers:
        entries = {name: OmegaConf.create({}) for name in SAMPLERS if name not in ev.exclude}
    for label, e in ev.samplers.items():
        if e.enabled:
            entries[label] = e
        else:
            entries.pop(label, None)
    jobs = []
    for label, e in entries.items():
        name = e.get("sampler") or label
        spec = get_sampler(name)
        options = dict(e.get("options") or {})
        if e.get("steps"):
            pairs = [(int(spec.nfe_for(int(s), options)), int(s)) for s in e.steps]
        else:
            budgets = e.get("nfe") or ev.nfe
            pairs = [(int(b), steps_for_budget(spec, int(b), options)) for b in budgets]
        for budget, steps in pairs:
            jobs.append(
                Job(
                    label=label,
                    sampler=name,
                    budget=budget,
                    steps=steps,
                    schedule=e.get("schedule"),
                    schedule_options=dict(e.get("schedule_options") or {}),
                    options=dict(options),
                    coeffs=(e.get("coeffs") or ev.iia.coeffs) if spec.needs_coeffs else None,
                    calibration=e.get("calibration"),
                )
            )
    from ..calibrate.evaluation import calibrated_jobs  # "+cal" twins (eval.calibrate)

    return calibrated_jobs(ev, jobs)


class Dist:
    """Rank, world size and collectives of a Lightning strategy (or a single process)."""

    def __init__(self, strategy: Any | None = None) -> None:
        self.strategy = strategy
        self.rank = strategy.global_rank if strategy is not None else 0
        self.world = strategy.world_size if strategy is not None else 1

    def sum(self, t: Tensor) -> Tensor:
        return self.strategy.reduce(t, reduce_op="sum") if self.world > 1 else t

    def max(self, t: Tensor) -> Tensor:
        return self.strategy.reduce(t, reduce_op="max") if self.world > 1 else t

    def gather(self, t: Tensor) -> Tensor:  # [world, ...]
        return self.strategy.all_gather(t) if self.world > 1 else t[None]

    def barrier(self) -> None:
        if self.world > 1:
            self.strategy.barrier()


def _stats(features: Tensor) -> dict[str, Tensor]:
    f = features.double()
    return {"sum": f.sum(0), "cov_sum": f.t() @ f, "n": torch.tensor(f.shape[0], dtype=torch.long)}


def fid_from_stats(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """FID between two Gaussians given as feature sums (torchmetrics' formula)."""
    from torchmetrics.image.fid import _compute_fid

    def moments(s: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        n = s["n"].double()
        mu = s["sum"] / n
        cov = (s["cov_sum"] - n * torch.outer(mu, mu)) / (n - 1)
        return mu, cov

    return float(_compute_fid(*moments(a), *moments(b)))


class Evaluator:
    """Evaluates samplers on a denoiser; collective calls go through ``dist``."""

    def __init__(
        self,
        cfg: DictConfig,
        datamodule: DiffusionDataModule,
        out_dir: str | Path,
        dist: Dist | None = None,
    ) -> None:
        self.cfg = cfg
        self.ev = cfg.eval
        self.dm = datamodule
        self.dm.prepare()
        self.out_dir = Path(out_dir)
        self.dist = dist or Dist()
        self.features, self.feature_id = build_features(self.ev, cfg.data, self.dm.shape)
        self.jobs = plan_jobs(self.ev)
        self._real: dict[str, dict[str, Tensor]] | None = None
        self._floor: float | None = None
        self.notes: list[str] = []
        self.last_grids: dict[str, Tensor] = {}
        self._grid: Tensor | None = None
        self._device = torch.device("cpu")

    # --- real statistics ----------------------------------------------------------------

    def _features_of(self, ds: Any, device: torch.device) -> Tensor:
        feats = []
        loader = DataLoader(ds, batch_size=max(self.ev.batch_size, 1), shuffle=False)
        for x, _ in loader:
            feats.append(self.features(x.to(device)).cpu())
        n = self.features.num_features
        return torch.cat(feats) if feats else torch.zeros(0, n, dtype=torch.float64)

    def real_stats(self, device: torch.device) -> dict[str, dict[str, Tensor]]:
        """Full-set and two-halves statistics, cached on disk (computed sharded over ranks)."""
        if self._real is not None:
            return self._real
        n = len(self.dm.real)
        key = f"{dataset_id(self.cfg.data)}-{self.feature_id}-n{n}"
        cache_dir = Path(self.ev.cache_dir or (self.out_dir.parent / "fid_cache"))
        path = cache_dir / f"real-{key}.pt"
        if path.is_file():
            self._real = torch.load(path, map_location="cpu", weights_only=True)
            return self._real
        idx = list(range(n))[self.dist.rank :: self.dist.world]
        f = self._features_of(Subset(self.dm.real, idx), device)
        # Halves: even and odd dataset indices (for the data-vs-data floor).
        even = torch.tensor([i % 2 == 0 for i in idx], dtype=torch.bool)
        out = {"all": _stats(f), "even": _stats(f[even]), "odd": _stats(f[~even])}
        for part in out.values():
            for k in part:
                part[k] = self.dist.sum(part[k].to(device)).cpu()
        if self.dist.rank == 0:
            atomic_write(path, lambda tmp: torch.save(out, tmp))
        self.dist.barrier()
        self._real = out
        return out

    # --- one job --------------------------------------------------------------------------

    def _coeffs(self, job: Job, denoiser: Any, calibration: Any = None) -> Any:
        """IIA coefficients for ``job``: a file, fitted now, or None (default coefficients)."""
        if job.coeffs in (None, "default"):
            return None
        from .. import iia  # Lightning-backed fit stage, imported only when asked for

        if job.coeffs != "fit":
            if not Path(job.coeffs).is_file():
                raise ConfigError(f"eval.samplers.{job.label}.coeffs: file {job.coeffs} not found")
            return iia.load(job.coeffs)  # once per job, not once per batch

        c = self.ev.iia
        device = self._device
        return iia.fit(
            denoiser,
            job.sampler,
            steps=job.steps,
            # The grid run_job samples on: the schedule, or a calibrated grid.
            schedule=job.schedule if calibration is None else None,
            schedule_options=(job.schedule_options or None) if calibration is None else None,
            calibration=calibration,
            M=c.M,
            num_samples=c.num_samples,
            seed=c.seed,
            # Every rank fits the same coefficients from the same seeds (no communication).
            trainer_kwargs={
                "accelerator": "gpu" if device.type == "cuda" else "cpu",
                "devices": [device.index or 0] if device.type == "cuda" else 1,
                "logger": False,
                "enable_progress_bar": False,
                "enable_checkpointing": False,
                "enable_model_summary": False,
            },
        )

    def _note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)
            rank_zero_info(f"samplerlab eval: {msg}")

    def run_job(self, job: Job, denoiser: Any, fid: Any, device: torch.device) -> dict[str, Any]:
        ev, d = self.ev, self.dist
        dtype = torch.float64 if ev.dtype == "float64" else torch.float32
        seeds = list(range(ev.seed_offset, ev.seed_offset + ev.num_samples))[d.rank :: d.world]
        k_grid = math.ceil(min(ev.grid_size, ev.num_samples) / d.world)
        fid.reset()
        error, rows, rounds, seconds, grid = "", 0.0, 0, 0.0, []
        exc: Exception | None = None
        options = dict(job.options)
        calibration = None
        try:
            if job.calibration is not None:
                from ..calibrate.evaluation import job_calibration

                calibration = job_calibration(self.ev, job, denoiser, self.dm.shape, self._device)
                # The calibrated grid replaces the schedule.
                options["calibration"] = calibration
            coeffs = self._coeffs(job, denoiser, calibration)
            if coeffs is not None:
                options["coeffs"] = coeffs
            for start in range(0, len(seeds), ev.batch_size):
                batch = seeds[start : start + ev.batch_size]
                res = sample(
                    denoiser,
                    job.sampler,
                    steps=job.steps,
                    shape=(len(batch), *self.dm.shape),
                    seeds=batch,
                    schedule=None if calibration is not None else job.schedule,
                    schedule_options=None
                    if calibration is not None
                    else job.schedule_options or None,
                    device=device,
                    dtype=dtype,
                    **options,
                )
                rows += res.nfe * len(batch)
                rounds = max(rounds, res.rounds)
                seconds += res.seconds
                if sum(g.shape[0] for g in grid) < k_grid:
                    grid.append(res.x[:k_grid].detach())
                fid.update(res.x.to(device), real=False)
        except (NonFiniteError, SamplerError, ConfigError) as e:
            exc = e
            # ConfigError: e.g. no IIA step to fit at this budget; one error row, not a crash.
            error = f"{type(e).__name__}: {e}"
        # Every rank must agree before the (collective) compute: 0 ok, 1 non-finite, 2 error.
        code = 0 if not error else 1 if isinstance(exc, NonFiniteError) else 2
        failed = int(d.max(torch.tensor(float(code), device=device)))
        stats = d.sum(torch.tensor([rows, float(len(seeds))], dtype=torch.float64, device=device))
        rounds_all = int(d.max(torch.tensor(float(rounds), device=device)))
        seconds_all = float(d.max(torch.tensor(seconds, dtype=torch.float64, device=device)))
        row: dict[str, Any] = {
            **{k: v for k, v in asdict(job).items() if k not in ("options", "schedule_options")},
            "options": {k: v for k, v in job.options.items()},
            "nfe": float(stats[0] / max(float(stats[1]), 1.0)),
            "rounds": rounds_all,
            "seconds": seconds_all,
            "fid": None,
            "status": "ok",
        }
        if calibration is not None:
            from ..calibrate.evaluation import cost_fields, cost_note

            row.update(cost_fields(calibration))
            self._note(cost_note(job, calibration))
        if failed:
            row["status"] = "non-finite" if failed == 1 else "error"
            row["error"] = error or "on another rank"
            self._grid = None
            return row
        row["fid"] = float(fid.compute())
        local = torch.cat(grid)[:k_grid] if grid else torch.zeros(0, *self.dm.shape)
        if local.shape[0] < k_grid:  # too few local samples to gather evenly
            local = torch.cat([local, local.new_zeros(k_grid - local.shape[0], *local.shape[1:])])
        gathered = d.gather(local.to(device))  # [world, k, ...]: seed j*world + r
        self._grid = gathered.transpose(0, 1).reshape(-1, *self.dm.shape)[: ev.grid_size].cpu()
        return row

    # --- everything -----------------------------------------------------------------------

    def evaluate(
        self, denoiser: Any, device: torch.device, *, epoch: int | None = None, step: int = 0
    ) -> dict[str, Any]:
        from torchmetrics.image.fid import FrechetInceptionDistance

        self._device = device
        ev, d = self.ev, self.dist
        self.features.to(device)
        real = self.real_stats(device)
        fid = FrechetInceptionDistance(feature=self.features, reset_real_features=False).to(device)
        if d.rank == 0:  # other ranks hold zeros: the synced sum is exact
            fid.real_features_sum.copy_(real["all"]["sum"])
            fid.real_features_cov_sum.copy_(real["all"]["cov_sum"])
            fid.real_features_num_samples.copy_(real["all"]["n"])
        rows, grids = [], {}
        self.last_grids = {}  # a job failing now must not keep an older evaluation's grid
        for job in self.jobs:
            self._grid = None
            row = self.run_job(job, denoiser, fid, device)
            rows.append(row)
            if d.rank == 0 and self._grid is not None:
                name = f"grids/{job.label}_nfe{job.budget}.png"
                save_samples_png(self.out_dir / name, self._grid)
                grids[f"{job.label}_{job.budget}"] = name
                self.last_grids[f"{job.label}_{job.budget}"] = self._grid
            rank_zero_info(
                f"samplerlab eval: {job.label} budget {job.budget} ({job.steps} steps): "
                + (f"FID {row['fid']:.3f}" if row["fid"] is not None else row["status"])
                + f", NFE {row['nfe']:.2f}, {row['seconds']:.1f} s"
            )
        if d.rank == 0 and self.last_grids:
            from safetensors.torch import save_file

            tensors = {k: v.contiguous() for k, v in self.last_grids.items()}
            atomic_write(self.out_dir / "samples.safetensors", lambda t: save_file(tensors, t))
        if ev.fid_floor and self._floor is None:  # computed once per set of real statistics
            self._floor = fid_from_stats(real["even"], real["odd"])
        floor = self._floor if ev.fid_floor else None
        return {
            "name": self.cfg.name,
            "epoch": epoch,
            "step": step,
            "world_size": d.world,
            "num_samples": ev.num_samples,
            "feature": self.feature_id,
            "dataset": dataset_id(self.cfg.data),
            "fid_floor": floor,
            "floor_n": int(real["even"]["n"]),
            "results": rows,
            "grids": grids,
            "notes": list(self.notes),
        }


class SamplerEvalCallback(Callback):
    """Evaluates samplers at chosen validation epochs (not during sanity checking), in
    ``trainer.validate`` (``samplerlab evaluate``) and at the end of training."""

    def __init__(self, cfg: DictConfig, datamodule: DiffusionDataModule, out_dir: str | Path):
        super().__init__()
        self.cfg = cfg
        self.dm = datamodule
        self.out_dir = Path(out_dir)
        # Built now: a bad feature extractor or sampler list fails before any training.
        self.evaluator = Evaluator(cfg, datamodule, out_dir)
        self.reports: list[dict[str, Any]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.evaluator.dist = Dist(trainer.strategy)

    def _evaluator(self, trainer: pl.Trainer) -> Evaluator:
        return self.evaluator

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ev = self.cfg.eval
        if trainer.sanity_checking or not ev.enabled:
            return
        if trainer.state.fn == "fit":
            n = ev.every_n_epochs
            if n <= 0 or (trainer.current_epoch + 1) % n != 0:
                return
        self.run(trainer, pl_module, stage="val")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.cfg.eval.enabled and self.cfg.eval.at_end and not trainer.fast_dev_run:
            self.run(trainer, pl_module, stage="final")

    def run(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> dict[str, Any]:
        evaluator = self._evaluator(trainer)
        if self.cfg.eval.dtype == "float64":  # a float64 copy of the EMA network (eager)
            denoiser = pl_module.make_denoiser(copy.deepcopy(pl_module.ema_net()).double().eval())
        else:
            denoiser = pl_module.denoiser_for(compile=bool(self.cfg.eval.compile))
        with torch.no_grad():
            report = evaluator.evaluate(
                denoiser, pl_module.device, epoch=trainer.current_epoch, step=trainer.global_step
            )
        report["stage"] = stage
        self.reports.append(report)
        metrics = flat_metrics(report, "val")
        for k, v in metrics.items():
            trainer.callback_metrics[k] = torch.tensor(v)
        if trainer.global_rank == 0:
            write_report(self.out_dir, report)
            log_wandb(trainer, report, evaluator.last_grids, self.out_dir, metrics)
        return report


def flat_metrics(report: dict[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for r in report["results"]:
        tag = f"{r['label']}_{r['budget']}"
        if r["fid"] is not None:
            out[f"{prefix}/fid/{tag}"] = r["fid"]
        out[f"{prefix}/nfe/{tag}"] = r["nfe"]
        out[f"{prefix}/rounds/{tag}"] = float(r["rounds"])
        out[f"{prefix}/seconds/{tag}"] = r["seconds"]
    if report.get("fid_floor") is not None:
        out[f"{prefix}/fid_floor"] = report["fid_floor"]
    return out


def log_wandb(
    trainer: pl.Trainer,
    report: dict[str, Any],
    grids: dict[str, Tensor],
    out_dir: Path,
    metrics: dict[str, float],
) -> None:
    """Scalars, a table, a FID-vs-NFE line plot and one image grid per sampler (rank zero)."""
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return
    import wandb

    from .report import grid_image

    run = loggers[0].experiment
    cols = ["sampler", "budget", "steps", "nfe", "rounds", "seconds", "fid", "status"]
    table = wandb.Table(columns=cols)
    for r in report["results"]:
        table.add_data(*[r["label"] if c == "sampler" else r[c] for c in cols])
    payload: dict[str, Any] = {**metrics, "trainer/global_step": trainer.global_step}
    payload["val/results"] = table
    payload["val/fid_vs_nfe"] = wandb.plot.line(
        table, "nfe", "fid", stroke="sampler", title="FID vs NFE"
    )
    payload["val/fid_vs_nfe_png"] = wandb.Image(str(out_dir / "fid_vs_nfe.png"))
    for tag, x in grids.items():
        if x.ndim == 4:
            payload[f"val/samples/{tag}"] = wandb.Image(grid_image(x).numpy())
    run.log(payload)  # wandb's own step: Lightning may already be past trainer.global_step
