"""Train a CIFAR-sized model for a few hundred steps, evaluate it, and time every sampler (GPU).

Random 32x32 RGB PNGs stand in for CIFAR-10 (nothing is downloaded): the numbers are about
speed, not quality. Everything goes through samplerlab's own entry points:

1. ``load_config("cifar10", overrides=[data.name=image_folder, data.root=..., ...])`` and
   ``samplerlab.trainer.run.train`` (the preset's 35.7M-parameter UNet2DModel, VP epsilon),
   once per ``trainer.precision`` in ``--train-precisions`` (fit seconds and images/s);
2. ``samplerlab.trainer.run.evaluate`` on the checkpoint (raw-pixel FID, a pipeline check);
3. the checkpoint's EMA denoiser (``load_checkpoint(...)[0].denoiser``): for every sampler,
   NFE budget, batch, precision (fp32, bf16 autocast of the network) and mode (eager, or the
   network call compiled with ``maybe_compile``, CUDA graphs by default), the median
   wall-clock of ``samplerlab.sample`` between ``torch.cuda.synchronize`` calls after
   warm-up runs, as samples/s and as a ratio to serial DDIM at the same NFE, batch,
   precision and mode.

The trainer's denoiser has no ``compile=`` switch, so the benchmark replaces the network
call of the ``VPDenoiser`` / ``EDMDenoiser`` it returns (``model_fn`` / ``net``) by a
wrapped one: bf16 autocast, rows padded to a few bucket sizes (``batch * 2**k``, so a
parallel sampler's wider calls reuse a few CUDA graphs), then ``maybe_compile``.

Every cell is guarded (an OOM or a compile error is reported in its row) and the JSON and
markdown in ``--out`` are rewritten after each cell, so a run stopped by a time limit keeps
what it measured; ``--time-budget`` skips the cells left when it runs out.

    python benchmarks/bench_train_gpu.py --out out/                 # H100: everything
    python benchmarks/bench_train_gpu.py --out out/ --work-dir /tmp/slb --modes eager
    python benchmarks/bench_train_gpu.py --out out2/ --work-dir /tmp/slb --modes compiled \\
        --ckpt /tmp/slb/train_bf16-mixed/checkpoints/last.ckpt --time-budget 540  # reuse it
    python benchmarks/bench_train_gpu.py --smoke --out smoke/       # CPU, < 60 s
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import samplerlab as sl
from samplerlab.fileio import atomic_write_text
from samplerlab.samplers import SAMPLERS, get_sampler
from samplerlab.samplers.bucketing import Bucketed
from samplerlab.samplers.denoisers import EDMDenoiser, VPDenoiser, maybe_compile
from samplerlab.samplers.noise import NOISE_KINDS

BASELINE = "ddim"
PRECISIONS = ("fp32", "bf16")
MODES = ("eager", "compiled")
# A tiny UNet for --smoke (CPU): two levels, one attention block.
SMOKE_UNET = [
    "model.unet.block_out_channels=[16,32]",
    "model.unet.layers_per_block=1",
    "model.unet.down_block_types=[DownBlock2D,AttnDownBlock2D]",
    "model.unet.up_block_types=[AttnUpBlock2D,UpBlock2D]",
    "model.unet.norm_num_groups=8",
    "model.unet.attention_head_dim=8",
]


# --- data ----------------------------------------------------------------------------------


def make_images(folder: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    """``n`` random ``size x size`` RGB PNGs in ``folder`` (kept if already there)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("img_*.png"))) == n:
        return folder
    for p in folder.glob("img_*.png"):
        p.unlink()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            folder / f"img_{i:06d}.png"
        )
    return folder


# --- training and evaluation through samplerlab's entry points ------------------------------


