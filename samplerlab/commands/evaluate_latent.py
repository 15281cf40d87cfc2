"""``samplerlab evaluate-latent FOLDER --prompts FILE --reference REF --nfe 10,20 --guidance
1,5``: every sampler x NFE budget x guidance scale on a local latent diffusers pipeline,
decoded images scored by FID against reference images
(:func:`samplerlab.evaluation.latent.evaluate_latent`)."""

from __future__ import annotations

import argparse

from .sample_latent import interval


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"need integers like 5,10,20, got '{text}'") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"need numbers like 1,3.5, got '{text}'") from None


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="a local latent diffusers pipeline folder (SD / DiT)")
    cond = p.add_mutually_exclusive_group(required=True)
    cond.add_argument("--prompts", help="a text file, one prompt per line")
    cond.add_argument("--class-labels", help="class labels of a DiT-style model, e.g. 0,3,7")
    p.add_argument(
        "--reference",
        required=True,
        help="reference images: a folder of images, or a .pt/.safetensors tensor [N, C, H, W] "
        "in [-1, 1]",
    )
    p.add_argument("--samplers", type=_names, default=None, help="default: every registered one")
    p.add_argument("--exclude", type=_names, default=[], help="samplers to leave out")
    p.add_argument("--nfe", type=_ints, default=[10], help="NFE budgets (guided evaluations)")
    p.add_argument("--guidance", type=_floats, default=[1.0], help="guidance scales")
    p.add_argument(
        "--guidance-interval", type=interval, default=None, metavar="LO,HI",
        help="guide only for sigma in (LO, HI]",
    )  # fmt: skip
    p.add_argument("--num-samples", type=int, default=None, help="default: one per condition")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--feature", choices=("raw", "inception"), default="raw")
    p.add_argument("--inception-weights", default=None, help="local InceptionV3 weights file")
    p.add_argument(
        "--iia-fit-samples", type=int, default=0,
        help="fit IIA samplers per row on N (noise, condition) pairs (0: default coefficients)",
    )  # fmt: skip
    p.add_argument("--fid-bootstrap", type=int, default=0, help="bootstrap resamples of FID")
    p.add_argument("--out-dir", default="latent_eval", help="rows.jsonl, report.md, grids/")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import ConfigError
    from ..evaluation.latent import evaluate_latent
    from ..latent import load, read_prompts
    from ..samplers.api import check_device
    from .evaluate import summary
    from .sample_latent import parse_labels

    check_device(args.device, "--device")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {args.batch_size}")
    values = read_prompts(args.prompts) if args.prompts else parse_labels(args.class_labels)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    pipe = load(args.pipeline, device=args.device, dtype=dtype)
    rows = evaluate_latent(
        pipe,
        values,
        args.reference,
        samplers=args.samplers,
        exclude=args.exclude,
        nfe=args.nfe,
        guidance=args.guidance,
        guidance_interval=args.guidance_interval,
        num_samples=args.num_samples,
        seed_offset=args.seed,
        batch_size=args.batch_size,
        dtype=dtype,
        feature=args.feature,
        inception_weights=args.inception_weights,
        fid_bootstrap=args.fid_bootstrap,
        iia_fit_samples=args.iia_fit_samples,
        out_dir=args.out_dir,
    )
    print(f"samplerlab evaluate-latent: report in {args.out_dir}/report.md")
    print(f"samplerlab evaluate-latent: {summary(rows)}")
    return 0
