"""IIA vs its base samplers on the analytic Gaussian mixture, at equal NFE.

Error = RMS distance (over held-out samples) to the reference ODE endpoint from the same
initial noise (EDM Heun, 400 steps down to sigma_min = 1e-4, then the final denoise).
Coefficients are fitted on the fitting seeds (``samplerlab.iia.fit``) and evaluated on
disjoint held-out seeds. Also reports the one-time cost of the fit as a function of M.

    PYTHONPATH=$PWD python benchmarks/bench_iia.py [--M 10] [--samples 64] [--n 256]
        [--diagnose 10]

``--diagnose STEPS`` adds an ablation of IIA-DPM-Solver++(2M) on a ``STEPS``-step grid:
median per-sample error, the fraction of samples it improves, and the end-to-end error
when the fitted correction is applied at one step only / at all steps but one.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings

import torch

import samplerlab as sl
from samplerlab.analytic import GaussianMixture
from samplerlab.iia import fit
from samplerlab.samplers import iia
from samplerlab.samplers.denoisers import CountingDenoiser

F64 = torch.float64
# (base, IIA variants, grid steps for each NFE budget)
FAMILIES = [
    ("ddim", ["iia_ddim"], {5: 5, 10: 10, 15: 15, 20: 20}),
    ("dpmpp_2m", ["iia_dpmpp_2m"], {5: 5, 10: 10, 15: 15, 20: 20}),
    ("edm_heun", ["iia_edm", "biia_edm"], {5: 3, 11: 6, 15: 8, 19: 10}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--M", type=int, default=10, help="fine sub-steps per coarse step")
    ap.add_argument("--samples", type=int, default=64, help="fitting samples")
    ap.add_argument("--r", type=int, default=1, help="past terms of the EDM forms")
    ap.add_argument("--n", type=int, default=256, help="held-out evaluation samples")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument(
        "--diagnose",
        type=int,
        nargs="*",
        default=[],
        help="grid steps at which to ablate iia_dpmpp_2m step by step",
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    # Lightning's per-fit banners (its loggers are configured when it is imported).
    for logger in (
        "lightning.pytorch",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric",
    ):
        logging.getLogger(logger).setLevel(logging.ERROR)
    torch.set_num_threads(2)

    gmm = GaussianMixture.default()
    held_out = range(1_000_000, 1_000_000 + args.n)
    kw = {"shape": (args.n, gmm.dim), "seeds": held_out, "dtype": F64}
    ref_opts = {"schedule_options": {"sigma_min": 1e-4}, **kw}
    ref = sl.sample(gmm, "edm_heun", steps=400, **ref_opts).x
    ref_check = sl.sample(gmm, "edm_heun", steps=200, **ref_opts).x

    def err(x: torch.Tensor) -> float:
        return float(((x - ref) ** 2).sum(1).mean().sqrt())

    print(f"reference self-check (200 vs 400 Heun steps): {err(ref_check):.2e}\n")
    results = []
    print(
        f"Fit: M={args.M}, {args.samples} fitting samples, r={args.r}; {args.n} held-out samples\n"
    )
    print("| NFE | sampler | error | IIA | error | ratio | fit s |")
    print("|---|---|---|---|---|---|---|")
    for base, variants, budgets in FAMILIES:
        for nfe, steps in budgets.items():
            e_base = err(sl.sample(gmm, base, steps=steps, **kw).x)
            for name in variants:
                t0 = time.perf_counter()
                c = fit(
                    gmm,
                    name,
                    steps=steps,
                    M=args.M,
                    num_samples=args.samples,
                    r=args.r,
                    progress=False,
                )
                sec = time.perf_counter() - t0
                res = sl.sample(gmm, name, steps=steps, coeffs=c, **kw)
                assert res.nfe == nfe, (name, res.nfe, nfe)
                e = err(res.x)
                results.append(
                    {
                        "nfe": nfe,
                        "base": base,
                        "iia": name,
                        "base_error": e_base,
                        "iia_error": e,
                        "fit_seconds": sec,
                    }
                )
                print(
                    f"| {nfe} | {base} | {e_base:.4f} | {name} | {e:.4f} | {e / e_base:.2f} "
                    f"| {sec:.1f} |"
                )

    print("\nIIA-DPM-Solver++(2M) vs its base at 10 NFE on each grid (same M, samples)\n")
    print("| grid | dpmpp_2m error | iia_dpmpp_2m error | ratio |")
    print("|---|---|---|---|")
    for grid in ("time_quadratic", "time_uniform", "karras", "logsnr"):
        e_base = err(sl.sample(gmm, "dpmpp_2m", steps=10, schedule=grid, **kw).x)
        c = fit(gmm, "iia_dpmpp_2m", steps=10, schedule=grid, M=args.M,
                num_samples=args.samples, progress=False)  # fmt: skip
        e = err(sl.sample(gmm, "iia_dpmpp_2m", steps=10, schedule=grid, coeffs=c, **kw).x)
        results.append({"grid": grid, "base": "dpmpp_2m", "iia": "iia_dpmpp_2m", "nfe": 10,
                        "base_error": e_base, "iia_error": e})  # fmt: skip
        print(f"| {grid} | {e_base:.4f} | {e:.4f} | {e / e_base:.2f} |")

    print("\nCost of the fit vs M (extra NFE per fitting sample; held-out error)\n")
    print("| IIA | steps | M | fit s | extra NFE / sample | total fit NFE | error | base error |")
    print("|---|---|---|---|---|---|---|---|")
    for name, steps, base in (("iia_ddim", 10, "ddim"), ("iia_edm", 6, "edm_heun")):
        e_base = err(sl.sample(gmm, base, steps=steps, **kw).x)
        for M in (1, 3, 10, 20):
            counter = CountingDenoiser(gmm)
            t0 = time.perf_counter()
            c = fit(
                counter, name, steps=steps, M=M, num_samples=args.samples, r=args.r, progress=False
            )
            sec = time.perf_counter() - t0
            e = err(sl.sample(gmm, name, steps=steps, coeffs=c, **kw).x)
            extra = c.metadata["fit_extra_nfe_per_sample"]
            total = counter.rows / args.samples
            results.append(
                {
                    "iia": name,
                    "steps": steps,
                    "M": M,
                    "fit_seconds": sec,
                    "extra_nfe": extra,
                    "error": e,
                }
            )
            print(
                f"| {name} | {steps} | {M} | {sec:.1f} | {extra} | {total:.0f} | {e:.4f} "
                f"| {e_base:.4f} |"
            )
    for steps in args.diagnose:
        results.append(diagnose(gmm, steps, args, kw, ref))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def diagnose(
    gmm: GaussianMixture, steps: int, args: argparse.Namespace, kw: dict, ref: torch.Tensor
) -> dict:
    """Where IIA-DPM-Solver++(2M) gains or loses: per-sample errors and per-step ablations."""
    name = "iia_dpmpp_2m"
    c = fit(gmm, name, steps=steps, M=args.M, num_samples=args.samples, progress=False)

    def errors(table: torch.Tensor | None) -> torch.Tensor:
        if table is None:
            x = sl.sample(gmm, "dpmpp_2m", steps=steps, **kw).x
        else:
            coeffs = iia.IIACoefficients(name, c.sigmas, table, c.mask, c.form, c.r)
            x = sl.sample(gmm, name, steps=steps, coeffs=coeffs, **kw).x
        return ((x - ref) ** 2).sum(1).sqrt()

    def rms(e: torch.Tensor) -> float:
        return float(e.square().mean().sqrt())

    e_base, e_iia = errors(None), errors(c.coeffs)
    before, after = torch.tensor(c.metadata["local_error"]).T
    improved = float((e_iia < e_base).double().mean())
    print(f"\nDiagnosis: {name} on {steps} steps (M={args.M}, {args.samples} fitting samples)\n")
    print(
        f"RMS {rms(e_base):.4f} -> {rms(e_iia):.4f}; median {float(e_base.median()):.4f} -> "
        f"{float(e_iia.median()):.4f}; samples improved: {improved:.2f}"
    )
    print(
        "\n| step | sigma_i -> sigma_i+1 | local err^2 before -> after "
        "| only this step | all but this |"
    )
    print("|---|---|---|---|---|")
    rows = []
    for i in torch.nonzero(c.mask).flatten().tolist():
        only = torch.zeros_like(c.coeffs)
        only[i] = c.coeffs[i]
        but = c.coeffs.clone()
        but[i] = 0.0
        r_only, r_but = rms(errors(only)) / rms(e_base), rms(errors(but)) / rms(e_base)
        s0, s1 = float(c.sigmas[i]), float(c.sigmas[i + 1])
        rows.append({"step": i, "only": r_only, "all_but": r_but})
        print(
            f"| {i} | {s0:.3g} -> {s1:.3g} | {float(before[i]):.3g} -> {float(after[i]):.3g} "
            f"| {r_only:.3f} | {r_but:.3f} |"
        )
    return {
        "diagnose": name,
        "steps": steps,
        "base_rms": rms(e_base),
        "iia_rms": rms(e_iia),
        "base_median": float(e_base.median()),
        "iia_median": float(e_iia.median()),
        "ablation": rows,
    }


if __name__ == "__main__":
    main()
