"""Wall-clock of SRDS and ParaDiGMS vs the serial sampler on a CIFAR-sized UNet (GPU).

The model is a diffusers ``UNet2DModel`` with the google/ddpm-cifar10-32 architecture
(35.7M parameters) built from its config with random weights (nothing is downloaded);
speed does not depend on the weights, convergence does (reported as iterations and the
distance to the serial result). For each N and batch size, in one run: serial, SRDS,
pipelined SRDS and ParaDiGMS, eager and compiled (``torch.compile(mode="reduce-overhead")``,
CUDA graphs; rows are padded to a few bucket sizes so the graphs are reused), reported
as speed-ups over the serial sampler in the same mode, and over the compiled serial
sampler (the honest baseline). Every cell is guarded: a failure (OOM, compile error) is
reported in the table and the run goes on.

    python benchmarks/bench_parallel_gpu.py                      # H100: N 100 1024, batch 1 16
    python benchmarks/bench_parallel_gpu.py --smoke              # CPU, tiny UNet, tiny N
    python benchmarks/bench_parallel_gpu.py --out bench_gpu.md --shard   # rows over all GPUs
    python benchmarks/bench_parallel_gpu.py --gpus 1 2 4 --out bench_gpu.md  # 1 vs several GPUs

``--gpus K1 K2 ...`` repeats the run with each parallel round's rows split over the first
``K`` GPUs (``K = 1``: one GPU, unsharded; on ``--smoke`` the "devices" are CPU replicas)
and ends with a table of each method's wall-clock per device count and its speed-up over
one device, measured in the same run. Eager runs spread the rows through
``samplerlab.sample(..., devices=[...])`` (replicas copied per call, before the timed run);
compiled runs keep one ``ShardedDenoiser`` of replicas compiled once. Seconds are the
sampler's run (``SampleResult.seconds``, synchronised), the median of ``--reps``.

    python benchmarks/bench_parallel_gpu.py --latency --noise --out bench_gpu.md

``--latency`` adds, per mode, serial DDIM at batch 1 against the network's own forward time
at batch 1 times the NFE (the sampler's overhead over the network). ``--noise`` adds the
time of one per-sample noise draw on the device (``PerSampleNoise``: the counter-based
default, Philox and per-sample generators) against one batched ``torch.randn`` of the same
shape, for each batch size. Every ratio is measured within the same run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import samplerlab as sl
from samplerlab.fileio import atomic_write_text
from samplerlab.samplers import build_sigmas, get_sampler
from samplerlab.samplers.bucketing import Bucketed
from samplerlab.samplers.denoisers import from_eps
from samplerlab.samplers.noise import NOISE_KINDS, PerSampleNoise
from samplerlab.samplers.schedules import betas_for
from samplerlab.samplers.sharding import ShardedDenoiser

CIFAR_UNET = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    freq_shift=1,
    flip_sin_to_cos=False,
    norm_eps=1e-6,
    downsample_padding=0,
    dropout=0.1,
)
TINY_UNET = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)

# name, registry sampler, options (the samplers' defaults, chosen on the analytic panel;
# see benchmarks/bench_parallel.py).
METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("serial", "ddim", {}),
    ("srds", "srds", {"pipelined": False}),
    ("srds_pipelined", "srds", {}),
    ("paradigms", "paradigms", {}),
]


def build_unet(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**config).to(device, dtype).eval()


class EpsNet(torch.nn.Module):
    """The UNet as ``eps(x_vp, t)`` (a module, so ``sample(..., devices=)`` copies it with
    its denoiser)."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype, compiled: bool) -> None:
        super().__init__()
        self.net, self.dtype, self.compiled = net, dtype, compiled

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.compiled:
            # Each call is a new step: CUDA-graph outputs of the last one may be reused.
            torch.compiler.cudagraph_mark_step_begin()
        # Timesteps stay float32 (bf16 cannot hold 0..999 exactly).
        return self.net(x.to(self.dtype), t.float()).sample.to(x.dtype)


