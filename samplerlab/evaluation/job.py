"""One evaluation job -> its row: sample ``eval.num_samples`` seeds (sharded over the ranks),
check them, score them with FID against the real statistics.

Faults are rows, not crashes: an exception of any type is the job's ``error`` row (a
network output of another shape than its input is refused by ``sample()``'s counting
wrapper, :class:`samplerlab.samplers.denoisers.CountingDenoiser`); NaN/Inf samples are
``non-finite``; a sample set far outside the data's range is ``diverged`` (see
:func:`range_ratio`). Every rank reaches the same status before any collective, so one
rank's failure never leaves the others waiting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..samplers import NonFiniteError, get_sampler, sample
from ..samplers.sharding import PARALLEL_SAMPLERS
from .dist import Dist, gather_rows
from .fid import bootstrap_fid_std, fid_from_stats, stats_of
from .fits import Fitted, cost_fields, cost_note, fit_job
from .guidance import class_accuracy, guided_kwargs, rows_per_evaluation
from .plan import Job, job_fields, one_line


def range_ratio(x_absmax: float, lo: float, hi: float) -> float:
    """How far a sample set reaches outside the data's range, in units of that range:
    ``max |x - c| / r`` with ``c`` the midpoint and ``r`` the half-width of the real set's
    range ``[lo, hi]`` (over all coordinates); 1 means "as far as the data go"."""
    half = max((hi - lo) / 2, 1e-12)
    return x_absmax / half


@dataclass
class JobContext:
    """What every job of one evaluation shares."""

    ev: Any  # the ``eval`` config
    dist: Dist
    features: nn.Module  # data -> float64 features [B, F] (``num_features``)
    shape: tuple[int, ...]  # one sample's shape
    real: dict[str, Any]  # the real statistics (samplerlab.evaluation.real)
    device: torch.device
    model_id: str | None = None  # the evaluated weights' fingerprint
    # Fitted before the evaluation started (``Evaluator.prefit``), by ``repr(job)``.
    fitted: dict[str, Fitted] = field(default_factory=dict)
    # A class-conditional model (guided jobs): its classes, its "no condition" label and the
    # classifier scoring the samples against their labels (None: no accuracy).
    num_classes: int = 0
    null_label: Tensor | None = None
    classifier: nn.Module | None = None


def fit_view(job: Job) -> Job:
    """The job as its fits see it: IIA coefficients and calibrated grids are fitted on the
    evaluated denoiser without conditioning, once for all guidance scales of a job."""
    return job if job.guidance is None else replace(job, guidance=None, guidance_interval=None)


@dataclass
class JobResult:
    """A job's row, its sample grid (the first ``eval.grid_size`` samples in seed order, on
    every rank; None unless the row is ``ok``) and notes for the report."""

    row: dict[str, Any]
    grid: Tensor | None = None
    notes: list[str] = field(default_factory=list)


def spread_rows(ev: Any, job: Job, d: Dist) -> bool:
    """Whether ``job``'s network calls are split over the ranks (``eval.spread_rows`` on a
    world of several processes, for a sampler of
    :data:`~samplerlab.samplers.sharding.PARALLEL_SAMPLERS`): a parallel round then takes
    the time of its share of the rows, and the samples are the one-process run's (the
    same batches, whose host decisions such as SRDS's stop are made over the whole batch)."""
    if not ev.get("spread_rows", False) or d.world < 2:
        return False
    return get_sampler(job.sampler).name in PARALLEL_SAMPLERS


