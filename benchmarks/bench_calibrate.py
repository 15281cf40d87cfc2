"""Calibrated grids (``samplerlab.calibrate``) against diffusers' best schedulers.

On the holdout panel models (``samplerlab.analytic.panel("holdout")``: never used to choose
anything), at one NFE budget: every configuration of ``CONFIGS`` (a sampler whose grid is
calibrated, optionally with IIA coefficients fitted on the calibrated grid) and the
uncalibrated defaults, against diffusers' schedulers at their documented best settings
(UniPC order 3 with B(h) = bh2 and order 2, DPM-Solver++(2M) and (3M) with and without
Karras sigmas), from the same initial noise, in RMS error to the exact PF-ODE endpoint
(``samplerlab.bench.reference_endpoint``). Calibration and IIA are fitted once per model on
``--fit-samples`` noises (the library's fitting seeds, the same noises for both stages);
scoring uses ``--sets`` independent seed sets of ``--n`` other noises each, and the spread
over the sets is reported (ratios are computed per set, in one run).

``--models panel`` runs the same on the choice panel: the configuration quoted as "the
best calibrated configuration" on the holdout is the one with the lowest mean log error
ratio to the best diffusers scheduler over the panel models, never chosen on the holdout
itself.

Writes ``benchmarks/results/calibrate{,_panel}.md`` and ``.json`` atomically. Usage::

    PYTHONPATH=. python benchmarks/bench_calibrate.py                 # holdout, 10 NFE
    PYTHONPATH=. python benchmarks/bench_calibrate.py --models panel  # the choice panel
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import samplerlab as sl
from samplerlab import calibrate, iia
from samplerlab.analytic import GaussianMixture, panel
from samplerlab.bench import reference_endpoint
from samplerlab.fileio import atomic_write_text
from samplerlab.samplers.noise import PerSampleNoise
from samplerlab.samplers.registry import SAMPLERS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gmm import eps_model

RESULTS = Path(__file__).resolve().parent / "results"
SCORE_SEED = 50_000_000  # scoring set s uses seeds SCORE_SEED + s * 10**6 + k (k < n)

# Calibrated configurations: (label, sampler calibrated, IIA sampler fitted on its grid).
CALIBRATED = [
    ("cal dpmpp_2m", "dpmpp_2m", None),
    ("cal ddim", "ddim", None),
    ("cal dpm_solver_2", "dpm_solver_2", None),
    ("cal dpm_solver_3", "dpm_solver_3", None),
    ("cal edm_heun", "edm_heun", None),
    ("cal ddim + iia_ddim", "ddim", "iia_ddim"),
    ("cal dpmpp_2m + iia_dpmpp_2m", "dpmpp_2m", "iia_dpmpp_2m"),
    ("cal edm_heun + iia_edm", "edm_heun", "iia_edm"),
    # The higher-order multistep contenders (IIA has no form for them).
    ("cal unipc", "unipc", None),
    ("cal dpmpp_3m", "dpmpp_3m", None),
    ("cal deis", "deis", None),
    ("cal ipndm", "ipndm", None),
]
DEFAULTS = [
    "dpmpp_2m", "ddim", "dpm_solver_3", "iia_ddim", "iia_dpmpp_2m", "unipc", "dpmpp_3m", "deis",
    "ipndm",
]  # fmt: skip


# diffusers at its documented settings: UniPC (orders 2 and 3, B(h) = bh2 and bh1) and
# DPM-Solver++ (2M and 3M), each with its default sigmas, Karras sigmas (and for DPM-Solver++
# Lu's uniform log-SNR steps), on the "linspace" (default) and "trailing" timestep spacings;
# final_sigmas_type="zero" (bh1: "sigma_min") and lower_order_final (defaults).
# "diffusers' best" is the best of all of these on each scoring set.
def _diffusers_settings() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for spacing in ("linspace", "trailing"):
        for sig, extra in (("", {}), (" karras", {"use_karras_sigmas": True})):
            for order in (3, 2):
                for bh in ("bh2", "bh1"):
                    kw = {"solver_order": order, "solver_type": bh, "timestep_spacing": spacing}
                    if bh == "bh1":
                        # bh1's B(h) = h is infinite on a final step to sigma = 0 (NaN output):
                        # it stops at the table's sigma_min, as diffusers allows.
                        kw["final_sigmas_type"] = "sigma_min"
                    out.append(
                        (
                            f"diffusers UniPC (order {order}, {bh}{sig}, {spacing})",
                            "unipc",
                            {**kw, **extra},
                        )
                    )
        for sig, extra in (
            ("", {}),
            (" karras", {"use_karras_sigmas": True}),
            (" lu", {"use_lu_lambdas": True}),
        ):
            for order in (3, 2):
                kw = {"solver_order": order, "timestep_spacing": spacing}
                out.append(
                    (f"diffusers DPM-Solver++({order}M{sig}, {spacing})", "dpm", {**kw, **extra})
                )
    return out


DIFFUSERS = _diffusers_settings()
# Models without a VP table (EDM): diffusers' EDM DPM-Solver++ (2M / 3M) on its Karras and
# exponential sigma schedules (UniPC and the VP schedulers need a beta table).
DIFFUSERS_EDM = [
    (
        f"diffusers EDM DPM-Solver++({order}M, {sched})",
        {"solver_order": order, "sigma_schedule": sched},
    )
    for sched in ("karras", "exponential")
    for order in (3, 2)
]


def diffusers_scheduler(kind: str, model: GaussianMixture, **kw: Any) -> Any:
    """A diffusers multistep scheduler on ``model``'s own float64 ``alphas_cumprod`` table."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    ac = model.vp.alphas_cumprod
    betas = 1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
    cls = {"unipc": UniPCMultistepScheduler, "dpm": DPMSolverMultistepScheduler}[kind]
    sched = cls(num_train_timesteps=ac.numel(), trained_betas=betas.numpy(), **kw)
    sched.alphas_cumprod = ac.clone()
    sched.alpha_t = ac.sqrt()
    sched.sigma_t = (1 - ac).sqrt()
    sched.lambda_t = sched.alpha_t.log() - sched.sigma_t.log()
    sched.sigmas = ((1 - ac) / ac).sqrt()
    return sched


