"""Evaluation of a latent (text- or class-conditional) pipeline: every sampler x NFE budget x
guidance scale -> decoded images -> FID against reference images, as rows of a report.

Sample ``k`` of every row has the seed ``seed_offset + k`` and the ``k mod P``-th of the
``P`` prompts (or class labels), so rows differ only by sampler, steps and guidance. Its
latents are decoded by the pipeline's VAE (:meth:`samplerlab.latent.LatentPipeline.decode`)
before features: FID (Heusel et al. 2017, Eq. 6; :mod:`.fid`) is computed on the images'
features (:mod:`.features`: ``raw`` pixels, or InceptionV3 from a local weights file)
against the reference images' statistics. Guidance is classifier-free (Ho & Salimans 2022,
Eq. 6) against the empty prompt or the null class; ``w = 1`` is conditional sampling. A
row's ``budget`` counts guided denoiser evaluations (the samplers' NFE rules) and its
``nfe`` the network rows per sample (both rows of each guided evaluation).

IIA samplers run with their default coefficients (which reproduce the base sampler) unless
``coeffs`` maps them to fitted ones. Faults are rows: an exception is the row's ``error``,
NaN/Inf samples are ``non-finite``. Rows go to ``rows.jsonl`` (:class:`.rows.RowStore`,
keyed by what determines them: a rerun skips finished rows) and ``report.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..samplers import SAMPLERS, NonFiniteError
from .features import InceptionFeatures, RawFeatures
from .fid import bootstrap_fid_std, fid_from_stats, stats_of
from .plan import one_line, plan_sampler
from .rows import RowStore, row_key

__all__ = ["evaluate_latent", "latent_features", "load_reference"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_reference(ref: str | Path | Tensor, shape: Sequence[int]) -> Tensor:
    """Reference images ``[N, C, H, W]`` in ``[-1, 1]`` (float32): a tensor, a ``.pt`` /
    ``.safetensors`` file of one (loaded without unpickling), or a folder of image files."""
    if isinstance(ref, Tensor):
        x, where = ref, "reference tensor"
    else:
        p, where = Path(ref), str(ref)
        if p.is_dir():
            from PIL import Image

            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ConfigError(f"--reference: folder {p} holds no image files")
            mode = {1: "L", 3: "RGB"}.get(int(shape[0]))
            if mode is None:
                raise ConfigError(f"--reference: images need 1 or 3 channels, not {shape[0]}")
            import numpy as np

            arrs = [
                torch.from_numpy(np.array(Image.open(f).convert(mode)))
                .reshape(*Image.open(f).size[::-1], -1)
                .permute(2, 0, 1)
                for f in files
            ]
            if len({tuple(a.shape) for a in arrs}) > 1:
                raise ConfigError(f"--reference: the images in {p} differ in size")
            x = torch.stack(arrs).float() / 127.5 - 1
        elif p.suffix == ".safetensors" and p.is_file():
            from safetensors.torch import load_file

            d = load_file(str(p))
            if len(d) != 1:
                raise ConfigError(f"--reference: {p} must hold one tensor, it holds {len(d)}")
            x = next(iter(d.values()))
        elif p.is_file():
            try:
                x = torch.load(p, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ConfigError(
                    f"--reference: {p} is not a tensor file ({one_line(e)})"
                ) from None
        else:
            raise ConfigError(f"--reference: {p} does not exist")
    if not isinstance(x, Tensor) or tuple(x.shape[1:]) != tuple(shape) or x.shape[0] < 2:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(
            f"--reference: {where} must be >= 2 images of shape {tuple(shape)} (the decoded "
            f"images'), got {got}"
        )
    return x.float()


def latent_features(
    kind: str, shape: Sequence[int], inception_weights: str | Path | None = None
) -> nn.Module:
    """The FID feature extractor on images: ``raw`` pixels or ``inception`` (local file)."""
    if kind == "raw":
        return RawFeatures(tuple(shape))
    if kind == "inception":
        if inception_weights is None or not Path(inception_weights).is_file():
            raise ConfigError(
                "--inception-weights: a local torch-fidelity InceptionV3 weights file is "
                "needed for --feature inception (nothing is downloaded)"
            )
        return InceptionFeatures(inception_weights)
    raise ConfigError(f"--feature: '{kind}' is not one of raw, inception")


def _fit_iia(
    pipe: Any,
    name: str,
    steps: int,
    values: Sequence[Any] | Tensor,
    w: float,
    interval: tuple[float, float] | None,
    n: int,
) -> Any:
    """IIA coefficients for ``name`` at ``steps`` fitted on ``n`` (noise, condition) pairs
    of the guided model (``samplerlab.iia.fit_coefficients`` with ``cond``/``guidance``)."""
    from ..iia import fit_coefficients

    cond = pipe.conditions([values[k % len(values)] for k in range(n)])
    kw: dict[str, Any] = {"cond": cond}
    if w != 1:
        kw.update(guidance=w, uncond=pipe.uncond(), guidance_interval=interval)
    return fit_coefficients(pipe.denoiser, name, steps=steps, num_samples=n, **kw)


def _tag(values: Sequence[Any] | Tensor) -> str:
    text = "\n".join(str(v) for v in (values.tolist() if isinstance(values, Tensor) else values))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def evaluate_latent(
    pipe: Any,
    values: Sequence[Any] | Tensor,
    reference: str | Path | Tensor,
    *,
    samplers: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    nfe: Sequence[int] = (10,),
    guidance: Sequence[float] = (1.0,),
    guidance_interval: tuple[float, float] | None = None,
    num_samples: int | None = None,
    seed_offset: int = 0,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    feature: str = "raw",
    inception_weights: str | Path | None = None,
    fid_bootstrap: int = 0,
    coeffs: Mapping[str, Any] | None = None,
    iia_fit_samples: int = 0,
    out_dir: str | Path | None = None,
    grid_size: int = 16,
    plot: bool = True,
) -> list[dict[str, Any]]:
    """Rows of ``sampler x budget x guidance`` for ``pipe`` (:func:`samplerlab.latent.load`)
    conditioned on ``values`` (prompts or class labels); ``samplers`` default: every
    registered one but ``exclude``; ``guidance_interval``: guide only for sigma in
    ``(lo, hi]`` (Kynkäänniemi et al. 2024). ``num_samples`` defaults to ``len(values)``. With
    ``out_dir``: ``rows.jsonl`` (finished rows reused), ``report.json``/``report.md`` and a
    grid of the first ``grid_size`` decoded images per row. IIA samplers use ``coeffs[name]``
    if given, else coefficients fitted for each row's steps and guidance on
    ``iia_fit_samples`` (noise, condition) pairs (conditions cycled as the samples'; fitting
    noises are disjoint from the samples'), else (0) their defaults."""
    from ..latent import generate
    from .report import save_samples_png, write_report

    names = list(samplers) if samplers else [n for n in SAMPLERS if n not in exclude]
    scales = [float(w) for w in guidance]
    if not scales or len(set(scales)) != len(scales):
        raise ConfigError(f"--guidance: need distinct scales, got {list(guidance)}")
    n = int(num_samples or len(values))
    if n < 2:
        raise ConfigError(f"--num-samples: FID needs >= 2 samples, got {n}")
    shape = pipe.image_shape
    real = load_reference(reference, shape)
    feats = latent_features(feature, shape, inception_weights)
    real_stats = stats_of(feats(real.to(pipe.device)).cpu())
    seeds = list(range(seed_offset, seed_offset + n))
    store = RowStore(Path(out_dir) / "rows.jsonl") if out_dir is not None else None
    done = store.load() if store is not None else {}
    setting = {
        "folder": str(pipe.folder),
        "values": _tag(values),
        "reference": _tag(real.flatten()[:4096]) + f"-{tuple(real.shape)}",
        "feature": feature,
        "num_samples": n,
        "seed_offset": seed_offset,
        "dtype": str(dtype),
        "fid_bootstrap": fid_bootstrap,
        "guidance_interval": guidance_interval,
        "iia_fit_samples": iia_fit_samples,
    }
    rows, grids = [], {}
    for name in names:
        try:
            jobs = plan_sampler(name, name, budgets=nfe)
        except Exception as e:
            raise ConfigError(f"--samplers: {one_line(e)}") from None
        for job in jobs:
            for w in scales:
                label = f"{name} w={w:g}"
                key = row_key({**setting, "sampler": name, "steps": job.steps, "guidance": w})
                if key in done:
                    rows.append({**done[key], "resumed": True})
                    continue
                row: dict[str, Any] = {
                    "key": key,
                    "label": label,
                    "sampler": name,
                    "budget": job.budget,
                    "steps": job.steps,
                    "guidance": w,
                    "num_samples": n,
                    "nfe": 0.0,
                    "rounds": 0,
                    "seconds": 0.0,
                    "fid": None,
                    "fid_std": None,
                    "status": "ok",
                }
                extra = {"coeffs": coeffs[name]} if coeffs and name in coeffs else {}
                fit = SAMPLERS[name].needs_coeffs and not extra and iia_fit_samples > 0
                if SAMPLERS[name].needs_coeffs:
                    row["coeffs"] = "given" if extra else "fit" if fit else "default"
                try:
                    if fit:
                        extra["coeffs"] = _fit_iia(pipe, name, job.steps, values, w,
                                                   guidance_interval, iia_fit_samples)  # fmt: skip
                    got = generate(
                        pipe, name, steps=job.steps, seeds=seeds, values=values,
                        guidance=w, guidance_interval=guidance_interval,
                        batch_size=batch_size, dtype=dtype, **extra,
                    )  # fmt: skip
                    row.update(nfe=got.nfe, rounds=got.rounds, seconds=got.seconds)
                    f = feats(got.images.to(pipe.device)).cpu()
                    row["fid"] = fid_from_stats(real_stats, stats_of(f))
                    if fid_bootstrap >= 2:
                        row["fid_std"] = bootstrap_fid_std(real_stats, f, fid_bootstrap)
                except Exception as e:  # of any type: this row's error, the others go on
                    row["status"] = "non-finite" if isinstance(e, NonFiniteError) else "error"
                    row["error"] = one_line(e)
                    got = None
                row["over_budget"] = bool(row["nfe"] > job.budget * (2 if w != 1 else 1) + 1e-9)
                if out_dir is not None and got is not None:
                    safe = label.replace(" ", "_").replace("=", "")
                    png = f"grids/{safe}_nfe{job.budget}.png"
                    save_samples_png(Path(out_dir) / png, got.images[:grid_size])
                    grids[f"{label} @ {job.budget}"] = png
                if store is not None:
                    store.append(row)
                rows.append(row)
    if out_dir is not None:
        report = {
            "name": f"latent {pipe.folder}",
            "results": rows,
            "num_samples": n,
            "feature": feature,
            "fid_bootstrap": fid_bootstrap,
            "grids": grids,
            "notes": [
                f"{pipe.kind}-conditional latent model; images decoded by its VAE; "
                f"{len(values)} conditions; guidance scales {scales}; budgets count guided "
                "evaluations (a guided row's NFE counts both network rows)."
            ],
        }
        write_report(out_dir, report, plot=plot)
    return rows