def run_job(job: Job, denoiser: Any, ctx: JobContext) -> JobResult:
    """Sample, check and score ``job`` (a collective call: every rank runs it)."""
    ev, d, device = ctx.ev, ctx.dist, ctx.device
    dtype = torch.float64 if ev.dtype == "float64" else torch.float32
    every = list(range(ev.seed_offset, ev.seed_offset + ev.num_samples))
    seeds = every[d.rank :: d.world]  # this rank's samples (features, grid)
    # eval.spread_rows: a parallel sampler's calls are split over the ranks (every rank
    # draws every batch of the one-process run and keeps its own seeds' samples).
    spread = spread_rows(ev, job, d)
    drawn = every if spread else seeds
    k_grid = math.ceil(min(ev.grid_size, ev.num_samples) / d.world)
    k_all = math.ceil(ev.num_samples / d.world)
    lo, hi = (float(v) for v in ctx.real["range"])
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
    fjob = fit_view(job)
    fitted = ctx.fitted.get(repr(fjob))
    if fitted is None:
        fitted = fit_job(fjob, denoiser, ev, ctx.shape, device, model_id=ctx.model_id, dist=d)
        if job.guidance is not None:  # the job's other guidance scales reuse it
            ctx.fitted[repr(fjob)] = fitted
    guided = job.guidance is not None
    classifier = ctx.classifier if guided else None
    correct = torch.zeros((), dtype=torch.float64, device=device)  # classified as labelled
    calibration = fitted.calibration
    try:
        if calibration is not None:  # the calibrated grid replaces the schedule
            options["calibration"] = calibration
        if fitted.error is not None:
            raise fitted.error
        if fitted.coeffs is not None:
            options["coeffs"] = fitted.coeffs
            if not ev.iia.check_model:  # the user's explicit override
                options["allow_fingerprint_mismatch"] = True
        for start in range(0, len(drawn), ev.batch_size):
            batch = drawn[start : start + ev.batch_size]
            kw = {}
            if guided:  # balanced labels by seed, guided against the null label
                kw = guided_kwargs(
                    batch, ctx.num_classes, job.guidance, ctx.null_label, job.guidance_interval
                )
            res = sample(
                denoiser,  # sample()'s counting wrapper refuses an output of another shape
                job.sampler,
                steps=job.steps,
                shape=(len(batch), *ctx.shape),
                seeds=batch,
                schedule=None if calibration is not None else job.schedule,
                schedule_options=None if calibration is not None else job.schedule_options or None,
                device=device,
                dtype=dtype,
                **kw,
                **({"devices": "distributed"} if spread else {}),
                **options,
            )
            if tuple(res.x.shape) != (len(batch), *ctx.shape):
                raise RuntimeError(
                    f"samples have shape {tuple(res.x.shape)}, expected {(len(batch), *ctx.shape)}"
                )
            # This rank's samples: every one, or (spread) those of seeds rank, rank + world, ...
            mine = res.x[(d.rank - start) % d.world :: d.world] if spread else res.x
            rows += res.nfe * len(mine)
            rounds = max(rounds, res.rounds)
            seconds += res.seconds
            if sum(g.shape[0] for g in grid) < k_grid:
                grid.append(mine[:k_grid].detach())
            x = mine.to(device)
            reach = (x.double() - center).abs().flatten(1).amax(1)  # per sample
            absmax = torch.maximum(absmax, reach.max())
            beyond += (reach > limit).sum()
            feats.append(ctx.features(x).double())
            if classifier is not None:  # the labels of this rank's samples
                labels = kw["cond"][(d.rank - start) % d.world :: d.world] if spread else kw["cond"]
                correct += class_accuracy(classifier, x, labels).to(correct.device)
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
        **{k: v for k, v in job_fields(job).items() if k not in ("options", "schedule_options")},
        "options": {k: v for k, v in job.options.items()},
        "schedule_options": dict(job.schedule_options),
        "nfe": nfe,
        # A guided evaluation costs both rows: the budget counts guided evaluations.
        "over_budget": bool(nfe > job.budget * rows_per_evaluation(job.guidance) + 1e-9),
        "rounds": rounds_all,
        "seconds": seconds_all,
        "fid": None,
        "fid_std": None,
        "range_ratio": None,
        "status": "ok",
    }
    if guided:
        row["accuracy"] = None
    out = JobResult(row)
    if calibration is not None:
        row.update(cost_fields(calibration))
        out.notes.append(cost_note(job, calibration))
    if failed:
        row["status"] = "non-finite" if failed == 1 else "error"
        row["error"] = error or "on another rank"
        return out
    if classifier is not None:  # labels depend only on seeds: the shards' counts add up
        row["accuracy"] = float(d.sum(correct)) / max(float(stats[1]), 1.0)
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
        return out
    local = torch.cat(feats) if feats else torch.zeros(0, ctx.features.num_features)
    real = ctx.real["all"]
    try:
        gen = {k: d.sum(v.to(device)).cpu() for k, v in stats_of(local).items()}
        row["fid"] = fid_from_stats(real, gen)
        if ev.fid_bootstrap >= 2:
            every = gather_rows(d, local.to(device), k_all, ev.num_samples)[: ev.num_samples]
            row["fid_std"] = bootstrap_fid_std(
                real, every, int(ev.fid_bootstrap), seed=int(ev.seed_offset)
            )
    except Exception as e:  # e.g. a linear-algebra failure on degenerate features
        row.update(status="error", error=one_line(e), fid=None, fid_std=None)
        return out
    pix = torch.cat(grid)[:k_grid] if grid else torch.zeros(0, *ctx.shape)
    out.grid = gather_rows(d, pix.to(device), k_grid, ev.num_samples)[: ev.grid_size].cpu()
    return out