def run_diffusers(sched: Any, eps: Any, z: Tensor, nfe: int) -> tuple[Tensor, int]:
    """diffusers' loop from ``x_vp = z`` (its output at t = 0 is in data space)."""
    sched.set_timesteps(nfe)
    x, calls = z * sched.init_noise_sigma, 0
    for t in sched.timesteps:
        x = sched.step(eps(sched.scale_model_input(x, t), t), t, x).prev_sample
        calls += 1
    return x.double(), calls


def run_diffusers_edm(model: GaussianMixture, kw: dict[str, Any], z: Tensor, nfe: int) -> Tensor:
    """diffusers' ``EDMDPMSolverMultistepScheduler`` loop on the analytic EDM denoiser: the
    network output ``F`` is the one its preconditioning turns into ``D`` (epsilon
    parameterisation), and the start is our ``x = sigma_max z``."""
    from diffusers import EDMDPMSolverMultistepScheduler

    sched = EDMDPMSolverMultistepScheduler(
        sigma_min=model.sigma_min, sigma_max=model.sigma_max, **kw
    )
    sched.set_timesteps(nfe)
    sd = sched.config.sigma_data
    x = z * float(sched.sigmas[0])
    for i, t in enumerate(sched.timesteps):
        sched.scale_model_input(x, t)  # (sets the step index)
        sigma = float(sched.sigmas[i])
        d = model(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2) ** 0.5
        x = sched.step((d - c_skip * x) / c_out, t, x).prev_sample
    return x.double()


