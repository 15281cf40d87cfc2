"""The reports of ``samplerlab bench`` (:func:`samplerlab.bench.run_bench` rows): a markdown
table, the notes on the noise floor and the reference, and ``bench.json`` / ``bench.md``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .bench import DEFAULT_FLOOR_REPEATS
from .fileio import atomic_write_text


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _pm(v: Any, std: Any) -> str:
    return _fmt(v, ".2e") + ("" if v is None or std is None else f" ± {std:.1e}")


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The markdown table of :func:`run_bench` rows (one line per sampler x budget)."""
    head = (
        "| sampler | NFE budget | steps | NFE | rounds | seconds | SW2 to exact | "
        "RMS to ODE endpoint (± spread over seed sets) | median error (± spread) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        label = r["sampler"]
        extras = [f"{k}={v}" for k, v in r.get("options", {}).items()]
        if r.get("schedule", "default") != "default":
            extras.insert(0, r["schedule"])
        if extras:
            label += f" ({', '.join(extras)})"
        if "error" in r:
            lines.append(
                f"| {label} | {r['budget']} | {r['steps']} | error: "
                f"{r['error'].replace('|', '/')} | | | | | |"
            )
            continue
        # A budget below one step's NFE runs one step (samplerlab.evaluation.plan).
        over = " (over budget)" if r.get("expected_nfe", 0) > r["budget"] else ""
        lines.append(
            f"| {label} | {r['budget']} | {r['steps']} | {_fmt(r['nfe'], 'g')}{over} | "
            f"{r['rounds']} | {_fmt(r['seconds'], '.2f')} | {_fmt(r['sw'], '.4f')} | "
            f"{_pm(r['rms'], r.get('rms_std'))} | {_pm(r['err_median'], r.get('err_median_std'))} |"
        )
    return "\n".join(lines)


def format_notes(meta: Mapping[str, Any]) -> str:
    floor = meta.get("sw_floor")
    residual = meta.get("ref_residual")
    parts = [
        f"Model `{meta.get('model')}` (dim {meta.get('dim')}), {meta.get('n_samples')} samples "
        f"per sampler from seeds {meta.get('seed')}.., {meta.get('dtype')}, {meta.get('device')}.",
        f"SW2 floor (independent exact samples of the same size vs the exact sample, mean ± std "
        f"over {meta.get('floor_repeats', 1)}): {_fmt(floor, '.4f')} ± "
        f"{_fmt(meta.get('sw_floor_std'), '.4f')}; SW2 differences within this spread are "
        "sampling noise.",
    ]
    if meta.get("seed_sets"):
        k = meta["seed_sets"]
        parts.append(
            f"Pathwise errors: value over all samples ± the standard deviation over {k} "
            f"independent seed sets of {int(meta.get('n_samples') or 0) // k} samples (disjoint "
            "seed blocks); differences within it are noise."
        )
    if meta.get("reference") == "closed form":
        parts.append("ODE endpoints: closed form.")
    else:
        parts.append(
            f"ODE endpoints: {meta.get('reference')}; residual between this reference and the "
            f"same solve at half the steps (RMS): {_fmt(residual, '.1e')}."
        )
    return " ".join(parts)


def bench_meta(
    model: Any,
    model_name: str,
    rows: Sequence[Mapping[str, Any]],
    reference_steps: int = 400,
    floor_repeats: int = DEFAULT_FLOOR_REPEATS,
    **extra: Any,
) -> dict[str, Any]:
    """Run-level facts (floor, reference and its residual) gathered from the rows."""
    residuals = [r["ref_residual"] for r in rows if r.get("ref_residual") is not None]
    floors = [r["sw_floor"] for r in rows if r.get("sw_floor") is not None]
    exact = hasattr(model, "ode_solution")
    return {
        "model": model_name,
        "dim": int(getattr(model, "dim", 0)),
        "sw_floor": floors[0] if floors else None,
        "floor_repeats": floor_repeats,
        "sw_floor_std": next((r["sw_floor_std"] for r in rows if "sw_floor_std" in r), None),
        "reference": "closed form"
        if exact
        else f"DPM-Solver-3, {reference_steps} log-SNR steps to sigma 3e-5 then 0, float64",
        "ref_residual": max(residuals) if residuals else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


def write_report(
    rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike[str], meta: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    json_path, md_path = out / "bench.json", out / "bench.md"
    atomic_write_text(json_path, json.dumps({"meta": meta, "rows": list(rows)}, indent=2) + "\n")
    atomic_write_text(md_path, format_table(rows) + "\n\n" + format_notes(meta) + "\n")
    return json_path, md_path
