"""Class-conditional digits with classifier-free guidance: FID and class accuracy per
guidance scale, sampler and NFE budget (CPU).

Trains (or reuses) the ``digits_cond`` preset (a class-conditional EDM UNet, label dropout
0.1, a fixed 100 epochs), then samples balanced labels (sample ``k``: seed ``offset + k``,
label ``(offset + k) mod 10``) with guidance ``D = D_u + w (D_c - D_u)`` at each scale ``w``
(``w = 1``: conditional, no guidance) for each sampler at each NFE budget (guided denoiser
evaluations; the ``nfe`` column counts both network rows), on ``--seed-sets`` seed sets
(offsets 0, 1000, 2000, 3000), reported as mean ± std (min–max) over the sets. FID on the
shipped digits-classifier features against all 1797 digits; accuracy: the shipped digits
classifier's on the generated samples against their labels. Run (about 15 min of training
plus 15 min of sampling on a busy 2-core CPU)::

    PYTHONPATH=$PWD python benchmarks/bench_digits_cond.py --work runs/bench_digits_cond \\
        --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from seedsets import fmt_spread, spread

from samplerlab.fileio import atomic_write_text
from samplerlab.guidance_eval import digits_reference, plan_guided_jobs, run_guided_job
from samplerlab.trainer.checkpoints import load_checkpoint, read_checkpoint
from samplerlab.trainer.config import load_config

PRESET = "digits_cond"
# Keys of the saved config that must equal the preset's for a checkpoint to be reused.
SAME = ("data", "model", "optim", "seed")


def trained_checkpoint(work: Path, retrain: bool) -> Path:
    """``work/checkpoints/last.ckpt`` of the preset, trained now unless a finished run of the
    same preset is there."""
    want = load_config(PRESET, overrides=[f"out_dir={work}"])
    last = work / "checkpoints" / "last.ckpt"
    if last.is_file() and not retrain:
        ckpt = read_checkpoint(last, "--work")
        saved = ckpt["hyper_parameters"]["config"]
        same = all(saved.get(k) == _plain(want[k]) for k in SAME)
        done = int(ckpt.get("epoch", -1)) + 1 >= int(want.trainer.max_epochs)
        if same and done:
            print(f"reusing {last} (epoch {ckpt['epoch'] + 1}, step {ckpt['global_step']})")
            return last
        print(f"{last} is not a finished {PRESET} run (same={same}, done={done}): retraining")
    from samplerlab.trainer.run import train

    cfg = load_config(
        PRESET,
        overrides=[
            f"out_dir={work}",
            "overwrite=true",
            "eval.enabled=false",
            "logger.wandb=false",
            "trainer.enable_progress_bar=false",
        ],
    )
    out = train(cfg)
    print(f"trained {PRESET} in {out['seconds']:.0f} s")
    return last


def _plain(v):
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v


def key(r: dict) -> tuple:
    return (r["label"], r["budget"], r["guidance"], r["seed_offset"])


def markdown(result: dict) -> str:
    rows, ref = result["rows"], result["reference"]
    scales = result["guidance"]
    a = result["args"]
    lines = [
        f"# Class-conditional digits: guidance x sampler x NFE ({PRESET})",
        "",
        f"Checkpoint `{result['checkpoint']}` (epoch {result['epoch']}, step "
        f"{result['step']}); {a['num_samples']} samples per row, balanced labels (seed k: "
        f"label k mod 10), {len(a['seed_offsets'])} seed sets (offsets "
        f"{', '.join(map(str, a['seed_offsets']))}): mean ± std (min–max) over the sets. "
        "Guidance D = D_u + w (D_c - D_u), w = 1: conditional. NFE: guided denoiser "
        "evaluations (the budget); the network rows are twice that for w != 1. FID: shipped "
        "digits-classifier features vs all 1797 digits (data-vs-data floor, two halves: "
        f"{ref['fid_floor']:.3f}); accuracy: the shipped classifier's on the samples against "
        f"their labels (on the real digits: {ref['accuracy']:.4f}). † k/n: in k of the n "
        "seed sets more than 1% of the samples reach beyond 10x the data's half-range "
        "(the sampler evaluation's 'diverged'); FID and accuracy are then those of the "
        "samples clamped to [-1, 1].",
        "",
        f"Command: `{result['command']}`; {result['seconds']:.0f} s of sampling; "
        f"{result['machine']}.",
        "",
    ]
    seen = [r for r in rows if r.get("range_ratio") is not None]
    if seen:
        top = max(seen, key=lambda r: r["range_ratio"])
        lines += [
            f"Range: {len(seen)} of the {len(rows)} rows recorded it (rows without it were "
            "measured by the same sampling code before the check was added); the largest "
            f"reach was {top['range_ratio']:.3g} x the "
            f"half-range ({top['label']}@{top['budget']}, w = {top['guidance']:g}); "
            f"{sum(r['status'] == 'diverged' for r in seen)} diverged.",
            "",
        ]
    lines += [*compact(result), ""]
    for metric, title, d in (("fid", "FID", 3), ("accuracy", "Class accuracy", 3)):
        lines += [f"## {title}", ""]
        lines.append("| sampler | NFE | " + " | ".join(f"w = {w:g}" for w in scales) + " |")
        lines.append("|---|---|" + "---|" * len(scales))
        for label in a["samplers"]:
            for b in a["nfe"]:
                cells = []
                for w in scales:
                    sel = [
                        r for r in rows if (r["label"], r["budget"], r["guidance"]) == (label, b, w)
                    ]
                    bad = [r for r in sel if r["status"] not in ("ok", "diverged")]
                    if bad or not sel:
                        cells.append(bad[0]["status"] if bad else "—")
                        continue
                    cell = fmt_spread([r[metric] for r in sel], d)
                    n_div = sum(r["status"] == "diverged" for r in sel)
                    cells.append(cell + (f" † {n_div}/{len(sel)}" if n_div else ""))
                steps = next(r["steps"] for r in rows if (r["label"], r["budget"]) == (label, b))
                lines.append(f"| {label} ({steps} steps) | {b} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def compact(result: dict) -> list[str]:
    """One table: FID mean ± std / accuracy mean ± std per (sampler, NFE) and scale."""
    scales, a = result["guidance"], result["args"]
    g = lambda v, d: f"{v:.{d}g}"
    lines = [
        "## FID / class accuracy (mean ± std over the seed sets)",
        "",
        "| sampler | NFE | " + " | ".join(f"w = {w:g}" for w in scales) + " |",
        "|---|---:|" + "---|" * len(scales),
    ]
    for label in a["samplers"]:
        for b in a["nfe"]:
            cells = []
            for w in scales:
                sel = [
                    r
                    for r in result["rows"]
                    if (r["label"], r["budget"], r["guidance"]) == (label, b, w)
                    and r["status"] in ("ok", "diverged")
                ]
                if not sel:
                    cells.append("—")
                    continue
                f, acc = spread([r["fid"] for r in sel]), spread([r["accuracy"] for r in sel])
                mark = " †" if any(r["status"] == "diverged" for r in sel) else ""
                cells.append(
                    f"{g(f['mean'], 3)} ± {g(f['std'], 2)} / {acc['mean']:.3f} ± "
                    f"{acc['std']:.3f}{mark}"
                )
            lines.append(f"| {label} | {b} | " + " | ".join(cells) + " |")
    return lines


def summary(rows: list[dict]) -> list[dict]:
    """Mean/std/min/max over seed sets of each (sampler, budget, scale)."""
    out = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["budget"], r["guidance"]), []).append(r)
    for (label, b, w), sel in groups.items():
        ok = [r for r in sel if r["status"] in ("ok", "diverged")]
        out.append(
            {
                "label": label,
                "budget": b,
                "guidance": w,
                "steps": sel[0]["steps"],
                "nfe": ok[0]["nfe"] if ok else None,
                "seed_sets": len(sel),
                "failed": len(sel) - len(ok),
                "diverged": sum(r["status"] == "diverged" for r in sel),
                "fid": spread([r["fid"] for r in ok]) if ok else None,
                "accuracy": spread([r["accuracy"] for r in ok]) if ok else None,
            }
        )
    return out


def report_only(out: Path) -> None:
    """The markdown of the seed sets the JSON holds completely (a run stopped midway)."""
    result = json.loads((out / "digits_cond.json").read_text())
    a = result["args"]
    per_set = len(a["samplers"]) * len(a["nfe"]) * len(result["guidance"])
    offsets = [
        o
        for o in a["seed_offsets"]
        if sum(r["seed_offset"] == o for r in result["rows"]) == per_set
    ]
    result["rows"] = [r for r in result["rows"] if r["seed_offset"] in offsets]
    result["args"]["seed_offsets"] = offsets
    result["summary"] = summary(result["rows"])
    atomic_write_text(out / "digits_cond.md", markdown(result))
    print(markdown(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/bench_digits_cond", help="training folder")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--samplers", nargs="+", default=["ddim", "dpmpp_2m", "unipc", "edm_heun"])
    ap.add_argument("--nfe", nargs="+", type=int, default=[10, 20])
    ap.add_argument("--guidance", nargs="+", type=float, default=[1.0, 1.5, 2.0, 3.0, 4.0])
    ap.add_argument("--seed-sets", type=int, default=4)
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite digits_cond.md from the JSON (its complete seed sets), sampling nothing",
    )
    args = ap.parse_args()
    if args.report_only:
        return report_only(Path(args.out))
    torch.set_num_threads(1)
    work, out = Path(args.work), Path(args.out)
    ckpt = trained_checkpoint(work, args.retrain)
    module, _ = load_checkpoint(ckpt)
    blob = read_checkpoint(ckpt, "--work")
    den = module.denoiser
    classifier, features, ref = digits_reference()
    jobs = plan_guided_jobs(args.samplers, args.nfe, args.guidance)
    offsets = [1000 * s for s in range(args.seed_sets)]
    path = out / "digits_cond.json"
    done: dict[tuple, dict] = {}
    if path.is_file():  # resume: rows of the same settings already measured
        old = json.loads(path.read_text())
        if (
            old.get("checkpoint_step") == blob.get("global_step")
            and old["args"]["num_samples"] == args.num_samples
        ):
            done = {key(r): r for r in old["rows"]}
    result = {
        "command": "python benchmarks/bench_digits_cond.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)",
        "checkpoint": str(ckpt),
        "checkpoint_step": blob.get("global_step"),
        "epoch": int(blob.get("epoch", -1)) + 1,
        "step": blob.get("global_step"),
        "args": {**vars(args), "seed_offsets": offsets},
        "guidance": [float(w) for w in args.guidance],
        "reference": {"fid_floor": ref["fid_floor"], "accuracy": ref["accuracy"], "n": ref["n"]},
        "rows": [],
        "seconds": 0.0,
    }
    start = time.perf_counter()
    for off in offsets:
        for job in jobs:
            k = (job.label, job.budget, job.guidance, off)
            row = done.get(k)
            if row is None:
                row = run_guided_job(
                    den,
                    job,
                    num_classes=module.num_classes,
                    uncond=module.null_label,
                    shape=module.data_shape,
                    features=features,
                    classifier=classifier,
                    real=ref,
                    num_samples=args.num_samples,
                    seed_offset=off,
                    batch_size=args.batch_size,
                )
                print(
                    f"offset {off} {job.label}@{job.budget} w={job.guidance:g}: "
                    f"FID {row['fid']} acc {row['accuracy']} ({row['seconds']:.1f} s)",
                    flush=True,
                )
            result["rows"].append(row)
            result["seconds"] = (
                time.perf_counter() - start + sum(r["seconds"] for r in done.values())
            )
            atomic_write_text(path, json.dumps(result, indent=1))
    result["summary"] = summary(result["rows"])
    atomic_write_text(path, json.dumps(result, indent=1))
    atomic_write_text(out / "digits_cond.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
