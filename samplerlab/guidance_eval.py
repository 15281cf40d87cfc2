"""Class-conditional evaluation with classifier-free guidance: samplers x NFE budgets x
guidance scales, each row scored by FID against the real data and by a classifier's
accuracy on the generated samples against the labels they were generated for.

Guidance is ``D = D_u + w (D_c - D_u)`` (Ho & Salimans 2022, "Classifier-Free Diffusion
Guidance", Eq. 6, written for the denoiser; :class:`samplerlab.samplers.conditioning.Guided`);
``w = 1`` is conditional sampling (one network row per evaluation), ``w = 0`` unconditional.
A row's ``budget`` counts guided denoiser evaluations, as the samplers' NFE rules do; its
``nfe`` counts network rows per sample (both rows of each guided evaluation).

Sample ``k`` of a row has the seed ``seed_offset + k`` and the label
``(seed_offset + k) mod num_classes`` (:func:`balanced_labels`): the classes are balanced
whenever the number of samples is a multiple of ``num_classes``, and a sample's label depends
only on its seed (not on the batch it is drawn in, nor on a DDP rank's share of the seeds).

FID is Heusel et al. 2017, Eq. 6 (:mod:`samplerlab.evaluation.fid`) on the features of
``samplerlab.evaluation.features``; the FID std is the bootstrap over the generated
features (:func:`samplerlab.evaluation.fid.bootstrap_fid_std`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .evaluation.fid import bootstrap_fid_std, fid_from_stats, stats_of
from .evaluation.guidance import balanced_labels, check_guidance, class_accuracy, guided_kwargs
from .samplers import get_sampler, sample

__all__ = [
    "GuidedJob",
    "balanced_labels",
    "class_accuracy",
    "digits_reference",
    "evaluate_guided",
    "guided_kwargs",
    "plan_guided_jobs",
    "run_guided_job",
]


@dataclass
class GuidedJob:
    """One evaluated (sampler, NFE budget, guidance scale)."""

    label: str
    sampler: str
    budget: int
    steps: int
    guidance: float
    options: dict[str, Any] = field(default_factory=dict)
    schedule: str | None = None


def plan_guided_jobs(
    samplers: Sequence[str] | dict[str, dict[str, Any]],
    budgets: Sequence[int],
    guidance: Sequence[float],
) -> list[GuidedJob]:
    """Every (sampler, budget, scale): the most steps whose NFE stays within the budget.

    ``samplers``: registry names, or ``{label: {"sampler": name, "options": {...},
    "schedule": ...}}`` entries (as ``eval.samplers``).
    """
    scales = check_guidance(guidance)
    entries = {name: {} for name in samplers} if not isinstance(samplers, dict) else dict(samplers)
    if any(int(b) < 1 for b in budgets) or not budgets:
        raise ConfigError(f"budgets: need NFE budgets >= 1, got {list(budgets)}")
    jobs = []
    for label, entry in entries.items():
        name = entry.get("sampler") or label
        try:
            spec = get_sampler(name)
        except Exception as e:
            raise ConfigError(f"samplers: {str(e).splitlines()[0]}") from None
        options = dict(entry.get("options") or {})
        for b in budgets:
            steps = spec.steps_for_nfe(int(b), options) or 1
            for w in scales:
                jobs.append(
                    GuidedJob(label, name, int(b), steps, w, options, entry.get("schedule"))
                )
    return jobs


def digits_reference(
    image_size: int = 8, classifier_path: str | None = None
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """The shipped digits classifier (``samplerlab/assets``), its FID feature extractor and
    the reference statistics of all 1797 digits: ``all``, the two halves ``even`` / ``odd``
    (data-vs-data FID floor) and the classifier's accuracy on the real digits."""
    from .evaluation.features import ClassifierFeatures, load_classifier, shipped_classifier
    from .trainer.data import digits_tensor

    path = classifier_path or shipped_classifier("digits")
    if path is None:
        raise ConfigError("eval.classifier_weights: the digits classifier is not shipped here")
    net = load_classifier(path)
    features = ClassifierFeatures(net)
    x, y = digits_tensor(image_size)
    f = features(x)
    even = torch.arange(len(x)) % 2 == 0
    real = {
        "all": stats_of(f),
        "even": stats_of(f[even]),
        "odd": stats_of(f[~even]),
        "accuracy": float(class_accuracy(net, x, y)) / len(x),
        "range": torch.stack([x.min(), x.max()]).double(),
        "n": len(x),
    }
    real["fid_floor"] = fid_from_stats(real["even"], real["odd"])
    return net, features, real


