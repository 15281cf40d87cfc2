"""``SamplerEvalCallback``: every configured sampler x NFE budget -> FID, NFE, rounds, seconds.

Samples use per-sample seeds sharded over DDP ranks (``seeds[rank::world]``), so the samples
and the FID do not depend on the world size. FID is the Fréchet distance of
:mod:`samplerlab.callbacks.fid` between feature sums reduced across ranks, with a bootstrap
standard deviation over the generated features (``eval.fid_bootstrap`` resamples). Real
statistics are computed once (sharded, all-reduced) and cached on disk under a key of the
data's content (file names, sizes and modification times, or the bytes of an in-memory
set), the feature extractor and N.

Faults are rows, not crashes: every job is checked before any work (sampler options and
values by a dry run of the sampler on an analytic stand-in of the model, schedule options,
coefficient files, writable outputs); an exception of any type in one job is that job's
``error`` row; NaN/Inf samples are ``non-finite``; a sample set far outside the data's
range is ``diverged`` (see :func:`range_ratio`). Each finished row is appended atomically
to ``rows.jsonl`` and the report is rewritten; a rerun of the same evaluation skips the
finished rows.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
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
from torch.utils.data import DataLoader, Subset, TensorDataset

from ..errors import ConfigError
from ..samplers import SAMPLERS, NonFiniteError, get_sampler, sample
from ..samplers.api import build_sigmas
from ..samplers.core import SamplerError, append_dims
from ..samplers.denoisers import _Wrapper
from ..samplers.registry import SamplerSpec
from ..trainer.data import DiffusionDataModule, dataset_id
from .features import build_features
from .fid import bootstrap_fid_std, fid_from_stats, stats_of
from .report import atomic_write, save_samples_png, write_report
from .rows import RowStore, row_key

# Files an evaluation writes into its out_dir (checked to be writable before any work).
OUTPUTS = ("report.md", "report.json", "fid_vs_nfe.png", "samples.safetensors", "rows.jsonl")

_stats = stats_of  # the feature-sum form (kept under its old name)


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (the whole error row, whatever the exception)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


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
        try:
            if e.get("steps"):
                pairs = [(int(spec.nfe(int(s), options)), int(s)) for s in e.steps]
            else:
                budgets = e.get("nfe") or ev.nfe
                pairs = [(int(b), steps_for_budget(spec, int(b), options)) for b in budgets]
        except Exception as err:  # an option the NFE rule reads has a bad value
            raise ConfigError(f"eval.samplers.{label}: {one_line(err)}") from None
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

    def broadcast(self, obj: Any) -> Any:  # rank 0's object on every rank
        return self.strategy.broadcast(obj, src=0) if self.world > 1 else obj

    def barrier(self) -> None:
        if self.world > 1:
            self.strategy.barrier()


def fid_of_features(real: dict[str, Tensor], gen: dict[str, Tensor]) -> float:
    """FID between the real statistics and generated feature sums."""
    return fid_from_stats(real, gen)


class ShapeCheckedDenoiser(_Wrapper):
    """Refuses a network output whose shape differs from its input's (a silent broadcast
    would give wrong samples): the job becomes an error row naming both shapes."""

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        out = self.inner(x, sigma)
        if tuple(out.shape) != tuple(x.shape):
            raise SamplerError(
                f"the denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}"
            )
        return out


class ProbeDenoiser(_Wrapper):
    """An analytic stand-in with the model's grid attributes (``vp``, ``sigma_min``,
    ``sigma_max``, ``prior_std``, ``data_shape``): the exact denoiser of ``N(0, s^2 I)``,
    ``D(x, sigma) = x s^2 / (s^2 + sigma^2)``. A dry run of a sampler on it goes through the
    sampler's own checks of its options, schedule and coefficients without a network call."""

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        s2 = float(getattr(self.inner, "sigma_data", None) or 1.0) ** 2
        sig = append_dims(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x.ndim)
        if sig.shape[0] != x.shape[0]:
            sig = sig.expand(x.shape[0], *sig.shape[1:])
        return x * (s2 / (s2 + sig**2))