def train_overrides(args: argparse.Namespace, data: Path, out_dir: Path, precision: str) -> list:
    """Overrides on the ``cifar10`` preset: the image folder, a short run, no evaluation."""
    cpu = args.device == "cpu"
    o = [
        "name=bench_train",
        f"out_dir={out_dir}",
        "data.name=image_folder",
        f"data.root={data}",
        f"data.image_size={args.image_size}",
        "data.channels=3",
        f"data.batch_size={args.train_batch}",
        f"data.num_workers={args.num_workers}",
        f"optim.warmup_steps={min(100, args.train_steps // 4)}",
        f"trainer.max_steps={args.train_steps}",
        "trainer.max_epochs=-1",
        "trainer.max_time=null",
        f"trainer.accelerator={'cpu' if cpu else 'gpu'}",
        "trainer.devices=1",
        f"trainer.precision={precision}",
        "trainer.check_val_every_n_epoch=1000000",
        "trainer.log_every_n_steps=10",
        "trainer.enable_progress_bar=false",
        "eval.enabled=false",
        "logger.wandb=false",
    ]
    if cpu:
        o.append("trainer.num_threads=1")
    return o + (SMOKE_UNET if args.smoke else [])


def run_training(args: argparse.Namespace, data: Path, work: Path) -> tuple[list[dict], Path]:
    from samplerlab.trainer.config import load_config
    from samplerlab.trainer.run import train

    rows, ckpt = [], None
    for precision in args.train_precisions:
        out_dir = work / f"train_{precision}"
        cfg = load_config("cifar10", overrides=train_overrides(args, data, out_dir, precision))
        if args.device != "cpu":
            torch.cuda.reset_peak_memory_stats()
        res = train(cfg)
        trainer = res["trainer"]
        steps = int(trainer.global_step)
        loss = trainer.callback_metrics.get("train/loss_step")
        rows.append(
            {
                "precision": precision,
                "steps": steps,
                "batch": args.train_batch,
                "seconds": res["seconds"],
                "images_per_s": steps * args.train_batch / res["seconds"],
                "final_loss": float(loss) if loss is not None else None,
                "peak_mem_gib": _peak_mem(args),
                "params_m": sum(p.numel() for p in res["module"].net.parameters()) / 1e6,
            }
        )
        print(f"bench_train_gpu: trained {precision}: {rows[-1]}", file=sys.stderr, flush=True)
        ckpt = ckpt or out_dir / "checkpoints" / "last.ckpt"
    return rows, ckpt


def run_evaluation(args: argparse.Namespace, ckpt: Path, data: Path) -> dict[str, Any]:
    """``samplerlab evaluate`` on the checkpoint: raw-pixel FID (random data: a pipeline check)."""
    from samplerlab.trainer.run import evaluate

    o = [
        f"data.root={data}",
        f"data.num_workers={args.num_workers}",
        "eval.all_samplers=false",
        *[f"eval.samplers.{s}={{}}" for s in args.eval_samplers],
        f"eval.nfe=[{','.join(map(str, args.nfe))}]",
        f"eval.num_samples={args.eval_samples}",
        f"eval.batch_size={min(args.eval_samples, 256)}",
        "eval.feature=raw",
        "eval.iia.coeffs=default",
        "eval.grid_size=16",
        f"trainer.accelerator={'cpu' if args.device == 'cpu' else 'gpu'}",
        "trainer.precision=32-true",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "logger.wandb=false",
        # --smoke trains 3 steps: its samples are far outside the data (a `diverged` row);
        # the smoke run checks the pipeline, so it keeps their FID.
        *(["eval.diverge_factor=1e12"] if args.smoke else []),
    ]
    start = time.perf_counter()
    res = evaluate(str(ckpt), [], o)
    seconds = time.perf_counter() - start
    report = res["reports"][-1]
    keep = ("label", "budget", "steps", "nfe", "rounds", "seconds", "fid", "status")
    return {
        "seconds": seconds,
        "out_dir": str(res["out_dir"]),
        "fid_floor": report.get("fid_floor"),
        "results": [{k: r.get(k) for k in keep} for r in report["results"]],
    }


# --- the denoiser with a wrapped network call ----------------------------------------------


