"""The job planner shared by the evaluation and ``samplerlab bench``: sampler x NFE budget
-> :class:`Job` (how many steps to run).

The rule, for both: a job at budget ``B`` runs the most steps whose registry NFE (exact or
expected, with the job's options) is at most ``B``; a budget below the NFE of one step
runs **one step** (its realised NFE exceeds the budget, so the row says ``over_budget`` in
the evaluation and ``nfe > budget`` in the bench) rather than leaving a hole in the table.
Explicit ``steps`` instead of budgets give each job the budget of its own NFE.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..samplers import SAMPLERS, get_sampler
from ..samplers.registry import SamplerSpec
from .guidance import guidance_suffix


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
    guidance: float | None = None  # classifier-free guidance scale (None: unguided)
    guidance_interval: tuple[float, float] | None = None  # guide only for sigma in (lo, hi]

    @property
    def tag(self) -> str:
        """The row's metric / grid key: ``ddim_10``, ``ddim_10_w2`` for a guided job."""
        return f"{self.label}_{self.budget}{guidance_suffix(self.guidance)}"


def job_fields(job: Job) -> dict[str, Any]:
    """The job as a dict; an unguided job without the guidance fields (its rows and row
    keys are those of an evaluation without guidance)."""
    out = asdict(job)
    if job.guidance is None:
        del out["guidance"], out["guidance_interval"]
    return out


def steps_for_budget(
    spec: SamplerSpec, budget: int, options: Mapping[str, Any] | None = None
) -> int:
    """The most steps whose (expected) NFE with these options stays within ``budget``
    (at least 1)."""
    return spec.steps_for_nfe(budget, options) or 1


def plan_sampler(
    label: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    budgets: Iterable[int] = (),
    steps: Iterable[int] | None = None,
    **fields: Any,
) -> list[Job]:
    """The jobs of one sampler entry: one per budget (steps by :func:`steps_for_budget`) or,
    when ``steps`` is given, one per step count (its budget is that count's NFE).
    ``fields``: the other :class:`Job` fields (schedule, coefficients, calibration)."""
    spec = get_sampler(name)
    opts = dict(options or {})
    if steps:
        pairs = [(int(spec.nfe(int(s), opts)), int(s)) for s in steps]
    else:
        pairs = [(int(b), steps_for_budget(spec, int(b), opts)) for b in budgets]
    return [
        Job(label=label, sampler=name, budget=b, steps=s, options=dict(opts), **fields)
        for b, s in pairs
    ]


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
        try:
            jobs += plan_sampler(
                label,
                name,
                e.get("options") or {},
                budgets=e.get("nfe") or ev.nfe,
                steps=e.get("steps") or None,
                schedule=e.get("schedule"),
                schedule_options=dict(e.get("schedule_options") or {}),
                coeffs=(e.get("coeffs") or ev.iia.coeffs) if spec.needs_coeffs else None,
                calibration=e.get("calibration"),
            )
        except Exception as err:  # an option the NFE rule reads has a bad value
            raise ConfigError(f"eval.samplers.{label}: {one_line(err)}") from None
    return guided_jobs(ev, calibrated_jobs(ev, jobs))  # "+cal" twins, then guidance scales


def guided_jobs(ev: Any, jobs: list[Job]) -> list[Job]:
    """Each job once per guidance scale of ``eval.guidance`` (scale-major within a job's
    sampler and budget); ``jobs`` unchanged when it is empty."""
    scales = [float(w) for w in ev.get("guidance") or []]
    if not scales:
        return jobs
    iv = ev.get("guidance_interval")
    interval = (float(iv[0]), float(iv[1])) if iv is not None else None
    return [replace(j, guidance=w, guidance_interval=interval) for j in jobs for w in scales]


def calibrated_jobs(ev: Any, jobs: list[Job]) -> list[Job]:
    """``jobs`` plus a ``+cal`` twin of every job of a sampler in ``eval.calibrate.samplers``
    (labels or registry names): the twin samples on a grid calibrated for the model at that
    job's steps (``calibration: fit``, :mod:`samplerlab.calibrate`)."""
    names = list(ev.calibrate.samplers)
    known = {j.label for j in jobs} | {j.sampler for j in jobs}
    for name in names:
        if name not in known:
            raise ConfigError(
                f"eval.calibrate.samplers: '{name}' is not evaluated; evaluated: "
                f"{', '.join(sorted(known))}"
            )
    twins = [
        replace(j, label=f"{j.label}+cal", calibration="fit")
        for j in jobs
        if j.calibration is None and (j.label in names or j.sampler in names)
    ]
    return jobs + twins
