"""``Evaluator``: every planned job of one evaluation on one denoiser -> the report.

It ties the parts together: the plan (:mod:`.plan`), the checks before any work
(:mod:`.checks`), the real statistics (:mod:`.real`), one job -> one row (:mod:`.job`), the
finished rows on disk (:mod:`.rows`) and the report files (:mod:`.report`). Each finished
row is appended atomically to ``rows.jsonl`` and the report is rewritten; a rerun of the
same evaluation reads the finished rows back instead of re-running them. Collective calls
go through :class:`.dist.Dist`, so the same code runs on one process or under DDP.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ..fileio import atomic_write
from .checks import check_jobs, check_writable
from .dist import Dist
from .features import build_features
from .fid import fid_from_stats
from .fits import Fitted, fit_job, quiet_lightning
from .guidance import accuracy_classifier, guidance_suffix, row_tag
from .job import JobContext, fit_view, run_job
from .plan import Job, job_fields, plan_jobs
from .real import RealData, RealStatistics, dataset_id
from .report import save_samples_png, write_report
from .rows import RowStore, row_key


class Evaluator:
    """Evaluates samplers on a denoiser; collective calls go through ``dist``.

    ``cfg``: the run config (``eval``, ``data``, ``name``, ``trainer``); ``datamodule``:
    the real data (:class:`.real.RealData`); ``out_dir``: where the report is written.
    """

    def __init__(
        self,
        cfg: DictConfig,
        datamodule: RealData,
        out_dir: str | Path,
        dist: Dist | None = None,
    ) -> None:
        self.cfg = cfg
        self.ev = cfg.eval
        self.dm = datamodule
        self.dm.prepare()
        self.out_dir = Path(out_dir)
        self.dist = dist or Dist()
        # Outputs first: an unwritable folder fails before features, jobs or any training.
        check_writable(self.out_dir)
        self.features, self.feature_id = build_features(self.ev, cfg.data, self.dm.shape)
        self.jobs = plan_jobs(self.ev)
        self.notes: list[str] = []
        self.real = RealStatistics(
            self.ev, cfg.data, self.dm, self.features, self.feature_id, self.out_dir, self._note
        )
        self._floor: float | None = None
        self.last_grids: dict[str, Tensor] = {}
        self.model_id: str | None = None  # fingerprint of the evaluated model's weights
        self.checkpoint: dict[str, Any] | None = None  # path, epoch, step (``evaluate``)
        self.progress = bool(cfg.trainer.get("enable_progress_bar", True))
        self.fitted: dict[str, Fitted] = {}  # by repr(job), for the weights fitted_for
        self.fitted_for: str | None = None
        # A class-conditional model's classes and null label (guided jobs; use_classes).
        self.num_classes = 0
        self.null_label: Tensor | None = None
        self.classifier: torch.nn.Module | None = None
        self.classifier_id: str | None = None

    def use_classes(self, num_classes: int, null_label: Tensor | None) -> None:
        """The evaluated model's classes and "no condition" label, for guided jobs
        (``eval.guidance``), and the classifier that scores their samples."""
        same = int(num_classes) == self.num_classes and self.classifier_id is not None
        self.num_classes, self.null_label = int(num_classes), null_label
        if not same and any(j.guidance is not None for j in self.jobs) and self.num_classes > 0:
            self.classifier, self.classifier_id, note = accuracy_classifier(
                self.ev, self.cfg.data, self.features, self.num_classes
            )
            if note:
                self._note(note)

    def check_jobs(self, denoiser: Any, stage: str = "validate") -> None:
        """Dry-run every job on an analytic stand-in of ``denoiser``
        (:func:`.checks.check_jobs`)."""
        check_jobs(
            self.jobs,
            denoiser,
            self.ev,
            self.dm.shape,
            stage=stage,
            model_id=self.model_id,
            classes=(self.num_classes, self.null_label),
        )

    def prefit(self, denoiser: Any, device: torch.device, model_id: str) -> None:
        """Fit now what the jobs need fitted (calibrated grids, IIA coefficients) for the
        weights ``model_id``, before any trainer runs (``samplerlab evaluate`` calls it
        before ``Trainer.validate``); jobs whose rows will be read back are skipped. A fit's
        error is kept and becomes its job's error row."""
        self.model_id = self.fitted_for = model_id
        ev = self.ev
        done = RowStore(self.out_dir / "rows.jsonl").load() if ev.resume else {}
        with quiet_lightning(), torch.no_grad():
            for job in self.jobs:
                if job.calibration is None and job.coeffs != "fit":
                    continue  # nothing to fit (a coefficient file is loaded by its job)
                if self.job_key(job) in done or repr(fit_view(job)) in self.fitted:
                    continue  # read back, or fitted for another guidance scale of the job
                self.fitted[repr(fit_view(job))] = fit_job(
                    fit_view(job), denoiser, ev, self.dm.shape, device, model_id=model_id
                )

    def cache_path(self) -> Path:
        """The real-statistics cache file (:meth:`.real.RealStatistics.path`)."""
        return self.real.path()

    def real_stats(self, device: torch.device) -> dict[str, Any]:
        """The real statistics (:meth:`.real.RealStatistics.get`)."""
        return self.real.get(device, self.dist)

    def _note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)
            rank_zero_info(f"samplerlab eval: {msg}")

    def job_key(self, job: Job) -> str:
        """What determines a row's result: the job, the evaluation settings, the model."""
        ev = self.ev
        parts: dict[str, Any] = {
            "job": job_fields(job),
            "num_samples": ev.num_samples,
            "seed_offset": ev.seed_offset,
            "dtype": ev.dtype,
            "feature": self.feature_id,
            "data": dataset_id(self.cfg.data),
            "real": self.cache_path().name,
            "model": self.model_id,
            "diverge_factor": ev.diverge_factor,
            "diverge_fraction": ev.diverge_fraction,
            "bootstrap": [ev.fid_bootstrap, ev.seed_offset],
            "max_rows": ev.max_rows,
        }
        if ev.get("spread_rows"):  # the parallel samplers' rows equal 1 process's
            parts["spread_rows"] = True
        if job.guidance is not None:  # the labels, the null label and who scores them
            null = None if self.null_label is None else self.null_label.tolist()
            parts["classes"] = [self.num_classes, null, self.classifier_id]
        if job.coeffs == "fit":
            parts["iia"] = OmegaConf.to_container(ev.iia)
        elif job.coeffs not in (None, "default") and Path(job.coeffs).is_file():
            st = Path(job.coeffs).stat()
            parts["coeffs_file"] = [st.st_size, st.st_mtime_ns]
        return row_key(parts)

    def evaluate(
        self,
        denoiser: Any,
        device: torch.device,
        *,
        epoch: int | None = None,
        step: int = 0,
        stage: str | None = None,
        model_id: str | None = None,
    ) -> dict[str, Any]:
        """Every job (finished rows of the same evaluation are read back, not re-run); the
        report is rewritten after each row (rank zero)."""
        from tqdm.auto import tqdm

        ev, d = self.ev, self.dist
        if model_id is None:
            from ..iia import fingerprint

            model_id = fingerprint(denoiser)
        self.model_id = model_id
        if self.checkpoint is not None:  # ``evaluate --ckpt``: the checkpoint's own counters
            epoch = self.checkpoint.get("epoch", epoch)
            step = self.checkpoint.get("step", step)
        self.features.to(device)
        real = self.real_stats(device)
        if ev.fid_floor and self._floor is None:  # computed once per set of real statistics
            self._floor = fid_from_stats(real["even"], real["odd"])
        shape = tuple(self.dm.shape)
        fitted = self.fitted if model_id == self.fitted_for else {}
        ctx = JobContext(ev, d, self.features, shape, real, device, model_id, fitted)
        ctx.num_classes, ctx.null_label = self.num_classes, self.null_label
        if self.classifier is not None:
            ctx.classifier = self.classifier.to(device)
        store = RowStore(self.out_dir / "rows.jsonl")
        done = d.broadcast(store.load() if d.rank == 0 else None) if ev.resume else {}
        keys = [self.job_key(j) for j in self.jobs]
        reused = {k: done[k] for k in keys if k in done}
        if d.rank == 0:
            self._clear_stale_grids({r.get("grid") for r in reused.values()})
        old = self._saved_grids(reused) if d.rank == 0 else {}
        self.last_grids = dict(old)  # a job failing now must not keep an older grid
        rows: list[dict[str, Any]] = []
        grids: dict[str, str] = {}
        meta = {"epoch": epoch, "step": step, "stage": stage, "planned": len(self.jobs)}
        last_plot = -math.inf
        bar = tqdm(
            total=len(self.jobs),
            desc="samplerlab eval",
            file=sys.stderr,
            disable=d.rank != 0 or not self.progress,
            dynamic_ncols=True,
        )
        for job, key in zip(self.jobs, keys, strict=True):
            tag = job.tag
            w = "" if job.guidance is None else f" w={job.guidance:g}"
            bar.set_postfix_str(f"{job.label}@{job.budget}{w}")
            if key in reused:
                row = dict(reused[key])
                row["resumed"] = True
            else:
                result = run_job(job, denoiser, ctx)
                for note in result.notes:
                    self._note(note)
                row = result.row
                row["key"] = key
                if d.rank == 0 and result.grid is not None:
                    name = f"grids/{job.label}_nfe{job.budget}{guidance_suffix(job.guidance)}.png"
                    save_samples_png(self.out_dir / name, result.grid)
                    row["grid"] = name
                    self.last_grids[tag] = result.grid
                if d.rank == 0:
                    store.append(row)
            if row.get("grid"):
                grids[tag] = row["grid"]
            rows.append(row)
            bar.update(1)
            if d.rank == 0:  # the plot at most every 20 s: it costs more than a small row
                plot = time.monotonic() - last_plot > 20
                write_report(self.out_dir, self._report(rows, grids, real, meta), plot=plot)
                last_plot = time.monotonic() if plot else last_plot
            line = f"samplerlab eval: {job.label}{w} budget {job.budget} ({job.steps} steps): "
            line += _row_summary(row)
            if bar.disable:
                rank_zero_info(line)
            else:
                bar.write(line, file=sys.stderr)  # above the bar, which stays the last line
        bar.close()
        if d.rank == 0 and self.last_grids:
            from safetensors.torch import save_file

            tensors = {k: v.contiguous() for k, v in self.last_grids.items()}
            atomic_write(self.out_dir / "samples.safetensors", lambda t: save_file(tensors, t))
        report = self._report(rows, grids, real, meta)
        if d.rank == 0:
            write_report(self.out_dir, report)
        return report

    def _report(
        self, rows: list[dict[str, Any]], grids: dict[str, str], real: dict[str, Any], meta: dict
    ) -> dict[str, Any]:
        ev, d = self.ev, self.dist
        lo, hi = (float(v) for v in real["range"])
        return {
            "name": self.cfg.name,
            "epoch": meta["epoch"],
            "step": meta["step"],
            "stage": meta["stage"],
            "checkpoint": self.checkpoint,
            "model_fingerprint": self.model_id,
            "world_size": d.world,
            "num_samples": ev.num_samples,
            "feature": self.feature_id,
            "dataset": dataset_id(self.cfg.data),
            "data_range": [lo, hi],
            "diverge_factor": ev.diverge_factor,
            "diverge_fraction": ev.diverge_fraction,
            "fid_bootstrap": ev.fid_bootstrap,
            "fid_floor": self._floor if ev.fid_floor else None,
            "floor_n": int(real["even"]["n"]),
            "finished": len(rows),
            "planned": meta["planned"],
            "results": list(rows),
            "grids": dict(grids),
            "notes": list(self.notes),
        }

    def _clear_stale_grids(self, keep: set[Any]) -> None:
        folder = self.out_dir / "grids"
        for p in folder.glob("*.png") if folder.is_dir() else []:
            if f"grids/{p.name}" not in keep:
                p.unlink(missing_ok=True)

    def _saved_grids(self, reused: dict[str, dict[str, Any]]) -> dict[str, Tensor]:
        """Grids of resumed rows, read back from the previous ``samples.safetensors``."""
        path = self.out_dir / "samples.safetensors"
        if not reused or not path.is_file():
            return {}
        try:
            from safetensors.torch import load_file

            saved = load_file(str(path))
        except Exception:
            return {}
        tags = {row_tag(r) for r in reused.values() if r.get("grid")}
        return {k: v for k, v in saved.items() if k in tags}


def _row_summary(row: dict[str, Any]) -> str:
    """``FID 1.234 ± 0.05, NFE 10.00, 0.3 s`` (the progress line of one row)."""
    if row["fid"] is not None:
        std = row.get("fid_std")
        what = f"FID {row['fid']:.3f}" + (f" ± {std:.2g}" if std is not None else "")
    else:
        what = row["status"]
    if row.get("accuracy") is not None:
        what += f", accuracy {row['accuracy']:.3f}"
    return (
        what
        + f", NFE {row['nfe']:.2f}"
        + (" (over budget)" if row.get("over_budget") else "")
        + f", {row['seconds']:.1f} s"
        + (" (resumed)" if row.get("resumed") else "")
    )
