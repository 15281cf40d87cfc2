"""Class-conditional evaluation with classifier-free guidance: the seeded labels, the
conditioning arguments of ``sample()``, the classifier accuracy of generated samples, and
how a guided job is named and budgeted in the evaluation sweep.

Guidance is ``D = D_u + w (D_c - D_u)`` (Ho & Salimans 2022, "Classifier-Free Diffusion
Guidance", Eq. 6, written for the denoiser; :class:`samplerlab.samplers.conditioning.Guided`),
only for sigma in an interval if one is given (Kynkäänniemi et al. 2024, Sec. 3). Sample
``k`` has the seed ``seed_offset + k`` and the label ``seed mod num_classes``
(:func:`balanced_labels`): classes are balanced whenever the number of samples is a
multiple of ``num_classes``, and a label depends only on its seed (not on the batch nor on
a DDP rank's share of the seeds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError


def balanced_labels(seeds: Sequence[int] | Tensor, num_classes: int) -> Tensor:
    """The class label of each seeded sample: ``seed mod num_classes`` (``[n]`` long)."""
    if num_classes < 1:
        raise ConfigError(f"num_classes: a conditional evaluation needs >= 1, got {num_classes}")
    s = seeds if isinstance(seeds, Tensor) else torch.as_tensor(list(seeds), dtype=torch.long)
    return s.long() % int(num_classes)


def guided_kwargs(
    seeds: Sequence[int] | Tensor,
    num_classes: int,
    guidance: float | None,
    null_label: Tensor,
    interval: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The conditioning arguments of ``samplerlab.sample`` (or of
    :func:`samplerlab.samplers.conditioning.condition`) for seeded samples of a
    class-conditional model: balanced labels, guidance ``w`` against ``null_label``
    (``None``: conditional, no guidance)."""
    out: dict[str, Any] = {"cond": balanced_labels(seeds, num_classes)}
    if guidance is not None:
        out.update(guidance=float(guidance), uncond=null_label)
        if interval is not None:
            out["guidance_interval"] = (float(interval[0]), float(interval[1]))
    return out


def check_guidance(guidance: Sequence[float], key: str = "guidance") -> list[float]:
    """Guidance scales as floats: finite, at least one, no repeats (one clear line)."""
    try:
        scales = [float(w) for w in guidance]
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: need a list of numbers, got {guidance!r}") from None
    if not scales or not all(math.isfinite(w) for w in scales):
        raise ConfigError(f"{key}: need a non-empty list of finite scales, got {list(guidance)}")
    if len(set(scales)) != len(scales):
        raise ConfigError(f"{key}: repeated scales in {scales}")
    return scales


def check_interval(interval: Sequence[float] | None, key: str = "guidance_interval") -> None:
    """``(sigma_lo, sigma_hi)`` with ``0 <= sigma_lo < sigma_hi`` (one clear line)."""
    if interval is None:
        return
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: need [sigma_lo, sigma_hi], got {interval!r}") from None
    if not (0 <= lo < hi) or math.isnan(hi):
        raise ConfigError(f"{key}: need 0 <= sigma_lo < sigma_hi, got [{lo:g}, {hi:g}]")


@torch.no_grad()
def class_accuracy(classifier: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """How many of ``x`` (data space, clamped to ``[-1, 1]``) ``classifier`` puts in their
    ``labels``' class (a 0-dim count, on ``x``'s device: no host sync)."""
    w = next(classifier.parameters())
    pred = classifier(x.clamp(-1, 1).to(w.device, w.dtype)).argmax(1)
    return (pred == labels.to(pred.device)).sum()


def rows_per_evaluation(guidance: float | None) -> int:
    """Network rows per guided denoiser evaluation: 2 (conditional and unconditional) for
    a scale other than 1, else 1 (``w = 1`` is the conditional model alone)."""
    return 1 if guidance is None or float(guidance) == 1.0 else 2


def guidance_suffix(guidance: float | None) -> str:
    """``""`` for an unguided job, ``"_w2"`` / ``"_w1.5"`` for a guided one."""
    return "" if guidance is None else f"_w{float(guidance):g}"


def row_series(row: Mapping[str, Any]) -> str:
    """A row's curve in the report: its label, with ``w=...`` for a guided row."""
    w = row.get("guidance")
    return row["label"] if w is None else f"{row['label']} w={float(w):g}"


def row_tag(row: Mapping[str, Any]) -> str:
    """A row's metric / grid key: ``label_budget`` (``ddim_10``), ``ddim_10_w2`` if guided."""
    return f"{row['label']}_{row['budget']}{guidance_suffix(row.get('guidance'))}"


def accuracy_classifier(
    ev: Any, data_cfg: Any, features: nn.Module, num_classes: int
) -> tuple[nn.Module | None, str | None, str | None]:
    """The classifier scoring guided rows, its id (for the row keys) and a note: the FID
    feature's classifier (``eval.feature=classifier``), else the one shipped for the data
    (digits); ``(None, None, note)`` when there is none or its classes are not the model's."""
    from .features import ClassifierFeatures, _file_tag, load_classifier, shipped_classifier

    if not ev.class_accuracy:
        return None, None, None
    if isinstance(features, ClassifierFeatures):
        net = features.net
        path = ev.classifier_weights or shipped_classifier(data_cfg.name)
    else:
        path = shipped_classifier(data_cfg.name)
        if path is None:
            return None, None, f"no classifier for data '{data_cfg.name}': no accuracy column"
        net = load_classifier(path)
    k = int(net.head.out_features)
    if k != num_classes:
        return (
            None,
            None,
            (f"the classifier has {k} classes, the model {num_classes}: no accuracy column"),
        )
    tag = f"classifier-{_file_tag(Path(path))}" if path is not None else "classifier"
    return net, tag, None