def data_content_key(dm: DiffusionDataModule) -> str:
    """A hash of the real set's content: its files' names, sizes and modification times
    (image folders, CIFAR-10) or the bytes of an in-memory set (digits, the mixture)."""
    h = hashlib.sha256()
    ds = dm.real
    if isinstance(ds, TensorDataset):
        for t in ds.tensors:
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]
    files = getattr(ds, "files", None)
    root = getattr(ds, "root", None) or dm.cfg.get("root")
    if files is None and root is not None:
        files = sorted(p for p in Path(root).rglob("*") if p.is_file())
    for p in files or []:
        st = Path(p).stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns};".encode())
    h.update(f"n={len(ds)}".encode())
    return h.hexdigest()[:16]


def check_writable(out_dir: Path, names: tuple[str, ...] = OUTPUTS) -> None:
    """Fail now, in one line naming the path, if the evaluation could not write its outputs."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir: {out_dir} exists and is not a folder")
    for name in names:
        p = out_dir / name
        if p.is_dir():
            raise ConfigError(
                f"out_dir: {p} is a folder where the evaluation writes a file; "
                "remove it or choose another out_dir"
            )
    for folder in (out_dir, out_dir / "grids"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test-")
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise ConfigError(
                f"out_dir: cannot write into {folder} ({e.strerror or one_line(e)})"
            ) from None


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """No banners or warnings from the nested Lightning trainers of IIA fits."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def range_ratio(x_absmax: float, lo: float, hi: float) -> float:
    """How far a sample set reaches outside the data's range, in units of that range:
    ``max |x - c| / r`` with ``c`` the midpoint and ``r`` the half-width of the real set's
    range ``[lo, hi]`` (over all coordinates); 1 means "as far as the data go"."""
    half = max((hi - lo) / 2, 1e-12)
    return x_absmax / half


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Path, epoch and global step of a Lightning checkpoint (read with weights_only=True)."""
    p = Path(path)
    info: dict[str, Any] = {"path": str(p.resolve()), "epoch": None, "step": None}
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        info["epoch"], info["step"] = ckpt.get("epoch"), ckpt.get("global_step")
    except Exception:  # the model loader names a bad file; here only the counters are missing
        pass
    return info


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
        # Outputs first: an unwritable folder fails before features, jobs or any training.
        check_writable(self.out_dir)
        self.features, self.feature_id = build_features(self.ev, cfg.data, self.dm.shape)
        self.jobs = plan_jobs(self.ev)
        self._real: dict[str, Any] | None = None
        self._cache_path: Path | None = None
        self._floor: float | None = None
        self.notes: list[str] = []
        self.last_grids: dict[str, Tensor] = {}
        self._grid: Tensor | None = None
        self._device = torch.device("cpu")
        self.model_id: str | None = None  # fingerprint of the evaluated model's weights
        self.checkpoint: dict[str, Any] | None = None  # path, epoch, step (``evaluate``)
        self.progress = bool(cfg.trainer.get("enable_progress_bar", True))

    # --- checks before any work -----------------------------------------------------------

    def check_jobs(self, denoiser: Any, stage: str = "validate") -> None:
        """Run every job once on an analytic stand-in of ``denoiser`` (one sample, no network
        call): unknown options, bad option values, bad schedule options, missing, corrupt or
        mismatched coefficient files fail now, each as one line naming its key.

        ``stage="fit"``: the model is about to be trained, so a coefficient file (bound to the
        weights it was fitted on) cannot match it.
        """
        probe = ProbeDenoiser(denoiser)
        problems: list[str] = []
        c = self.ev.iia
        if any(j.coeffs == "fit" for j in self.jobs):
            for key in ("M", "num_samples"):
                if int(c[key]) < 1:
                    problems.append(f"eval.iia.{key}: must be >= 1, got {c[key]}")
        for job in self.jobs:
            try:
                self._dry_run(job, probe, stage)
            except NonFiniteError:
                pass  # a result (the real model may not diverge), not a configuration error
            except Exception as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                if not msg.startswith("eval."):
                    given = [
                        f"{k}={v!r}" for k, v in {**job.schedule_options, **job.options}.items()
                    ]
                    where = f" ({', '.join(given)})" if given else ""
                    msg = f"eval.samplers.{job.label}{where}: {one_line(e)}"
                if msg not in problems:
                    problems.append(msg)
        if problems:
            head = "" if len(problems) == 1 else f"{len(problems)} evaluation problems:\n  "
            raise ConfigError(head + "\n  ".join(problems))

    def _dry_run(self, job: Job, probe: ProbeDenoiser, stage: str) -> None:
        options = dict(job.options)
        if job.coeffs not in (None, "default", "fit"):
            if not Path(job.coeffs).is_file():
                raise ConfigError(f"eval.samplers.{job.label}.coeffs: file {job.coeffs} not found")
            if stage == "fit" and self.ev.iia.check_model:
                raise ConfigError(
                    f"eval.samplers.{job.label}.coeffs: {job.coeffs} is bound to the model it "
                    "was fitted on and this run trains a new one; use coeffs=fit or default, "
                    "evaluate the checkpoint later with `samplerlab evaluate --ckpt`, or set "
                    "eval.iia.check_model=false"
                )
            options["coeffs"] = self._load_coeffs(job, probe)
            # The stand-in is not the model: _load_coeffs checked the file against the model.
            options["allow_fingerprint_mismatch"] = True
        sample(
            probe,
            job.sampler,
            steps=job.steps,
            shape=(1, *self.dm.shape),
            seeds=[0],
            schedule=job.schedule,
            schedule_options=job.schedule_options or None,
            dtype=torch.float64,
            **options,
        )

    # --- real statistics ----------------------------------------------------------------

    def cache_path(self) -> Path:
        """The real-statistics cache file: keyed by the data's content, features and N
        (the content is read once per evaluator)."""
        if self._cache_path is None:
            n = len(self.dm.real)
            content = data_content_key(self.dm)
            key = f"{dataset_id(self.cfg.data)}-{self.feature_id}-n{n}-{content}"
            cache_dir = Path(self.ev.cache_dir or (self.out_dir.parent / "fid_cache"))
            self._cache_path = cache_dir / f"real-{key}.pt"
        return self._cache_path

    def _features_of(self, ds: Any, device: torch.device) -> tuple[Tensor, Tensor]:
        feats = []
        lo, hi = torch.tensor(math.inf), torch.tensor(-math.inf)
        loader = DataLoader(ds, batch_size=max(self.ev.batch_size, 1), shuffle=False)
        for x, _ in loader:
            feats.append(self.features(x.to(device)).cpu())
            lo, hi = torch.minimum(lo, x.double().min()), torch.maximum(hi, x.double().max())
        n = self.features.num_features
        f = torch.cat(feats) if feats else torch.zeros(0, n, dtype=torch.float64)
        return f, torch.stack([lo, hi]).double()

    def _check_cache(self, blob: Any) -> None:
        nf = self.features.num_features
        if not isinstance(blob, dict) or not {"all", "even", "odd", "range"} <= set(blob):
            raise ValueError("missing entries")
        for part in ("all", "even", "odd"):
            s = blob[part]
            if tuple(s["sum"].shape) != (nf,) or tuple(s["cov_sum"].shape) != (nf, nf):
                raise ValueError(f"'{part}' statistics have the wrong shape")
        if tuple(blob["range"].shape) != (2,):
            raise ValueError("'range' has the wrong shape")

    def real_stats(self, device: torch.device) -> dict[str, Any]:
        """Full-set and two-halves statistics and the data's range, cached on disk (computed
        sharded over ranks); a corrupt cache file is rebuilt with a note naming it."""
        if self._real is not None:
            return self._real
        path = self.cache_path()
        if path.is_file():
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                self._check_cache(blob)
                self._real = blob
                return blob
            except Exception as e:
                self._note(f"FID cache {path} is corrupt ({one_line(e)}); rebuilding it")
        n = len(self.dm.real)
        idx = list(range(n))[self.dist.rank :: self.dist.world]
        f, rng = self._features_of(Subset(self.dm.real, idx), device)
        # Halves: even and odd dataset indices (for the data-vs-data floor).
        even = torch.tensor([i % 2 == 0 for i in idx], dtype=torch.bool)
        out: dict[str, Any] = {
            "all": stats_of(f),
            "even": stats_of(f[even]),
            "odd": stats_of(f[~even]),
        }
        for part in out.values():
            for k in part:
                part[k] = self.dist.sum(part[k].to(device)).cpu()
        lo = -self.dist.max((-rng[0]).to(device)).cpu()
        hi = self.dist.max(rng[1].to(device)).cpu()
        out["range"] = torch.stack([lo, hi])
        if self.dist.rank == 0:
            try:
                atomic_write(path, lambda tmp: torch.save(out, tmp))
            except OSError as e:  # a read-only shared cache: compute each time, say so
                self._note(f"FID cache {path} not written ({e.strerror or one_line(e)})")
        self.dist.barrier()
        self._real = out
        return out

    # --- one job --------------------------------------------------------------------------

    def _load_coeffs(self, job: Job, denoiser: Any) -> Any:
        """A coefficient file, checked against the job's grid and (when known) the model."""
        from .. import iia

        path = Path(str(job.coeffs))
        if not path.is_file():
            raise ConfigError(f"eval.samplers.{job.label}.coeffs: file {path} not found")
        spec = get_sampler(job.sampler)
        grid_steps, _ = spec.plan(job.steps, job.options)
        sigmas = build_sigmas(
            denoiser, spec, grid_steps, job.schedule, job.schedule_options or None
        )
        try:
            coeffs = iia.load(path, sigmas=sigmas)
        except Exception as e:
            raise ConfigError(f"eval.samplers.{job.label}.coeffs: {one_line(e)}") from None
        want = coeffs.metadata.get("fingerprint")
        if self.ev.iia.check_model and self.model_id is not None and want != self.model_id:
            raise ConfigError(
                f"eval.samplers.{job.label}.coeffs: {path} was fitted for another model "
                f"(fingerprint {want}, this model {self.model_id}); refit it with "
                "`samplerlab iia-fit --ckpt ...`, or set eval.iia.check_model=false"
            )
        return coeffs

    def _coeffs(self, job: Job, denoiser: Any, calibration: Any = None) -> Any:
        """IIA coefficients for ``job``: a file, fitted now, or None (default coefficients)."""
        if job.coeffs in (None, "default"):
            return None
        from .. import iia  # Lightning-backed fit stage, imported only when asked for

        if job.coeffs != "fit":
            return self._load_coeffs(job, denoiser)  # once per job, not once per batch

        c = self.ev.iia
        device = self._device
        with quiet_lightning():  # no nested banners or bars under the evaluation's bar
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
                progress=False,
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

    def job_key(self, job: Job) -> str:
        """What determines a row's result: the job, the evaluation settings, the model."""
        ev = self.ev
        parts: dict[str, Any] = {
            "job": asdict(job),
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
        if job.coeffs == "fit":
            parts["iia"] = OmegaConf.to_container(ev.iia)
        elif job.coeffs not in (None, "default") and Path(job.coeffs).is_file():
            st = Path(job.coeffs).stat()
            parts["coeffs_file"] = [st.st_size, st.st_mtime_ns]
        return row_key(parts)

    def run_job(
        self, job: Job, denoiser: Any, real: dict[str, Any], device: torch.device
    ) -> dict[str, Any]:
        ev, d = self.ev, self.dist
        dtype = torch.float64 if ev.dtype == "float64" else torch.float32
        seeds = list(range(ev.seed_offset, ev.seed_offset + ev.num_samples))[d.rank :: d.world]
        k_grid = math.ceil(min(ev.grid_size, ev.num_samples) / d.world)
        k_all = math.ceil(ev.num_samples / d.world)
        lo, hi = (float(v) for v in real["range"])
        center = (lo + hi) / 2
        error, rows, rounds, seconds, grid, feats = "", 0.0, 0, 0.0, [], []
        absmax = torch.zeros((), dtype=torch.float64, device=device)
        beyond = torch.zeros((), dtype=torch.float64, device=device)  # samples past the limit
        limit = ev.diverge_factor * max((hi - lo) / 2, 1e-12)
        exc: Exception | None = None
        options = dict(job.options)
        if ev.max_rows:
            spec = get_sampler(job.sampler)
            if "max_rows" in spec.option_names() and "max_rows" not in options:
                options["max_rows"] = int(ev.max_rows)
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
                if not self.ev.iia.check_model:  # the user's explicit override
                    options["allow_fingerprint_mismatch"] = True
            for start in range(0, len(seeds), ev.batch_size):
                batch = seeds[start : start + ev.batch_size]
                res = sample(
                    ShapeCheckedDenoiser(denoiser),
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
                if tuple(res.x.shape) != (len(batch), *self.dm.shape):
                    raise RuntimeError(
                        f"samples have shape {tuple(res.x.shape)}, expected "
                        f"{(len(batch), *self.dm.shape)}"
                    )
                rows += res.nfe * len(batch)
                rounds = max(rounds, res.rounds)
                seconds += res.seconds
                if sum(g.shape[0] for g in grid) < k_grid:
                    grid.append(res.x[:k_grid].detach())
                x = res.x.to(device)
                reach = (x.double() - center).abs().flatten(1).amax(1)  # per sample
                absmax = torch.maximum(absmax, reach.max())
                beyond += (reach > limit).sum()
                feats.append(self.features(x).double())
        except Exception as e:  # of any type: this job's error row, the others go on
            exc = e
            error = one_line(e)
        # Every rank must agree before the collectives: 0 ok, 1 non-finite, 2 error.
        code = 0 if not error else 1 if isinstance(exc, NonFiniteError) else 2
        failed = int(d.max(torch.tensor(float(code), device=device)))
        stats = d.sum(torch.tensor([rows, float(len(seeds))], dtype=torch.float64, device=device))
        rounds_all = int(d.max(torch.tensor(float(rounds), device=device)))
        seconds_all = float(d.max(torch.tensor(seconds, dtype=torch.float64, device=device)))
        nfe = float(stats[0] / max(float(stats[1]), 1.0))
        row: dict[str, Any] = {
            **{k: v for k, v in asdict(job).items() if k not in ("options", "schedule_options")},
            "options": {k: v for k, v in job.options.items()},
            "schedule_options": dict(job.schedule_options),
            "nfe": nfe,
            "over_budget": bool(nfe > job.budget + 1e-9),
            "rounds": rounds_all,
            "seconds": seconds_all,
            "fid": None,
            "fid_std": None,
            "range_ratio": None,
            "status": "ok",
        }
        self._grid = None
        if calibration is not None:
            from ..calibrate.evaluation import cost_fields, cost_note

            row.update(cost_fields(calibration))
            self._note(cost_note(job, calibration))
        if failed:
            row["status"] = "non-finite" if failed == 1 else "error"
            row["error"] = error or "on another rank"
            return row
        ratio = range_ratio(float(d.max(absmax)), lo, hi)
        row["range_ratio"] = ratio
        # Diverged: more than eval.diverge_fraction of the samples reach past the limit (one
        # outlier among hundreds is a sample, not a diverged sampler); NaN reach counts too.
        frac = float(d.sum(beyond)) / max(float(stats[1]), 1.0)
        row["beyond_fraction"] = frac
        if not (frac <= ev.diverge_fraction and math.isfinite(ratio)):
            row["status"] = "diverged"
            row["error"] = (
                f"{frac:.1%} of the samples reach more than {ev.diverge_factor:g} x the data's "
                f"half-range from its midpoint (up to {ratio:.3g} x; limits "
                f"eval.diverge_factor={ev.diverge_factor:g}, "
                f"eval.diverge_fraction={ev.diverge_fraction:g})"
            )
            return row
        local = torch.cat(feats) if feats else torch.zeros(0, self.features.num_features)
        try:
            gen = {k: d.sum(v.to(device)).cpu() for k, v in stats_of(local).items()}
            row["fid"] = fid_of_features(real["all"], gen)
            if ev.fid_bootstrap >= 2:
                every = self._gather_rows(local.to(device), k_all)[: ev.num_samples]
                row["fid_std"] = bootstrap_fid_std(
                    real["all"], every, int(ev.fid_bootstrap), seed=int(ev.seed_offset)
                )
        except Exception as e:  # e.g. a linear-algebra failure on degenerate features
            row.update(status="error", error=one_line(e), fid=None, fid_std=None)
            return row
        pix = torch.cat(grid)[:k_grid] if grid else torch.zeros(0, *self.dm.shape)
        self._grid = self._gather_rows(pix.to(device), k_grid)[: ev.grid_size].cpu()
        return row

    def _gather_rows(self, local: Tensor, k: int) -> Tensor:
        """Every rank's rows in global seed order (rank r holds seeds r, r + world, ...)."""
        if local.shape[0] < k:  # pad to gather evenly; padding lands after the real rows
            local = torch.cat([local, local.new_zeros(k - local.shape[0], *local.shape[1:])])
        gathered = self.dist.gather(local)  # [world, k, ...]: seed j*world + r
        n_real = [
            len(range(r, self.ev.num_samples, self.dist.world)) for r in range(self.dist.world)
        ]
        out = gathered.transpose(0, 1).reshape(-1, *local.shape[1:])
        # Drop the padding rows (rank r's rows beyond n_real[r]).
        keep = [
            j * self.dist.world + r
            for j in range(k)
            for r in range(self.dist.world)
            if j < n_real[r]
        ]
        return out[torch.tensor(keep, device=out.device)]

    # --- everything -----------------------------------------------------------------------

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

        self._device = device
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
            tag = f"{job.label}_{job.budget}"
            bar.set_postfix_str(f"{job.label}@{job.budget}")
            if key in reused:
                row = dict(reused[key])
                row["resumed"] = True
            else:
                row = self.run_job(job, denoiser, real, device)
                row["key"] = key
                if d.rank == 0 and self._grid is not None:
                    name = f"grids/{job.label}_nfe{job.budget}.png"
                    save_samples_png(self.out_dir / name, self._grid)
                    row["grid"] = name
                    self.last_grids[tag] = self._grid
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
            line = (
                f"samplerlab eval: {job.label} budget {job.budget} ({job.steps} steps): "
                + (
                    f"FID {row['fid']:.3f}"
                    + (f" ± {row['fid_std']:.2g}" if row.get("fid_std") is not None else "")
                    if row["fid"] is not None
                    else row["status"]
                )
                + f", NFE {row['nfe']:.2f}"
                + (" (over budget)" if row.get("over_budget") else "")
                + f", {row['seconds']:.1f} s"
                + (" (resumed)" if row.get("resumed") else "")
            )
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
        tags = {f"{r['label']}_{r['budget']}" for r in reused.values() if r.get("grid")}
        return {k: v for k, v in saved.items() if k in tags}


class SamplerEvalCallback(Callback):
    """Evaluates samplers at chosen validation epochs (not during sanity checking), in
    ``trainer.validate`` (``samplerlab evaluate``) and at the end of training.

    ``checkpoint``: the file being evaluated (``samplerlab evaluate``): its path, epoch and
    step are recorded in the report instead of the validating trainer's counters.
    """

    def __init__(
        self,
        cfg: DictConfig,
        datamodule: DiffusionDataModule,
        out_dir: str | Path,
        checkpoint: str | Path | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.dm = datamodule
        self.out_dir = Path(out_dir)
        # Built now: a bad feature extractor, sampler list or output folder fails before
        # any training.
        self.evaluator = Evaluator(cfg, datamodule, out_dir)
        if checkpoint is not None:
            self.evaluator.checkpoint = checkpoint_info(checkpoint)
        self.reports: list[dict[str, Any]] = []
        self._checked: set[str] = set()

    def check(self, pl_module: Any, stage: str = "fit") -> None:
        """Dry-run every job on an analytic stand-in of ``pl_module``'s denoiser (no network
        call): every bad option, value or coefficient file fails now, before any training."""
        if not self.cfg.eval.enabled or stage in self._checked:
            return
        make = getattr(pl_module, "make_denoiser", None)
        denoiser = make(pl_module.net) if make is not None else pl_module.denoiser
        if stage != "fit":  # the weights are the evaluated ones: files must come from them
            from ..iia import fingerprint

            self.evaluator.model_id = fingerprint(denoiser)
        self.evaluator.check_jobs(denoiser, stage=stage)
        self._checked.add(stage)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.evaluator.dist = Dist(trainer.strategy)
        self.check(pl_module, stage)  # also covers trainers started without run.py

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
        from ..iia import fingerprint

        evaluator = self._evaluator(trainer)
        # The weights' fingerprint as iia-fit records it (the float32 EMA network).
        model_id = fingerprint(pl_module.denoiser_for())
        if self.cfg.eval.dtype == "float64":  # a float64 copy of the EMA network (eager)
            denoiser = pl_module.make_denoiser(copy.deepcopy(pl_module.ema_net()).double().eval())
        else:
            denoiser = pl_module.denoiser_for(compile=bool(self.cfg.eval.compile))
        with torch.no_grad():
            report = evaluator.evaluate(
                denoiser,
                pl_module.device,
                epoch=trainer.current_epoch,
                step=trainer.global_step,
                stage=stage,
                model_id=model_id,
            )
        report["stage"] = stage
        report["training"] = getattr(pl_module, "training_summary", None)  # trainer/runs.py
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
        if r.get("fid_std") is not None:
            out[f"{prefix}/fid_std/{tag}"] = r["fid_std"]
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
    cols = ["sampler", "budget", "steps", "nfe", "rounds", "seconds", "fid", "fid_std", "status"]
    table = wandb.Table(columns=cols)
    for r in report["results"]:
        table.add_data(*[r["label"] if c == "sampler" else r.get(c) for c in cols])
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