def make_denoiser(
    unet, dtype: torch.dtype, compiled: bool, shard_devices: list[str] | None
) -> tuple[Any, list[str] | None]:
    """The denoiser and the ``devices=`` to sample with.

    Eager: rows over ``shard_devices`` through ``sample(..., devices=)`` (replicas copied
    per call, before the timed run). Compiled: the replicas are compiled once and kept in a
    ``ShardedDenoiser`` (a copy per call would recompile and re-record its CUDA graphs).
    """
    alphas_cumprod = torch.cumprod(1 - betas_for("linear", 1000), 0)
    size = unet.config.sample_size

    if compiled:
        # Every bucket size is its own graph: allow more than the default 8 recompiles.
        for key in ("cache_size_limit", "recompile_limit"):
            if hasattr(torch._dynamo.config, key):
                setattr(torch._dynamo.config, key, 64)

    def wrap(model):
        net = torch.compile(model, mode="reduce-overhead", dynamic=False) if compiled else model
        return from_eps(EpsNet(net, dtype, compiled), alphas_cumprod, data_shape=(3, size, size))

    if not shard_devices:
        return wrap(unet), None
    if not compiled:
        return wrap(unet), shard_devices
    replicas = [
        wrap(copy.deepcopy(unet).to(d)) if i else wrap(unet) for i, d in enumerate(shard_devices)
    ]
    return ShardedDenoiser(replicas, shard_devices), None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_method(
    den,
    name: str,
    opts: dict[str, Any],
    *,
    steps: int,
    batch: int,
    sigmas: Tensor,
    device: torch.device,
    reps: int,
    warmup: bool,
    shape: tuple[int, ...],
    devices: list[str] | None = None,
) -> dict[str, Any]:
    """Median wall-clock of the sampler's run (``SampleResult.seconds``: synchronised, after
    the replicas of ``devices=`` are made) over ``reps`` runs."""
    kw = dict(
        steps=steps,
        shape=(batch, *shape),
        sigmas=sigmas,
        device=device,
        dtype=torch.float32,
        **opts,
    )
    if devices:
        kw["devices"] = devices
    if warmup:
        sl.sample(den, name, **kw)  # compilation, CUDA graph recording, cuDNN autotuning
    times = []
    for _ in range(reps):
        res = sl.sample(den, name, **kw)
        times.append(res.seconds)
    return {"seconds": statistics.median(times), "rounds": res.rounds, "nfe": res.nfe, "x": res.x}


