"""The class labels and guidance options of the fit commands (``iia-fit``, ``calibrate``).

A class-conditional model is fitted on (noise, label) pairs (see
:mod:`samplerlab.fitstage.conditioning`): ``--classes balanced`` gives fitting sample ``k``
the label ``k mod num_classes`` (the model's number of classes; ``--classes K`` uses ``K``),
``--labels FILE`` reads one label per fitting sample (a text file of integers, or a
safetensors file with a ``labels`` tensor); ``--guidance W`` fits the classifier-free-guided
sampler at scale ``W`` against the model's null label (``--null-label`` overrides it),
``--guidance-interval LO HI`` only for sigma in ``(LO, HI]``.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = [
    "add_class_arguments",
    "check_class_arguments",
    "class_conditioning",
    "fitted_for",
    "wants_classes",
]


def add_class_arguments(p: argparse.ArgumentParser) -> None:
    """``--classes``, ``--labels``, ``--guidance``, ``--guidance-interval``, ``--null-label``."""
    p.add_argument(
        "--classes",
        default=None,
        help="class labels of a class-conditional model: 'balanced' (fitting sample k gets "
        "label k mod the model's number of classes) or K (k mod K)",
    )
    p.add_argument(
        "--labels",
        default=None,
        help="file of class labels, one per fitting sample (text integers, or a .safetensors "
        "file with a 'labels' tensor)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale W to fit for (needs --classes or --labels)",
    )
    p.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="guide only for sigma in (LO, HI] (with --guidance)",
    )
    p.add_argument(
        "--null-label",
        type=int,
        default=None,
        help="the model's 'no condition' label (default: the model's own)",
    )


def wants_classes(args: argparse.Namespace) -> bool:
    return args.classes is not None or args.labels is not None


def check_class_arguments(args: argparse.Namespace) -> None:
    """Cheap checks, before the model is loaded (one line naming the option)."""
    if args.classes is not None and args.labels is not None:
        raise ConfigError("--classes and --labels: pass one of them")
    c = args.classes
    if c is not None and c != "balanced" and (not re.fullmatch(r"[0-9]+", c) or int(c) < 1):
        raise ConfigError(f"--classes: 'balanced' or a number of classes >= 1, got {c!r}")
    if args.labels is not None and not Path(args.labels).is_file():
        raise ConfigError(f"--labels {args.labels}: no such file")
    if not wants_classes(args):
        for opt, value in (
            ("--guidance", args.guidance),
            ("--guidance-interval", args.guidance_interval),
            ("--null-label", args.null_label),
        ):
            if value is not None:
                raise ConfigError(f"{opt} needs the class labels (--classes or --labels)")
    if args.guidance is not None and not math.isfinite(args.guidance):
        raise ConfigError(f"--guidance must be finite, got {args.guidance}")
    if args.guidance_interval is not None and args.guidance is None:
        raise ConfigError("--guidance-interval needs --guidance")


def read_labels(path: str | Path) -> Tensor:
    """Integer labels from a text file (whitespace- or comma-separated) or a safetensors file
    (its ``labels`` tensor, or its only tensor)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                keys = list(f.keys())
                key = "labels" if "labels" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise ValueError(f"no 'labels' tensor among {keys}")
                t = f.get_tensor(key)
        except Exception as e:  # any failure to read means a bad file
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"--labels {p}: not a labels file ({first})") from None
        if t.is_floating_point() or t.is_complex() or t.ndim != 1:
            got = f"{t.dtype} {tuple(t.shape)}"
            raise ConfigError(f"--labels {p}: needs a 1-D integer tensor, got {got}")
        return t.long()
    words = re.split(r"[\s,]+", p.read_text().strip())
    try:
        return torch.tensor([int(w) for w in words if w], dtype=torch.long)
    except ValueError:
        raise ConfigError(f"--labels {p}: needs integer labels, got {words[:3]}...") from None


def class_conditioning(
    args: argparse.Namespace,
    num_samples: int,
    num_classes: int | None,
    null_label: int | None,
) -> dict[str, Any]:
    """The ``cond`` / ``guidance`` / ``uncond`` / ``guidance_interval`` keyword arguments of
    ``samplerlab.iia.fit`` and ``samplerlab.calibrate.fit`` ({} without class labels)."""
    if not wants_classes(args):
        return {}
    if args.labels is not None:
        labels = read_labels(args.labels)
        if labels.numel() not in (1, num_samples):
            raise ConfigError(
                f"--labels {args.labels}: {labels.numel()} labels; needs one per fitting sample "
                f"(--samples {num_samples}) or 1"
            )
    else:
        k = num_classes if args.classes == "balanced" else int(args.classes)
        if k is None:
            raise ConfigError(
                "--classes balanced: this model does not declare its number of classes; pass "
                "--classes K"
            )
        labels = torch.arange(num_samples) % int(k)
    if num_classes is not None and bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ConfigError(
            f"class labels must lie in [0, {num_classes}) (the model's classes), got "
            f"{sorted(set(labels.tolist()))[:8]}"
        )
    out: dict[str, Any] = {"cond": labels}
    if args.guidance is not None:
        null = args.null_label if args.null_label is not None else null_label
        out["guidance"] = float(args.guidance)
        if null is not None:
            out["uncond"] = torch.tensor([int(null)])
        elif args.guidance != 1:  # guidance 1 is the conditional model: no null label
            raise ConfigError(
                "--guidance: this model does not declare its null ('no condition') label; "
                "pass --null-label N"
            )
        if args.guidance_interval is not None:
            out["guidance_interval"] = tuple(float(v) for v in args.guidance_interval)
    return out


def fitted_for(metadata: dict[str, Any]) -> str:
    """``", conditional, guidance W"`` for a conditional fit's report line ("" otherwise)."""
    if metadata.get("cond") is None:
        return ""
    w = metadata.get("guidance_scale")
    return ", conditional" + ("" if w is None else f", guidance {w:g}")