def run_guided_job(
    denoiser: Callable[..., Tensor],
    job: GuidedJob,
    *,
    num_classes: int,
    uncond: Tensor,
    shape: tuple[int, ...],
    features: Callable[[Tensor], Tensor],
    classifier: nn.Module,
    real: dict[str, Any],
    num_samples: int,
    seed_offset: int = 0,
    batch_size: int = 500,
    guidance_interval: tuple[float, float] | None = None,
    fid_bootstrap: int = 0,
    diverge_factor: float = 10.0,
    diverge_fraction: float = 0.01,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """One row: ``num_samples`` samples (seeds ``seed_offset + k``, labels
    :func:`balanced_labels`) of a conditional ``denoiser(x, sigma, cond)`` with guidance
    ``job.guidance`` against the null label ``uncond``; FID vs ``real["all"]`` and the
    classifier's accuracy. A sampler error is the row's ``status`` / ``error``; a row
    with more than ``diverge_fraction`` of its samples beyond ``diverge_factor`` x the
    data's half-range (``real["range"]``, default ``[-1, 1]``) is ``diverged`` (its FID and
    accuracy, on the clamped samples, are still reported)."""
    seeds = list(range(seed_offset, seed_offset + num_samples))
    row: dict[str, Any] = {
        **{k: v for k, v in asdict(job).items() if k != "options"},
        "options": dict(job.options),
        "num_samples": num_samples,
        "seed_offset": seed_offset,
        "guidance_interval": list(guidance_interval) if guidance_interval else None,
        "nfe": None,
        "fid": None,
        "fid_std": None,
        "accuracy": None,
        "seconds": 0.0,
        "status": "ok",
    }
    feats, rows = [], 0.0
    correct = torch.zeros((), dtype=torch.long)
    # Divergence as the sampler evaluation defines it: a sample whose largest |x - centre|
    # exceeds diverge_factor x the data's half-range (real["range"], default [-1, 1]).
    lo_x, hi_x = (float(v) for v in real.get("range", (-1.0, 1.0)))
    centre, limit = (lo_x + hi_x) / 2, diverge_factor * max((hi_x - lo_x) / 2, 1e-12)
    beyond = torch.zeros((), dtype=torch.long)
    absmax = torch.zeros((), dtype=torch.float64)
    start = time.perf_counter()
    try:
        for lo in range(0, num_samples, batch_size):
            batch = seeds[lo : lo + batch_size]
            kw = guided_kwargs(batch, num_classes, job.guidance, uncond, guidance_interval)
            res = sample(
                denoiser,
                job.sampler,
                steps=job.steps,
                shape=(len(batch), *shape),
                seeds=batch,
                schedule=job.schedule,
                device=device,
                dtype=dtype,
                **kw,
                **job.options,
            )
            labels = kw["cond"]
            rows += res.nfe * len(batch)
            reach = (res.x.double() - centre).abs().flatten(1).amax(1)
            beyond = beyond + (~(reach <= limit)).sum().cpu()  # NaN counts as beyond
            absmax = torch.maximum(absmax, reach.max().cpu())
            feats.append(features(res.x).double().cpu())
            correct = correct + class_accuracy(classifier, res.x, labels).cpu()
    except Exception as e:  # this row's error; the others go on
        lines = str(e).strip().splitlines()
        row.update(status="error", error=f"{type(e).__name__}: {lines[0] if lines else ''}")
        row["seconds"] = time.perf_counter() - start
        return row
    row["seconds"] = time.perf_counter() - start
    row["nfe"] = rows / num_samples
    row["accuracy"] = float(correct) / num_samples
    row["beyond_fraction"] = float(beyond) / num_samples
    row["range_ratio"] = float(absmax) / max((hi_x - lo_x) / 2, 1e-12)
    if not row["beyond_fraction"] <= diverge_fraction:
        row["status"] = "diverged"
        row["error"] = (
            f"{row['beyond_fraction']:.1%} of the samples reach more than {diverge_factor:g} x "
            "the data's half-range from its midpoint"
        )
    f = torch.cat(feats)
    if not bool(torch.isfinite(f).all()):
        row.update(status="non-finite", error="non-finite features of the samples")
        return row
    row["fid"] = fid_from_stats(real["all"], stats_of(f))
    if fid_bootstrap >= 2:
        row["fid_std"] = bootstrap_fid_std(real["all"], f, fid_bootstrap, seed=seed_offset)
    return row


def evaluate_guided(
    denoiser: Callable[..., Tensor],
    jobs: Sequence[GuidedJob],
    *,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """:func:`run_guided_job` for every job (same seeds and labels in every row: rows are
    paired); ``on_row`` sees each row as it is done (progress, partial results)."""
    out = []
    for job in jobs:
        row = run_guided_job(denoiser, job, **kwargs)
        out.append(row)
        if on_row is not None:
            on_row(row)
    return out