def median_seconds(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Median wall-clock of ``fn`` over ``reps`` runs after one warm-up, synchronised."""
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def network_call(den) -> Callable[[Tensor, Tensor], Tensor]:
    """The raw (possibly compiled) network call ``eps(x_vp, t)`` inside a denoiser."""
    inner = den.inner if isinstance(den, Bucketed) else den
    if isinstance(inner, ShardedDenoiser):
        inner = inner.replicas[0]
    return inner.model_fn


def latency_rows(den, mode: str, steps: int, shape, device, reps: int, serial: dict) -> str:
    """Serial batch-1 seconds against (forward at batch 1) x NFE, one markdown row."""
    net = network_call(den)
    x = torch.randn(1, *shape, device=device)
    t = torch.full((1,), 500.0, device=device)
    forward = median_seconds(lambda: net(x, t), device, max(reps, 10))
    ideal = forward * serial["nfe"]
    return (
        f"| {steps} | {mode} | {forward * 1e3:.3f} | {serial['nfe']:.0f} | {ideal:.3f} "
        f"| {serial['seconds']:.3f} | {serial['seconds'] / ideal:.2f}x |"
    )


def noise_rows(batches: list[int], shape, device, reps: int) -> list[str]:
    """One draw of each PerSampleNoise kind on ``device`` against one batched torch.randn."""
    lines = [
        f"Per-sample noise, one draw of (batch, {', '.join(map(str, shape))}) float32 on "
        f"{device} (median of {max(reps, 5)}):",
        "",
        "| batch | torch.randn ms | " + " | ".join(f"{k} ms (x randn)" for k in NOISE_KINDS) + " |",
        "|---|---|" + "---|" * len(NOISE_KINDS),
    ]
    for batch in batches:
        full = (batch, *shape)
        base = median_seconds(
            lambda full=full: torch.randn(full, device=device), device, max(reps, 5)
        )
        cells = []
        for kind in NOISE_KINDS:
            src = PerSampleNoise(range(batch), kind=kind)
            sec = median_seconds(
                lambda src=src, full=full: src.randn(full, device=device, dtype=torch.float32),
                device,
                max(reps, 5),
            )
            cells.append(f"{sec * 1e3:.3f} (x{sec / base:.2f})")
        lines.append(f"| {batch} | {base * 1e3:.3f} | " + " | ".join(cells) + " |")
    return lines


def run(args: argparse.Namespace) -> list[str]:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    config = TINY_UNET if args.smoke else CIFAR_UNET
    unet = build_unet(config, device, dtype)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    shape = (3, config["sample_size"], config["sample_size"])
    shard = getattr(args, "shard_devices", None)
    if args.shard and shard is None:
        n_gpu = torch.cuda.device_count() if device.type == "cuda" else 0
        shard = [f"cuda:{i}" for i in range(n_gpu)] if n_gpu > 1 else [str(device)] * 2
    lines = [
        f"UNet2DModel ({'tiny smoke' if args.smoke else 'google/ddpm-cifar10-32 architecture'}, "
        f"{params:.1f}M params, random weights), {args.dtype}, device {device}"
        + (f", rows sharded over {shard}" if shard else "")
        + f"; DDIM inner, time_uniform grid; median of {args.reps} timed runs "
        "(after a warm-up on GPU or when compiled).",
        "",
        "| N | batch | mode | method | seconds | speed-up vs serial (same mode) "
        "| speed-up vs compiled serial | rounds | NFE | max abs diff to serial |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    latency: list[str] = []
    for steps in args.steps:
        for batch in args.batch:
            results: dict[tuple[str, str], dict[str, Any]] = {}
            for mode in args.modes:
                compiled = mode == "compiled"
                try:
                    den, devices = make_denoiser(unet, dtype, compiled, shard)
                    if compiled:
                        den = Bucketed(den, base=batch)
                except Exception as e:  # reported in the table
                    lines.append(f"| {steps} | {batch} | {mode} | (setup) | error: {e!s:.80} |")
                    continue
                sigmas = build_sigmas(den, get_sampler("ddim"), steps)
                for label, name, opts in METHODS:
                    try:
                        results[(mode, label)] = time_method(
                            den,
                            name,
                            opts,
                            steps=steps,
                            batch=batch,
                            sigmas=sigmas,
                            device=device,
                            reps=args.reps,
                            warmup=compiled or device.type == "cuda",
                            shape=shape,
                            devices=devices,
                        )
                    except Exception as e:  # reported in the table
                        traceback.print_exc(file=sys.stderr)
                        results[(mode, label)] = {"error": f"{type(e).__name__}: {e!s:.80}"}
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            for mode in args.modes:
                ser = results.get((mode, "serial"), {})
                cser = results.get(("compiled", "serial"), {})
                for label, _, _ in METHODS:
                    r = results.get((mode, label))
                    if r is None:
                        continue
                    if "error" in r:
                        lines.append(f"| {steps} | {batch} | {mode} | {label} | {r['error']} |")
                        continue

                    def ratio(base: dict[str, Any], r: dict[str, Any] = r) -> str:
                        if "seconds" not in base:
                            return "-"
                        return f"{base['seconds'] / r['seconds']:.2f}x"

                    diff = (r["x"] - ser["x"]).abs().max().item() if "x" in ser else float("nan")
                    lines.append(
                        f"| {steps} | {batch} | {mode} | {label} | {r['seconds']:.3f} "
                        f"| {ratio(ser)} | {ratio(cser)} | {r['rounds']} | {r['nfe']:.0f} "
                        f"| {diff:.1e} |"
                    )
            print("\n".join(lines[-len(args.modes) * len(METHODS) :]), file=sys.stderr, flush=True)
            if args.latency and batch == 1:
                for mode in args.modes:
                    ser = results.get((mode, "serial"), {})
                    if "seconds" not in ser:
                        continue
                    try:
                        den, _ = make_denoiser(unet, dtype, mode == "compiled", shard)
                        den = Bucketed(den, base=1) if mode == "compiled" else den
                        latency.append(
                            latency_rows(den, mode, steps, shape, device, args.reps, ser)
                        )
                    except Exception as e:  # reported in the table
                        latency.append(f"| {steps} | {mode} | error: {e!s:.80} |")
    if args.latency:
        lines += [
            "",
            "Serial DDIM at batch 1 against the network's forward time at batch 1 x NFE "
            "(same mode, same run):",
            "",
            "| N | mode | forward ms | NFE | forward x NFE s | serial s "
            "| serial / (forward x NFE) |",
            "|---|---|---|---|---|---|---|",
            *latency,
        ]
    if args.noise:
        lines += ["", *noise_rows(args.batch, shape, device, args.reps)]
    return lines


def run_device_counts(args: argparse.Namespace) -> list[str]:
    """:func:`run` once per device count of ``--gpus``, then wall-clock per count."""
    lines: list[str] = []
    secs: dict[tuple[int, str, int, int, str], float] = {}
    for k in args.gpus:
        if args.device.startswith("cuda"):
            devices = [f"cuda:{i}" for i in range(k)]
        else:
            devices = [args.device] * k
        args.shard_devices = devices if k > 1 else None
        part = run(args)
        lines += [f"### rows over {k} device(s): {', '.join(devices)}", "", *part, ""]
        for row in part:
            cells = [c.strip() for c in row.strip("|").split("|")]
            try:  # data rows: N | batch | mode | method | seconds | ...
                secs[(k, cells[2], int(cells[0]), int(cells[1]), cells[3])] = float(cells[4])
            except (IndexError, ValueError):
                continue
    args.shard_devices = None
    base = args.gpus[0]
    lines += [
        f"### wall-clock by device count (speed-up over {base} device(s), same run)",
        "",
        "| mode | N | batch | method | " + " | ".join(f"{k} dev: s (x)" for k in args.gpus) + " |",
        "|---|---|---|---|" + "---|" * len(args.gpus),
    ]
    for mode, steps, batch, label in sorted({key[1:] for key in secs}):
        b = secs.get((base, mode, steps, batch, label))
        cells = []
        for k in args.gpus:
            t = secs.get((k, mode, steps, batch, label))
            cells.append("-" if t is None or b is None else f"{t:.3f} ({b / t:.2f}x)")
        lines.append(f"| {mode} | {steps} | {batch} | {label} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny UNet, N=8, batch 1 2, eager")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"])
    p.add_argument("--steps", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, nargs="+", default=None)
    p.add_argument("--modes", nargs="+", default=None, choices=["eager", "compiled"])
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--shard", action="store_true", help="split rows over the node's GPUs")
    p.add_argument(
        "--gpus", type=int, nargs="+", default=None, help="device counts to compare, e.g. 1 2"
    )
    p.add_argument("--latency", action="store_true", help="serial batch 1 vs forward x NFE")
    p.add_argument("--noise", action="store_true", help="per-sample noise draws vs torch.randn")
    p.add_argument("--out", help="write the markdown table here (atomically)")
    args = p.parse_args(argv)
    smoke = args.smoke
    args.device = args.device or ("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    args.dtype = args.dtype or ("fp32" if args.device == "cpu" else "bf16")
    args.steps = args.steps or ([8] if smoke else [100, 1024])
    args.batch = args.batch or ([1, 2] if smoke else [1, 16])
    args.modes = args.modes or (["eager"] if smoke else ["eager", "compiled"])
    args.reps = args.reps or (1 if smoke else 3)
    if args.reps < 1 or any(n < 1 for n in args.steps + args.batch):
        print("bench_parallel_gpu: --reps, --steps and --batch must be >= 1", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_parallel_gpu: CUDA is not available (use --smoke on CPU)", file=sys.stderr)
        return 2
    if args.gpus and any(k < 1 for k in args.gpus):
        print("bench_parallel_gpu: --gpus counts must be >= 1", file=sys.stderr)
        return 2
    n_gpu = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    if args.gpus and args.device.startswith("cuda") and max(args.gpus) > n_gpu:
        print(f"bench_parallel_gpu: --gpus {max(args.gpus)} > {n_gpu} GPUs here", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if smoke:
        torch.set_num_threads(1)  # tiny CPU model: threads only add contention
    try:
        text = "\n".join(run(args) if not args.gpus else run_device_counts(args))
    finally:
        torch.set_num_threads(threads)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