def network_attr(den: Any) -> str:
    """The attribute holding the network call of a samplerlab denoiser."""
    if isinstance(den, VPDenoiser):
        return "model_fn"
    if isinstance(den, EDMDenoiser):
        return "net"
    raise TypeError(f"cannot wrap the network call of a {type(den).__name__}")


def wrap_network(
    den: Any,
    *,
    precision: str,
    compile: bool | dict[str, Any],
    batch: int,
    device: torch.device,
) -> Any:
    """``den`` with its network call run under bf16 autocast and/or compiled (in place)."""
    attr = network_attr(den)
    fn = getattr(den, attr)
    if precision == "bf16":
        inner = fn

        def fn(x: Tensor, t: Tensor) -> Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return inner(x, t)

    if compile:
        # One graph per bucket size (and precision): allow more than the default 8.
        for key in ("cache_size_limit", "recompile_limit"):
            if hasattr(torch._dynamo.config, key):
                setattr(torch._dynamo.config, key, 64)
        compiled = maybe_compile(fn, compile)
        graphs = device.type == "cuda" and (
            compile is True or compile.get("mode") == "reduce-overhead"
        )
        fn = Bucketed(compiled, batch, cuda_graphs=graphs)
    setattr(den, attr, fn)
    return den


# --- timing ---------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mem(args: argparse.Namespace) -> float | None:
    if args.device == "cpu":
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def time_cell(
    den: Any, name: str, *, steps: int, batch: int, device: torch.device, args: argparse.Namespace
) -> dict[str, Any]:
    kw = dict(
        steps=steps,
        shape=(batch, *den.data_shape),
        device=device,
        dtype=torch.float32,
        noise_device=args.noise_device,
        noise_kind=args.noise_kind,
    )
    for _ in range(args.warmup):  # compilation, CUDA graph recording, cuDNN autotuning
        sl.sample(den, name, **kw)
    times = []
    for _ in range(args.reps):
        sync(device)
        t0 = time.perf_counter()
        res = sl.sample(den, name, **kw)
        sync(device)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {
        "seconds": sec,
        "samples_per_s": batch / sec,
        "nfe": res.nfe,
        "rounds": res.rounds,
        "x": res.x.detach().float().cpu(),
    }


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