def fit_configs(
    model: GaussianMixture, nfe: int, args: argparse.Namespace
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Calibrations per sampler and IIA coefficients per configuration, with their costs."""
    cals: dict[str, dict[str, Any]] = {}
    fitted: dict[str, dict[str, Any]] = {}
    for label, name, iia_name in CALIBRATED:
        spec = SAMPLERS[name]
        steps = spec.steps_for_nfe(nfe)
        if name not in cals:
            start = time.perf_counter()
            c = calibrate.fit(
                model,
                name,
                steps=steps,
                num_samples=args.fit_samples,
                iterations=args.iterations,
                teacher_sigma_end=3e-5,
                progress=False,
            )
            cals[name] = {
                "cal": c,
                "seconds": time.perf_counter() - start,
                "nfe": c.metadata["fit_nfe_per_sample"],
            }
        entry = {
            "sampler": name,
            "steps": steps,
            "calibration": cals[name]["cal"],
            "coeffs": None,
            "fit_seconds": cals[name]["seconds"],
            "fit_nfe_per_sample": cals[name]["nfe"],
        }
        if iia_name is not None:
            start = time.perf_counter()
            co = iia.fit(
                model,
                iia_name,
                steps=steps,
                M=args.M,
                num_samples=args.fit_samples,
                calibration=cals[name]["cal"],
                progress=False,
            )
            entry.update(sampler=iia_name, coeffs=co)
            entry["fit_seconds"] += time.perf_counter() - start
            entry["fit_nfe_per_sample"] += (
                co.metadata["fit_extra_nfe_per_sample"] + co.metadata["nfe"]
            )
        fitted[label] = entry
    for name in ("iia_ddim", "iia_dpmpp_2m"):
        steps = SAMPLERS[name].steps_for_nfe(nfe)
        start = time.perf_counter()
        co = iia.fit(
            model, name, steps=steps, M=args.M, num_samples=args.fit_samples, progress=False
        )
        fitted[name] = {
            "sampler": name,
            "steps": steps,
            "calibration": None,
            "coeffs": co,
            "fit_seconds": time.perf_counter() - start,
            "fit_nfe_per_sample": co.metadata["fit_extra_nfe_per_sample"] + co.metadata["nfe"],
        }
    return fitted, cals


def score_set(
    model: GaussianMixture, nfe: int, s: int, n: int, fitted: dict[str, Any]
) -> dict[str, float]:
    """RMS error to the exact ODE endpoint of every method on scoring set ``s``."""
    seeds = range(SCORE_SEED + s * 10**6, SCORE_SEED + s * 10**6 + n)
    z = PerSampleNoise(seeds).randn((n, model.dim), device="cpu", dtype=torch.float64)
    s0 = model.sigma_max
    ref, _ = reference_endpoint(model, z * math.sqrt(s0**2 + model.prior_std**2), s0, 400)
    rms = lambda x: float((x.double() - ref).pow(2).mean().sqrt())
    out: dict[str, float] = {}
    for name in DEFAULTS:
        if name in fitted:
            continue
        steps = SAMPLERS[name].steps_for_nfe(nfe)
        out[name] = rms(
            sl.sample(model, name, steps=steps, shape=z.shape, noise=z, dtype=torch.float64).x
        )
    for label, f in fitted.items():
        kw = {"coeffs": f["coeffs"]} if f["coeffs"] is not None else {}
        x = sl.sample(
            model,
            f["sampler"],
            steps=f["steps"],
            shape=z.shape,
            noise=z,
            dtype=torch.float64,
            calibration=f["calibration"],
            **kw,
        ).x
        out[label] = rms(x)
    if model.vp is None:
        for label, kw in DIFFUSERS_EDM:
            out[label] = rms(run_diffusers_edm(model, kw, z.clone(), nfe))
    else:
        eps = eps_model(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for label, kind, kw in DIFFUSERS:
                try:
                    x, calls = run_diffusers(
                        diffusers_scheduler(kind, model, **kw), eps, z.clone(), nfe
                    )
                except (AssertionError, IndexError):  # diffusers fails on some settings
                    out[label] = math.nan
                    continue
                assert calls == nfe
                out[label] = rms(x)
    return out


def summarise(sets: list[dict[str, float]], fitted: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method: mean / min / max RMS over the sets, and the ratio to the best diffusers
    scheduler of each set (mean / min / max)."""
    out: dict[str, dict[str, Any]] = {}
    dlabels = [k for k in sets[0] if k.startswith("diffusers")]
    finite = lambda s: [s[k] for k in dlabels if math.isfinite(s[k])]
    best_d = [min(finite(s)) for s in sets] if dlabels else None
    for key in sets[0]:
        vals = [s[key] for s in sets]
        row: dict[str, Any] = {
            "rms": vals,
            "mean": sum(vals) / len(vals),
            "min": min(vals),
            "max": max(vals),
        }
        if best_d is not None:
            ratios = [v / b for v, b in zip(vals, best_d, strict=True)]
            row.update(
                ratio=ratios,
                ratio_mean=sum(ratios) / len(ratios),
                ratio_min=min(ratios),
                ratio_max=max(ratios),
            )
        if key in fitted:
            row.update(
                fit_seconds=fitted[key]["fit_seconds"],
                fit_nfe_per_sample=fitted[key]["fit_nfe_per_sample"],
            )
        out[key] = row
    return out


def run_model(key: str, model: GaussianMixture, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    fitted, cals = fit_configs(model, args.nfe, args)
    sets = [score_set(model, args.nfe, s, args.n, fitted) for s in range(args.sets)]
    rows = summarise(sets, fitted)
    grids = {
        name: {
            "calibrated": c["cal"].sigmas.tolist(),
            "default": c["cal"].metadata["default_sigmas"],
            "fit_loss_default": c["cal"].metadata["default_loss"],
            "fit_loss": c["cal"].metadata["loss"],
        }
        for name, c in cals.items()
    }
    return {
        "model": key,
        "vp": model.vp is not None,
        "dim": model.dim,
        "rows": rows,
        "grids": grids,
    }


def table(result: dict[str, Any], chosen: str | None, keep_diffusers: int = 6) -> str:
    """Every samplerlab row and the ``keep_diffusers`` best diffusers settings (the JSON
    has them all)."""
    rows = result["rows"]
    has_ratio = any("ratio_mean" in r for r in rows.values())
    head = "| method | RMS to ODE endpoint (mean, min-max over sets) |"
    head += " ratio to diffusers' best (mean, min-max) |" if has_ratio else ""
    head += " fit cost (NFE per fitting sample, seconds) |"
    lines = [head, "|---|---:|" + ("---:|" if has_ratio else "") + "---:|"]
    order = sorted(rows.items(), key=lambda kv: (not math.isfinite(kv[1]["mean"]), kv[1]["mean"]))
    shown = [kv for kv in order if not kv[0].startswith("diffusers")]
    shown += [kv for kv in order if kv[0].startswith("diffusers")][:keep_diffusers]
    for k, r in shown:
        name = f"**{k}** (chosen on the panel)" if k == chosen else k
        line = f"| {name} | {r['mean']:.4f} ({r['min']:.4f}-{r['max']:.4f}) |"
        if has_ratio:
            line += f" {r['ratio_mean']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |"
        cost = (
            f"{r['fit_nfe_per_sample']:.0f}, {r['fit_seconds']:.1f} s" if "fit_seconds" in r else ""
        )
        lines.append(line + f" {cost} |")
    return "\n".join(lines)


def choose(panel_json: Path) -> str | None:
    """The calibrated configuration with the lowest mean log ratio to diffusers' best over the
    panel models (from a saved ``--models panel`` run)."""
    if not panel_json.is_file():
        return None
    data = json.loads(panel_json.read_text())
    scores: dict[str, list[float]] = {}
    for res in data["results"]:
        for k, r in res["rows"].items():
            if k.startswith("cal ") and "ratio_mean" in r:
                scores.setdefault(k, []).append(math.log(r["ratio_mean"]))
    n = max((len(v) for v in scores.values()), default=0)
    full = {k: sum(v) / len(v) for k, v in scores.items() if len(v) == n}
    return min(full, key=full.get) if full else None


def digits(args: argparse.Namespace) -> int:
    """``--digits``: FID at ``--nfe`` on the trained digits models, by
    ``bench_digits_calibrate.py`` (every deterministic contender, calibrated twins and the
    teacher's FID, per seed set; trains missing models for their fixed epoch count)."""
    import bench_digits_calibrate

    argv = [
        "--models", args.digits_models, "--work", args.work, "--nfe", str(args.nfe),
        "--sets", str(args.sets), "--fit-samples", str(args.fit_samples),
        "--iterations", str(args.iterations), "--M", str(args.M), "--train",
    ]  # fmt: skip
    if args.out:
        argv += ["--out", str(Path(args.out).with_suffix(""))]
    return bench_digits_calibrate.main(argv)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="holdout", help="holdout | panel | comma-separated names")
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--fit-samples", type=int, default=256)
    p.add_argument("--iterations", type=int, default=30, help="calibration LM iterations")
    p.add_argument("--M", type=int, default=10, help="IIA fine sub-steps")
    p.add_argument("--n", type=int, default=4096, help="scoring noises per set")
    p.add_argument("--sets", type=int, default=4, help="independent scoring seed sets")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--out", default=None, help="markdown output (default results/calibrate[_panel].md)"
    )
    p.add_argument("--digits", action="store_true", help="trained digits models, FID")
    p.add_argument("--digits-models", default="edm,vp", help="edm,vp (with --digits)")
    p.add_argument("--work", default="/tmp/sl_digits", help="digits checkpoints and reports")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.digits:
        return digits(args)
    which = args.models if args.models in ("holdout", "panel") else args.models.split(",")
    models = panel(which)
    tag = "_panel" if args.models == "panel" else ""
    out = Path(args.out) if args.out else RESULTS / f"calibrate{tag}.md"
    chosen = choose(RESULTS / "calibrate_panel.json") if args.models != "panel" else None
    results = []
    start = time.perf_counter()
    for key, model in models.items():
        t = time.perf_counter()
        results.append(run_model(key, model, args))
        print(f"{key}: {time.perf_counter() - t:.0f} s", flush=True)
    meta = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python benchmarks/bench_calibrate.py " + " ".join(argv or sys.argv[1:]),
        "nfe": args.nfe,
        "fit_samples": args.fit_samples,
        "iterations": args.iterations,
        "M": args.M,
        "n": args.n,
        "sets": args.sets,
        "threads": args.threads,
        "seconds": time.perf_counter() - start,
        "chosen": chosen,
        "reference": "samplerlab.bench.reference_endpoint (DPM-Solver-3, 400 log-SNR steps "
        "to 3e-5, then 0)",
        "library_version": sl.__version__,
    }
    md = [
        f"# Calibrated grids vs diffusers at {args.nfe} NFE ({args.models})",
        "",
        f"`{meta['command']}` ({meta['created']}, {meta['seconds']:.0f} s, "
        f"{args.threads} thread(s)). "
        f"Fitting: {args.fit_samples} noises (the library's fitting seeds; calibration and IIA "
        f"share them), {args.iterations} Levenberg-Marquardt iterations, IIA M = {args.M}. "
        f"Scoring: {args.sets} independent sets of {args.n} other noises; RMS error to the exact "
        "PF-ODE endpoint from the same noise; ratios per set to the best diffusers scheduler "
        "of that set.",
        "",
    ]
    if args.models != "panel":
        md += [
            "Configuration chosen on the panel (`--models panel`): "
            f"{chosen or 'none (no panel run saved)'}.",
            "",
        ]
    for res in results:
        kind = "VP table" if res["vp"] else "EDM, no VP table"
        md += [
            f"## {res['model']} (dim {res['dim']}, {kind})",
            "",
            table(res, chosen),
            "",
        ]
    atomic_write_text(
        out.with_suffix(".json"), json.dumps({"meta": meta, "results": results}, indent=1)
    )
    atomic_write_text(out, "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
