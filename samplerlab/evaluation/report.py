"""Run reports: ``report.json``, ``report.md``, ``fid_vs_nfe.png``, sample grids; atomic writes."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..fileio import atomic_write, atomic_write_text
from .guidance import row_series, row_tag


def grid_image(x: Tensor, nrow: int | None = None) -> Tensor:
    """Samples ``[n, C, H, W]`` in ``[-1, 1]`` as one uint8 image ``[H', W', C]``."""
    import torchvision

    n = x.shape[0]
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    g = torchvision.utils.make_grid(((x.float().clamp(-1, 1) + 1) / 2).cpu(), nrow=nrow, padding=1)
    return (g * 255).round().to(torch.uint8).permute(1, 2, 0)


def save_samples_png(path: str | Path, x: Tensor, scale: int | None = None) -> Path:
    """A grid PNG of images, or a 2-D scatter (first two coordinates) of vectors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def write(tmp: str) -> None:
        if x.ndim == 4:
            from PIL import Image

            img = grid_image(x).numpy()
            s = scale or max(1, 256 // max(x.shape[-1], 1) // 2)
            im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            im = im.resize((im.width * s, im.height * s), Image.NEAREST)
            im.save(tmp, format="PNG")
        else:
            fig, ax = plt.subplots(figsize=(4, 4))
            v = x.reshape(x.shape[0], -1).float().cpu()
            ax.scatter(v[:, 0], v[:, 1 if v.shape[1] > 1 else 0], s=4)
            ax.set_xlabel("x[0]")
            ax.set_ylabel("x[1]")
            fig.tight_layout()
            fig.savefig(tmp, format="png", dpi=100)
            plt.close(fig)

    return atomic_write(path, write)


def plot_fid_vs_nfe(path: str | Path, rows: Sequence[dict[str, Any]], floor: float | None) -> Path:
    """FID against each row's realised NFE (log-log), with bootstrap error bars; rows that
    spent more than their budget are drawn hollow and labelled "over budget"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = sorted({row_series(r) for r in rows})
    # Every registered sampler is plotted: 20 colours, and a marker and line style per
    # cycle of them, so that no two curves look alike.
    colors = plt.get_cmap("tab20").colors
    markers, styles = "osD^vPX*", ["-", "--", ":", "-."]
    any_over = False
    for i, label in enumerate(labels):
        pts = sorted(
            (r["nfe"], r["fid"], r.get("fid_std") or 0.0, bool(r.get("over_budget")))
            for r in rows
            if row_series(r) == label and r["status"] == "ok" and r["fid"] is not None
        )
        if not pts:
            continue
        color, marker = colors[i % len(colors)], markers[i % len(markers)]
        nfe, fid, std, over = zip(*pts, strict=True)
        over_any = any(over)
        any_over |= over_any
        ax.errorbar(
            nfe,
            fid,
            yerr=std,
            color=color,
            marker="none",
            ls=styles[(i // len(colors)) % len(styles)],
            capsize=2,
            label=label + (" (over budget)" if over_any else ""),
        )
        for x, y, _s, o in pts:
            ax.plot(x, y, marker=marker, color=color, mfc="none" if o else color, ls="none")
    if floor is not None:
        ax.axhline(floor, color="k", ls="--", lw=1, label="data vs data")
    xlabel = "realised NFE per sample (log)"
    if any_over:
        xlabel += "; hollow markers: over their NFE budget"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FID (± bootstrap std)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=1 + len(labels) // 16, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)


def _fid_text(r: dict[str, Any]) -> str:
    if r["fid"] is None:
        return "—"
    std = r.get("fid_std")
    return f"{r['fid']:.3f}" + (f" ± {std:.2g}" if std is not None else "")


def within_noise(best: dict[str, Any], r: dict[str, Any], z: float = 2.0) -> bool:
    """``r``'s FID is within ``z`` combined bootstrap standard deviations of ``best``'s."""
    s = math.hypot(best.get("fid_std") or 0.0, r.get("fid_std") or 0.0)
    return r["fid"] - best["fid"] <= z * s


def pick_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One "pick this" line per NFE budget: the lowest-FID ``ok`` row that kept its budget,
    and every other such row within 2 combined bootstrap standard deviations of it."""
    out = []
    for budget in sorted({r["budget"] for r in rows}):
        cands = [
            r
            for r in rows
            if r["budget"] == budget
            and r["status"] == "ok"
            and r["fid"] is not None
            and not r.get("over_budget")
        ]
        if not cands:
            out.append(f"- **Pick at {budget} NFE:** none (no row finished within its budget)")
            continue
        best = min(cands, key=lambda r: r["fid"])
        close = sorted(
            (r for r in cands if r is not best and within_noise(best, r)), key=lambda r: r["fid"]
        )
        line = f"- **Pick at {budget} NFE:** `{row_series(best)}` (FID {_fid_text(best)})"
        if close:
            line += "; within its noise: " + ", ".join(
                f"`{row_series(r)}` ({_fid_text(r)})" for r in close
            )
        else:
            line += "; no other sampler within its noise"
        out.append(line)
    return out


def _status_text(r: dict[str, Any]) -> str:
    """The row's status, with its error (``|`` escaped) when it is not ``ok``."""
    if r["status"] == "ok":
        return "ok"
    return f"{r['status']}: {str(r.get('error', '')).replace('|', '/')}"


def _nfe_text(r: dict[str, Any]) -> str:
    return f"{r['nfe']:.2f}" + (" (over budget)" if r.get("over_budget") else "")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    guided = any("guidance" in r for r in rows)
    if guided:  # guidance and accuracy columns after the sampler's and the FID
        return _guided_table(rows)
    head = "| sampler | NFE budget | steps | NFE | rounds | seconds | FID | status |\n"
    head += "|---|---:|---:|---:|---:|---:|---:|---|\n"
    lines = []
    for r in rows:
        status, nfe = _status_text(r), _nfe_text(r)
        lines.append(
            f"| {r['label']} | {r['budget']} | {r['steps']} | {nfe} | {r['rounds']} "
            f"| {r['seconds']:.2f} | {_fid_text(r)} | {status} |"
        )
    return head + "\n".join(lines) + "\n"


def _guided_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "| sampler | guidance | NFE budget | steps | NFE | rounds | seconds | FID | accuracy "
    head += "| status |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    lines = []
    for r in rows:
        status, nfe = _status_text(r), _nfe_text(r)
        w = "—" if r.get("guidance") is None else f"{r['guidance']:g}"
        acc = "—" if r.get("accuracy") is None else f"{r['accuracy']:.3f}"
        lines.append(
            f"| {r['label']} | {w} | {r['budget']} | {r['steps']} | {nfe} | {r['rounds']} "
            f"| {r['seconds']:.2f} | {_fid_text(r)} | {acc} | {status} |"
        )
    return head + "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, report: dict[str, Any], plot: bool = True) -> dict[str, Path]:
    """``report.json``, ``report.md`` and (``plot``) ``fid_vs_nfe.png``, each atomically."""
    out = Path(out_dir)
    # What was trained (samplerlab.trainer.runs.TrainingSummary) opens both files.
    training = report.get("training")
    if training is not None:
        report = {"training": training, **{k: v for k, v in report.items() if k != "training"}}
    rows = report["results"]
    floor = report.get("fid_floor")
    paths = {"json": atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")}
    if plot:
        paths["png"] = plot_fid_vs_nfe(out / "fid_vs_nfe.png", rows, floor)
    md = [f"# samplerlab report: {report.get('name', '')}\n"]
    if training is not None:
        line = training["line"]
        md.append(f"**WARNING: {line}.**\n" if training.get("cut_by_max_time") else f"{line}.\n")
    planned, finished = report.get("planned"), report.get("finished", len(rows))
    if planned is not None and finished < planned:
        md.append(f"**In progress: {finished} of {planned} rows finished.**\n")
    md.append("\n".join(pick_lines(rows)) + "\n")
    ckpt = report.get("checkpoint") or {}
    where = f"checkpoint `{ckpt['path']}`, " if ckpt.get("path") else ""
    md.append(
        f"{report['num_samples']} samples per sampler and NFE budget, features "
        f"`{report['feature']}`, {where}epoch {report.get('epoch')}, step {report.get('step')}, "
        f"{report.get('world_size', 1)} process(es).\n"
    )
    nb = report.get("fid_bootstrap")
    md.append(
        "FID ± its standard deviation over "
        + (f"{nb} bootstrap resamples of the generated features" if nb else "(no bootstrap)")
        + '; "within its noise": at most 2 combined standard deviations above the best. '
        'NFE is realised (measured); "over budget" rows spent more than their budget and '
        "are never picked. `diverged`: more than "
        f"{report.get('diverge_fraction', 0.01):.0%} of the samples reach more than "
        f"{report.get('diverge_factor', 10):g} x the data's half-range from its midpoint.\n"
    )
    if any("guidance" in r for r in rows):
        md.append(
            "Guided rows: classifier-free guidance at scale `w` on balanced labels (sample k's "
            "label: its seed mod the number of classes); the budget counts guided "
            "evaluations, the NFE both network rows of each (conditional and unconditional; "
            "one at w = 1); accuracy: the dataset classifier's agreement with the labels.\n"
        )
    if floor is not None:
        md.append(
            f"Data-vs-data FID floor (two halves of the real set, {report['floor_n']} each): "
            f"{floor:.3f}\n"
        )
    md.append(markdown_table(rows))
    md.append("\n![FID vs NFE](fid_vs_nfe.png)\n")
    for label, grid in sorted(report.get("grids", {}).items()):
        md.append(f"\n**{label}**: ![{label}]({grid})\n")
    for note in report.get("notes", []):
        md.append(f"\n- {note}")
    paths["md"] = atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    return paths


def flat_metrics(report: dict[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for r in report["results"]:
        tag = row_tag(r)
        if r.get("accuracy") is not None:
            out[f"{prefix}/accuracy/{tag}"] = r["accuracy"]
        if r["fid"] is not None:
            out[f"{prefix}/fid/{tag}"] = r["fid"]
        if r.get("fid_std") is not None:
            out[f"{prefix}/fid_std/{tag}"] = r["fid_std"]
        out[f"{prefix}/nfe/{tag}"] = r["nfe"]
        out[f"{prefix}/rounds/{tag}"] = float(r["rounds"])
        out[f"{prefix}/seconds/{tag}"] = r["seconds"]
    if report.get("fid_floor") is not None:
        out[f"{prefix}/fid_floor"] = report["fid_floor"]
    return out
