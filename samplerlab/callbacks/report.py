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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = sorted({r["label"] for r in rows})
    # Every registered sampler is plotted: 20 colours, and a marker and line style per
    # cycle of them, so that no two curves look alike.
    colors = plt.get_cmap("tab20").colors
    markers, styles = "osD^vPX*", ["-", "--", ":", "-."]
    for i, label in enumerate(labels):
        pts = sorted(
            (r["nfe"], r["fid"])
            for r in rows
            if r["label"] == label and r["status"] == "ok" and r["fid"] is not None
        )
        if pts:
            ax.plot(
                *zip(*pts, strict=True),
                color=colors[i % len(colors)],
                marker=markers[i % len(markers)],
                ls=styles[(i // len(colors)) % len(styles)],
                label=label,
            )
    if floor is not None:
        ax.axhline(floor, color="k", ls="--", lw=1, label="data vs data")
    ax.set_xlabel("NFE per sample")
    ax.set_ylabel("FID")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=1 + len(labels) // 16, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "| sampler | NFE budget | steps | NFE | rounds | seconds | FID | status |\n"
    head += "|---|---:|---:|---:|---:|---:|---:|---|\n"
    lines = []
    for r in rows:
        fid = "—" if r["fid"] is None else f"{r['fid']:.3f}"
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('error', '')}"
        lines.append(
            f"| {r['label']} | {r['budget']} | {r['steps']} | {r['nfe']:.2f} | {r['rounds']} "
            f"| {r['seconds']:.2f} | {fid} | {status} |"
        )
    return head + "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, report: dict[str, Any]) -> dict[str, Path]:
    out = Path(out_dir)
    # What was trained (samplerlab.trainer.runs.TrainingSummary) opens both files.
    training = report.get("training")
    if training is not None:
        report = {"training": training, **{k: v for k, v in report.items() if k != "training"}}
    rows = report["results"]
    floor = report.get("fid_floor")
    paths = {
        "json": atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n"),
        "png": plot_fid_vs_nfe(out / "fid_vs_nfe.png", rows, floor),
    }
    md = [f"# samplerlab report: {report.get('name', '')}\n"]
    if training is not None:
        line = training["line"]
        md.append(f"**WARNING: {line}.**\n" if training.get("cut_by_max_time") else f"{line}.\n")
    md.append(
        f"{report['num_samples']} samples per sampler and NFE budget, features "
        f"`{report['feature']}`, epoch {report.get('epoch')}, step {report.get('step')}, "
        f"{report.get('world_size', 1)} process(es).\n"
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
