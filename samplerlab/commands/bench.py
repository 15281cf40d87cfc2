"""``samplerlab bench``: quality and cost of every sampler vs NFE on an analytic model."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="gmm", help="gmm (Gaussian mixture) or gaussian (default: gmm)"
    )
    p.add_argument(
        "--samplers", default=None, help="comma-separated sampler names (default: all registered)"
    )
    p.add_argument("--nfe", default="10,20,50,100", help="comma-separated NFE budgets")
    p.add_argument(
        "--ddpm-nfe",
        default="1000",
        help="extra comma-separated budgets for stochastic samplers ('' for none)",
    )
    p.add_argument("--n", type=int, default=4000, help="samples per sampler and budget")
    p.add_argument("--seed", type=int, default=0, help="first sampling seed")
    p.add_argument("--dim", type=int, default=8, help="data dimension of the analytic model")
    p.add_argument("--out", default="bench_out", help="folder for bench.json and bench.md")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument(
        "--reference-steps",
        type=int,
        default=400,
        help="order-3 steps of the fine reference ODE solve (mixture only)",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="SAMPLER.KEY=VALUE",
        help="a sampler option, e.g. ddim.eta=1 or iia_ddim.coeffs=c.safetensors (repeatable)",
    )
    p.add_argument(
        "--schedule",
        action="append",
        default=[],
        metavar="SAMPLER=SCHEDULE",
        help="replace a sampler's default grid, e.g. dpmpp_2m=time_quadratic (repeatable)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the analytic models are tiny, more threads only "
        "contend)",
    )
    p.add_argument(
        "--seed-sets",
        type=int,
        default=4,
        help="independent seed sets (disjoint seed blocks) over which the pathwise errors' "
        "spread is reported (default 4)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _int_list(text: str, flag: str) -> list[int]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [int(t) for t in items]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, got '{text}'") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{flag} values must be >= 1, got '{text}'")
    return values


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"True": True, "False": False, "None": None}.get(text, text)


def parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["ddim.eta=1", ...]`` -> ``{"ddim": {"eta": 1}}`` (JSON values, else strings)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        sampler, dot, name = key.strip().partition(".")
        if not (sep and dot and sampler and name):
            raise ConfigError(f"--option must look like SAMPLER.KEY=VALUE, got '{item}'")
        out.setdefault(sampler, {})[name] = _value(value.strip())
    return out


def parse_schedules(items: list[str]) -> dict[str, str]:
    """``["dpmpp_2m=time_quadratic"]`` -> ``{"dpmpp_2m": "time_quadratic"}``."""
    out = {}
    for item in items:
        sampler, sep, schedule = item.partition("=")
        if not (sep and sampler.strip() and schedule.strip()):
            raise ConfigError(f"--schedule must look like SAMPLER=SCHEDULE, got '{item}'")
        out[sampler.strip()] = schedule.strip()
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench import make_model, run_bench
    from ..bench_report import bench_meta, format_notes, format_table, write_report

    model = make_model(args.model, dim=args.dim)
    samplers = None
    if args.samplers is not None:
        samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    budgets = _int_list(args.nfe, "--nfe")
    if not budgets:
        raise ConfigError("--nfe needs at least one budget")
    ddpm_budgets = _int_list(args.ddpm_nfe, "--ddpm-nfe")
    if args.n < 2:
        raise ConfigError(f"--n must be >= 2, got {args.n}")
    if args.reference_steps < 2:
        raise ConfigError(f"--reference-steps must be >= 2, got {args.reference_steps}")
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ConfigError(f"--device: unknown device '{args.device}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available here; use --device cpu")

    rows = run_bench(
        model,
        samplers,
        budgets,
        n_samples=args.n,
        seed=args.seed,
        ddpm_budgets=ddpm_budgets,
        sampler_options=parse_options(args.option),
        device=device,
        dtype=dtype,
        reference_steps=args.reference_steps,
        schedules=parse_schedules(args.schedule),
        progress=not args.no_progress,
        seed_sets=args.seed_sets,
    )
    meta = bench_meta(
        model,
        args.model,
        rows,
        reference_steps=args.reference_steps,
        n_samples=args.n,
        seed=args.seed,
        dtype=args.dtype,
        device=str(device),
        nfe_budgets=budgets,
        ddpm_budgets=ddpm_budgets,
        seed_sets=args.seed_sets,
    )
    json_path, md_path = write_report(rows, args.out, meta)
    print(format_table(rows))
    print()
    print(format_notes(meta))
    print(f"\nwrote {json_path} and {md_path}")
    return 0