class Results:
    """All measurements; ``write`` rewrites the JSON and markdown atomically."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.meta: dict[str, Any] = {}
        self.train: list[dict[str, Any]] = []
        self.eval: dict[str, Any] | None = None
        self.cells: list[dict[str, Any]] = []

    def finish_ratios(self) -> None:
        key = ("budget", "batch", "precision", "mode")
        base = {
            tuple(c[k] for k in key): c["samples_per_s"]
            for c in self.cells
            if c["sampler"] == BASELINE and c.get("samples_per_s")
        }
        ref = {
            (c["sampler"], c["budget"], c["batch"]): c["samples_per_s"]
            for c in self.cells
            if c["precision"] == "fp32" and c["mode"] == "eager" and c.get("samples_per_s")
        }
        for c in self.cells:
            s = c.get("samples_per_s")
            b = base.get(tuple(c[k] for k in key))
            r = ref.get((c["sampler"], c["budget"], c["batch"]))
            c["vs_ddim"] = s / b if s and b else None
            c["vs_eager_fp32"] = s / r if s and r else None

    def markdown(self) -> str:
        m = self.meta
        lines = [
            "# bench_train_gpu",
            "",
            f"{m.get('device_name')}, torch {m.get('torch')}, samplerlab UNet2DModel "
            f"({_fmt(m.get('params_m'), '.1f')}M params, {m.get('image_size')}x"
            f"{m.get('image_size')} RGB), {m.get('images')} random PNGs; "
            f"fp32 matmul precision '{m.get('matmul_precision')}'.",
        ]
        if self.train:
            lines += [
                "",
                "## Training (`samplerlab.trainer.run.train`, `cifar10` preset on image_folder)",
                "",
                "Fit seconds include start-up, the sanity validation and the checkpoint.",
                "",
                "| trainer.precision | steps | batch | fit seconds | images/s | final loss "
                "| peak GiB |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for r in self.train:
                lines.append(
                    f"| {r['precision']} | {r['steps']} | {r['batch']} | {r['seconds']:.1f} "
                    f"| {r['images_per_s']:.0f} | {_fmt(r['final_loss'], '.4f')} "
                    f"| {_fmt(r['peak_mem_gib'], '.1f')} |"
                )
        if self.eval is not None:
            e = self.eval
            lines += [
                "",
                f"## Evaluation (`samplerlab.trainer.run.evaluate`, raw-pixel FID, "
                f"{self.args.eval_samples} samples; {e['seconds']:.1f} s in all)",
                "",
                f"Random training data: the FID only checks the pipeline (data-vs-data floor "
                f"{_fmt(e['fid_floor'], '.2f')}).",
                "",
                "| sampler | budget | steps | NFE | seconds | FID (raw) | status |",
                "|---|---:|---:|---:|---:|---:|---|",
            ]
            for r in e["results"]:
                lines.append(
                    f"| {r['label']} | {r['budget']} | {r['steps']} | {_fmt(r['nfe'], '.1f')} "
                    f"| {_fmt(r['seconds'], '.2f')} | {_fmt(r['fid'], '.2f')} | {r['status']} |"
                )
        lines += [
            "",
            "## Sampling throughput (`samplerlab.sample` on the EMA denoiser)",
            "",
            f"Median of {self.args.reps} runs after {self.args.warmup} warm-up run(s), "
            f"torch.cuda.synchronize around each; per-sample noise `{self.args.noise_kind}` "
            f"drawn on {self.args.noise_device or 'the sampling device'}. "
            "bf16 = autocast around the network call only; "
            f"compiled = the network call under `maybe_compile({self.args.compile_desc})`, "
            f"rows padded to batch * 2^k. x DDIM: samples/s over serial DDIM's at the same "
            "NFE budget, batch, precision and mode; x eager fp32: over the same sampler's "
            "eager fp32 cell; rel. diff: RMS(x - x_eager_fp32) / RMS(x_eager_fp32).",
            "",
            "| sampler | NFE budget | NFE | batch | precision | mode | seconds | samples/s "
            "| x DDIM | x eager fp32 | rel. diff |",
            "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|",
        ]
        for c in self.cells:
            head = f"| {c['sampler']} | {c['budget']} "
            if "error" in c:
                lines.append(
                    head + f"| - | {c['batch']} | {c['precision']} | {c['mode']} "
                    f"| {c['error']} | | | | |"
                )
                continue
            lines.append(
                head + f"| {c['nfe']:.0f} | {c['batch']} | {c['precision']} | {c['mode']} "
                f"| {c['seconds']:.4f} | {c['samples_per_s']:.1f} "
                f"| {_fmt(c['vs_ddim'], '.2f')} | {_fmt(c['vs_eager_fp32'], '.2f')} "
                f"| {_fmt(c.get('rel_diff'), '.1e')} |"
            )
        return "\n".join(lines) + "\n"

    def write(self) -> str:
        self.finish_ratios()
        text = self.markdown()
        if self.args.out:
            out = Path(self.args.out)
            payload = {
                "meta": self.meta,
                "train": self.train,
                "eval": self.eval,
                "cells": [{k: v for k, v in c.items() if k != "x"} for c in self.cells],
            }
            atomic_write_text(out / "bench_train_gpu.json", json.dumps(payload, indent=1))
            atomic_write_text(out / "bench_train_gpu.md", text)
        return text


def measure_cell(
    den: Any, cell: dict[str, Any], device: torch.device, args: argparse.Namespace
) -> None:
    """Time one cell into ``cell``; an exception (OOM, compile error) becomes its ``error``."""
    try:
        cell.update(
            time_cell(
                den,
                cell["sampler"],
                steps=cell["steps"],
                batch=cell["batch"],
                device=device,
                args=args,
            )
        )
    except Exception as e:  # reported in the row, the run goes on
        traceback.print_exc(file=sys.stderr)
        cell["error"] = f"error: {type(e).__name__}: {e!s:.80}"
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_throughput(args: argparse.Namespace, ckpt: Path, results: Results) -> None:
    from samplerlab.evaluation.plan import steps_for_budget
    from samplerlab.trainer.checkpoints import load_checkpoint

    device = torch.device(args.device)
    module, _ = load_checkpoint(ckpt)
    module.to(device)
    samplers = [BASELINE] + [s for s in args.samplers if s != BASELINE]
    refs: dict[tuple[str, int, int], Tensor] = {}  # eager fp32 samples, for rel. diff
    deadline = time.monotonic() + args.time_budget if args.time_budget else math.inf
    settings = [(p, m, b) for p in args.precisions for m in args.modes for b in args.batch]
    for precision, mode, batch in settings:
        if mode == "compiled" and batch == args.batch[0]:
            torch._dynamo.reset()  # a fresh cache per (precision, mode)
        den, setup_error = None, ""
        try:
            den = wrap_network(
                module.denoiser,
                precision=precision,
                compile=args.compile if mode == "compiled" else False,
                batch=batch,
                device=device,
            )
        except Exception as e:  # reported in every row of this setting
            setup_error = f"setup: {type(e).__name__}: {e!s:.80}"
        for budget in args.nfe:
            for name in samplers:
                cell = {"sampler": name, "budget": budget, "batch": batch}
                cell |= {"precision": precision, "mode": mode}
                cell["steps"] = steps_for_budget(get_sampler(name), budget)
                if den is None:
                    cell["error"] = setup_error
                elif time.monotonic() > deadline:
                    cell["error"] = "skipped: --time-budget spent"
                else:
                    measure_cell(den, cell, device, args)
                x = cell.pop("x", None)
                key = (name, budget, batch)
                if x is not None and precision == "fp32" and mode == "eager":
                    refs[key] = x
                if x is not None and key in refs:
                    r = refs[key]
                    cell["rel_diff"] = float((x - r).pow(2).mean().sqrt() / r.pow(2).mean().sqrt())
                results.cells.append(cell)
                results.write()
                got = cell.get("error") or f"{cell['samples_per_s']:.1f} samples/s"
                print(
                    f"bench_train_gpu: {name} NFE {budget} batch {batch} {precision} {mode}: "
                    + got,
                    file=sys.stderr,
                    flush=True,
                )


# --- command line ---------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny UNet and data, < 60 s")
    p.add_argument("--out", help="folder for bench_train_gpu.json and bench_train_gpu.md")
    p.add_argument("--work-dir", help="data and checkpoints (kept); default: a temp folder")
    p.add_argument("--ckpt", help="skip training: time this checkpoint")
    p.add_argument("--device", default=None)
    p.add_argument("--images", type=int, default=None, help="random PNGs (default 2048)")
    p.add_argument("--image-size", type=int, default=None, help="default 32 (smoke 8)")
    p.add_argument("--train-steps", type=int, default=None, help="default 300")
    p.add_argument("--train-batch", type=int, default=None, help="default 128")
    p.add_argument("--train-precisions", nargs="+", default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--eval-samples", type=int, default=None, help="0: no evaluation")
    p.add_argument("--eval-samplers", nargs="+", default=None)
    p.add_argument("--samplers", nargs="+", default=None, help="default: every registered")
    p.add_argument("--nfe", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, nargs="+", default=None)
    p.add_argument("--precisions", nargs="+", default=None, choices=PRECISIONS)
    p.add_argument("--modes", nargs="+", default=None, choices=MODES)
    p.add_argument("--compile-mode", default="reduce-overhead", help="torch.compile mode")
    p.add_argument("--compile-backend", default=None, help="e.g. eager (tests)")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument(
        "--noise-device", default=None, help="where per-sample noise is drawn (default: sampling)"
    )
    p.add_argument(
        "--noise-kind", default="splitmix", choices=NOISE_KINDS, help="PerSampleNoise kind"
    )
    p.add_argument("--matmul-precision", default="highest", choices=["highest", "high", "medium"])
    p.add_argument("--time-budget", type=float, default=None, help="seconds for the timing phase")
    args = p.parse_args(argv)
    s = args.smoke
    gpu = torch.cuda.is_available() and not s
    args.device = args.device or ("cuda" if gpu else "cpu")
    args.images = args.images or (32 if s else 2048)
    args.image_size = args.image_size or (8 if s else 32)
    args.train_steps = args.train_steps or (3 if s else 300)
    args.train_batch = args.train_batch or (8 if s else 128)
    cpu = args.device == "cpu"
    args.train_precisions = args.train_precisions or (
        ["32-true"] if cpu else ["bf16-mixed", "32-true"]
    )
    args.num_workers = args.num_workers if args.num_workers is not None else (0 if cpu else 6)
    if args.eval_samples is None:
        args.eval_samples = 8 if s else 256
    args.eval_samplers = args.eval_samplers or ([BASELINE] if s else ["ddim", "dpmpp_2m"])
    args.samplers = args.samplers or (["ddim", "dpmpp_2m"] if s else list(SAMPLERS))
    args.nfe = args.nfe or ([4] if s else [10, 20])
    args.batch = args.batch or ([2, 4] if s else [64, 256])
    args.precisions = args.precisions or list(PRECISIONS)
    args.modes = args.modes or (["eager"] if s else list(MODES))
    args.reps = args.reps or (1 if s else 3)
    args.warmup = args.warmup if args.warmup is not None else (0 if cpu else 1)
    compile_kw: dict[str, Any] = {"mode": args.compile_mode, "dynamic": False}
    if args.compile_backend:
        compile_kw = {"backend": args.compile_backend}
    args.compile = compile_kw
    args.compile_desc = ", ".join(f"{k}={v}" for k, v in compile_kw.items())
    return args


def check(args: argparse.Namespace) -> str | None:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return "CUDA is not available (use --smoke on a CPU)"
    for name in args.samplers + args.eval_samplers:
        if name not in SAMPLERS:
            return f"unknown sampler '{name}'; valid: {', '.join(SAMPLERS)}"
    if min(args.nfe + args.batch) < 1 or args.reps < 1 or args.warmup < 0:
        return "--nfe, --batch and --reps must be >= 1, --warmup >= 0"
    if args.ckpt and not Path(args.ckpt).is_file():
        return f"--ckpt: checkpoint {args.ckpt} does not exist"
    if args.images < 2 or args.train_steps < 1 or args.train_batch < 1:
        return "--images must be >= 2, --train-steps and --train-batch >= 1"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    problem = check(args)
    if problem:
        print(f"bench_train_gpu: {problem}", file=sys.stderr)
        return 2
    torch.set_float32_matmul_precision(args.matmul_precision)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="slbench_"))
    threads = torch.get_num_threads()
    results = Results(args)
    device = torch.device(args.device)
    results.meta = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "matmul_precision": args.matmul_precision,
        "images": args.images,
        "image_size": args.image_size,
        "smoke": args.smoke,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    try:
        data = make_images(work / "data", args.images)
        if args.ckpt:
            ckpt = Path(args.ckpt)
        else:
            results.train, ckpt = run_training(args, data, work)
            results.meta["params_m"] = results.train[0]["params_m"]
            results.write()
        if args.eval_samples > 0:
            results.eval = run_evaluation(args, ckpt, data)
            results.write()
        start = time.perf_counter()
        if "params_m" not in results.meta:
            from samplerlab.trainer.checkpoints import load_checkpoint

            results.meta["params_m"] = (
                sum(p.numel() for p in load_checkpoint(ckpt)[0].net.parameters()) / 1e6
            )
        run_throughput(args, ckpt, results)
        results.meta["timing_seconds"] = time.perf_counter() - start
        text = results.write()
    finally:
        torch.set_num_threads(threads)
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
