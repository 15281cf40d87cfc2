"""Calibrated grids on the trained digits models: FID at one NFE budget against every
deterministic contender, and against the teacher the calibration distils.

For each trained digits model (the embedded-default EDM model and the VP eps model of
``bench_digits_samplers.MODELS``, trained for a fixed epoch count, no wall-clock cap) and
each of ``--sets`` seed sets (``seedsets.stream_seeds``: the initial noise of set ``s`` is
stream ``"init"`` of set ``s``; the deterministic samplers draw nothing else):

* every deterministic contender's FID at ``--nfe`` with its default grid and options
  (``PLAIN``; IIA samplers with coefficients fitted on their default grid);
* the teacher: the fine solve ``samplerlab.calibrate.fit`` distils (DPM-Solver-3 on
  ``--teacher-steps`` log-SNR steps to the model's sigma_min, then 0) from the same noise;
  no grid distilled from it can beat its FID except by chance;
* calibrated twins (``<sampler>+cal``: ``samplerlab.calibrate.fit`` on ``--fit-samples``
  fitting noises, the library's fitting seeds ``--fit-seed``; ``iia_*+cal``: IIA fitted on
  the calibrated grid from the same noises), and the variants of ``VARIANTS``;

with the RMS distance to the teacher endpoint from the same noise and the ratio of the
samples' standard deviation to the teacher's (a calibration that lowers the RMS by
shrinking the samples shows it here). FID: the shipped digits-classifier features, 500
samples against all 1797 digits (the fixed reference statistics of ``samplerlab
evaluate``). Results are cached per (model, set, entry) in ``--work`` (reruns resume).

    PYTHONPATH=. nice -n 10 python benchmarks/bench_digits_calibrate.py --models edm \\
        --work /tmp/t11 --out benchmarks/results/calibrate_digits
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seedsets import spread, stream_seeds

import samplerlab as sl
from samplerlab import calibrate, iia
from samplerlab.calibrate.grid import LIMIT, GridParam

try:  # the FID parts live in samplerlab.evaluation since the issue-10 layout
    from samplerlab.evaluation.features import (
        ClassifierFeatures,
        load_classifier,
        shipped_classifier,
    )
    from samplerlab.evaluation.fid import fid_from_stats, stats_of
except ImportError:
    from samplerlab.callbacks.features import (
        ClassifierFeatures,
        load_classifier,
        shipped_classifier,
    )
    from samplerlab.callbacks.fid import fid_from_stats, stats_of
from samplerlab.fileio import atomic_write_text
from samplerlab.samplers.core import describe
from samplerlab.samplers.dpm_solver import sample_dpm_solver
from samplerlab.samplers.noise import PerSampleNoise
from samplerlab.samplers.registry import SAMPLERS
from samplerlab.samplers.schedules import logsnr

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN = {"edm": [], "vp": ["model.parameterization=eps"]}

# Deterministic contenders with their defaults (IIA: coefficients fitted on the default grid).
PLAIN = [
    "euler",
    "ddim",
    "dpm_solver_2",
    "dpm_solver_3",
    "dpmpp_2m",
    "dpmpp_3m",
    "unipc",
    "deis",
    "ipndm",
    "lms",
    "dpm_2",
    "edm_heun",
    "iia_ddim",
    "iia_dpmpp_2m",
    "iia_edm",
]
# Calibrated twins: label -> (sampler whose grid is calibrated, IIA sampler on that grid).
CALIBRATED = {
    "dpm_solver_2+cal": ("dpm_solver_2", None),
    "dpm_solver_3+cal": ("dpm_solver_3", None),
    "unipc+cal": ("unipc", None),
    "dpmpp_3m+cal": ("dpmpp_3m", None),
    "dpmpp_2m+cal": ("dpmpp_2m", None),
    "deis+cal": ("deis", None),
    "ipndm+cal": ("ipndm", None),
    "ddim+cal": ("ddim", None),
    "iia_ddim+cal": ("ddim", "iia_ddim"),
    "iia_dpmpp_2m+cal": ("dpmpp_2m", "iia_dpmpp_2m"),
    "edm_heun+cal": ("edm_heun", None),
    "iia_edm+cal": ("edm_heun", "iia_edm"),
}
# Variants tried to make calibration help FID (chosen on the EDM model's choice sets, see
# --choice-sets; confirmed on the VP model): label -> (sampler, IIA sampler, fit variant).
# "n256": 256 fitting noises; "fixlo": the last positive point of the grid pinned at the
# model's sigma_min (only the interior points move: the fit cannot trade the final
# denoising jump's blur for a lower squared error), starting from the default grid.
VARIANTS = {
    f"{base}+cal_{v}": (base, None, v)
    for base in ("unipc", "dpmpp_2m", "dpmpp_3m", "dpm_solver_3", "ipndm", "deis")
    for v in ("n256", "fixlo")
}


class FixedEndParam(GridParam):
    """:class:`GridParam` with ``b`` pinned at ``-LIMIT``: ``sigma_{N-1}`` = the model's
    sigma_min (to 3e-7 relative), the interior points free (a prototype of a library option)."""

    def sigmas(self, theta: Tensor) -> Tensor:
        th = torch.as_tensor(theta, dtype=torch.float64).clone()
        th[0] = -LIMIT
        return super().sigmas(th)


def entry_spec(label: str) -> tuple[str, str | None, str]:
    if label in CALIBRATED:
        return (*CALIBRATED[label], "")
    return VARIANTS[label]


class Bench:
    """One model: its denoiser, the FID features and reference statistics, cached rows."""

    def __init__(self, model: str, args: argparse.Namespace) -> None:
        try:
            from samplerlab.trainer.checkpoints import load_denoiser
        except ImportError:
            from samplerlab.trainer.module import load_denoiser

        self.model, self.args = model, args
        self.work = Path(args.work)
        ckpt = self.work / model / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise SystemExit(f"{ckpt}: train it first (see --train)")
        self.ckpt = ckpt
        self.den = load_denoiser(ckpt)
        self.info = describe(self.den)
        self.shape = tuple(self.info.data_shape)
        self.features = ClassifierFeatures(load_classifier(shipped_classifier("digits")))
        from samplerlab.trainer.data import digits_tensor

        real, _ = digits_tensor(8)
        f = self.features(real)
        self.real = stats_of(f)
        self.floor = fid_from_stats(stats_of(f[0::2]), stats_of(f[1::2]))
        tag = getattr(args, "cache_tag", "")
        self.cache_path = self.work / f"{model}_rows{'_' + tag if tag else ''}.json"
        self.rows: dict[str, Any] = (
            json.loads(self.cache_path.read_text()) if self.cache_path.is_file() else {}
        )
        self.fits: dict[str, Any] = {}
        self._teacher: dict[int, Tensor] = {}

    # --- noise, teacher, FID --------------------------------------------------------------

    def noise(self, s: int) -> Tensor:
        seeds = stream_seeds(s, "init", self.args.n, base=self.args.seed_base)
        return PerSampleNoise(seeds).randn(
            (self.args.n, *self.shape), device="cpu", dtype=torch.float32
        )

    def teacher(self, s: int, steps: int | None = None) -> Tensor:
        """The calibration's teacher endpoint from set ``s``'s noise (cached on disk)."""
        steps = steps or self.args.teacher_steps
        path = self.work / f"{self.model}_teacher_{steps}_set{s}_n{self.args.n}.pt"
        if steps == self.args.teacher_steps and s in self._teacher:
            return self._teacher[s]
        if path.is_file():
            x0 = torch.load(path, weights_only=True)
        else:
            s0, lo = self.info.sigma_max, self.info.sigma_min
            z = self.noise(s).double()
            x = z * math.sqrt(s0**2 + self.info.prior_std**2)
            grid = logsnr(steps + 1, lo, s0)
            with torch.no_grad():
                x0 = sample_dpm_solver(self.den, x, grid, orders=[3] * steps + [1]).float()
            torch.save(x0, path)
        if steps == self.args.teacher_steps:
            self._teacher[s] = x0
        return x0

    def score(self, x: Tensor, s: int, nfe: float, seconds: float) -> dict[str, Any]:
        ref = self.teacher(s)
        finite = bool(torch.isfinite(x).all())
        row = {
            "nfe": nfe,
            "seconds": seconds,
            "fid": fid_from_stats(self.real, stats_of(self.features(x))) if finite else None,
            "rms_teacher": float((x.double() - ref.double()).pow(2).mean().sqrt()),
            "std_ratio": float(x.double().std() / ref.double().std()),
        }
        return row

    def save(self) -> None:
        # Merge with what is on disk: several processes may fill one model's cache.
        disk = json.loads(self.cache_path.read_text()) if self.cache_path.is_file() else {}
        for s, entries in self.rows.items():
            disk.setdefault(s, {}).update(entries)
        self.rows = disk
        atomic_write_text(self.cache_path, json.dumps(self.rows, indent=1))

    def done(self, s: int, label: str) -> bool:
        return label in self.rows.get(str(s), {})

    def put(self, s: int, label: str, row: dict[str, Any]) -> None:
        self.rows.setdefault(str(s), {})[label] = row
        self.save()
        fid = row["fid"]
        print(
            f"[{self.model} set {s}] {label}: FID {fid if fid is None else round(fid, 3)}, "
            f"RMS to teacher {row['rms_teacher']:.4f}, std ratio {row['std_ratio']:.3f}, "
            f"{row['seconds']:.0f} s",
            flush=True,
        )

    # --- fits ------------------------------------------------------------------------------

    def steps(self, name: str) -> int:
        return SAMPLERS[name].steps_for_nfe(self.args.nfe)

    def calibration(self, base: str, variant: str = "") -> Any:
        """The calibration of ``base`` (fitted once, saved in ``--work``)."""
        a = self.args
        steps = self.steps(base)
        n = 256 if variant == "n256" else a.fit_samples
        tag = f"_{variant}" if variant else ""
        key = f"cal_{base}{tag}"
        if key in self.fits:
            return self.fits[key]
        path = self.work / f"{self.model}_{key}_{steps}_n{n}_s{a.fit_seed}.safetensors"
        if path.is_file():
            c = calibrate.load(path, denoiser=self.den)
        else:
            import samplerlab.calibrate.module as cm

            t = time.perf_counter()
            if variant == "fixlo":
                cm.GridParam = FixedEndParam  # prototype: see FixedEndParam
            try:
                c = calibrate.fit(
                    self.den,
                    base,
                    steps=steps,
                    num_samples=n,
                    iterations=a.iterations,
                    seed=a.fit_seed,
                    teacher_steps=a.teacher_steps,
                    candidates=variant != "fixlo",
                    progress=False,
                )
            finally:
                cm.GridParam = GridParam
            calibrate.save(c, path)
            m = c.metadata
            print(
                f"[{self.model}] calibrated {base}{tag}: fit loss {m['default_loss']:.5f} -> "
                f"{m['loss']:.5f}, {time.perf_counter() - t:.0f} s",
                flush=True,
            )
        self.fits[key] = c
        return c

    def coeffs(self, name: str, cal: Any = None, tag: str = "") -> Any:
        a = self.args
        steps = self.steps(name)
        key = f"{name}{tag}{'_cal' if cal is not None else ''}"
        if key in self.fits:
            return self.fits[key]
        path = self.work / f"{self.model}_{key}_{steps}_n{a.fit_samples}_s{a.fit_seed}.safetensors"
        if path.is_file():
            co = iia.load(path, denoiser=self.den)
        else:
            t = time.perf_counter()
            co = iia.fit(
                self.den,
                name,
                steps=steps,
                M=a.M,
                num_samples=a.fit_samples,
                seed=a.fit_seed,
                calibration=cal,
                progress=False,
            )
            iia.save(co, path)
            print(f"[{self.model}] IIA {key}: {time.perf_counter() - t:.0f} s", flush=True)
        self.fits[key] = co
        return co

    # --- entries ---------------------------------------------------------------------------

    def run_entry(self, s: int, label: str, name: str, **kw: Any) -> None:
        if self.done(s, label):
            return
        z = self.noise(s)
        t = time.perf_counter()
        with torch.no_grad():
            res = sl.sample(
                self.den,
                name,
                steps=self.steps(name),
                shape=z.shape,
                noise=z,
                dtype=torch.float32,
                **kw,
            )
        self.put(s, label, self.score(res.x, s, float(res.nfe), time.perf_counter() - t))

    def plain(self, s: int, name: str) -> None:
        if self.done(s, name):
            return
        kw = {"coeffs": self.coeffs(name)} if name.startswith("iia_") else {}
        self.run_entry(s, name, name, **kw)

    def calibrated(self, s: int, label: str) -> None:
        if self.done(s, label):
            return
        base, iia_name, variant = entry_spec(label)
        cal = self.calibration(base, variant)
        kw: dict[str, Any] = {"calibration": cal}
        if iia_name is not None:
            kw["coeffs"] = self.coeffs(iia_name, cal)
        self.run_entry(s, label, iia_name or base, **kw)

    def teacher_row(self, s: int, steps: int | None = None) -> None:
        steps = steps or self.args.teacher_steps
        label = f"teacher ({3 * steps + 1} NFE)"
        if self.done(s, label):
            return
        t = time.perf_counter()
        x = self.teacher(s, steps)
        self.put(s, label, self.score(x, s, 3 * steps + 1, time.perf_counter() - t))


def summarise(rows: dict[str, Any]) -> dict[str, Any]:
    """Per entry: FID over the sets; per set: best plain / best calibrated / teacher and the
    ratios, with their spread."""
    sets = sorted(rows, key=int)
    labels = list(dict.fromkeys(k for s in sets for k in rows[s]))
    per_entry = {}
    for k in labels:
        vals = [rows[s][k] for s in sets if k in rows[s]]
        fids = [v["fid"] for v in vals if v["fid"] is not None]
        per_entry[k] = {
            "sets": len(vals),
            "fid": [v["fid"] for v in vals],
            "fid_spread": spread(fids) if fids else None,
            "rms_teacher": spread([v["rms_teacher"] for v in vals]),
            "std_ratio": spread([v["std_ratio"] for v in vals]),
            "nfe": vals[0]["nfe"],
        }
    # Complete sets only: every entry present on every set counted.
    full = [k for k in labels if per_entry[k]["sets"] == len(sets)]
    per_set = []
    for s in sets:
        r = rows[s]
        plain = {k: r[k]["fid"] for k in full if "+cal" not in k and not k.startswith("teacher")}
        # Variants (VARIANTS) were tried on choice sets, not declared in advance: shown
        # per entry, not counted as "the best calibrated".
        cal = {k: r[k]["fid"] for k in full if "+cal" in k and k not in VARIANTS}
        teach = {k: r[k]["fid"] for k in full if k.startswith("teacher")}
        plain = {k: v for k, v in plain.items() if v is not None}
        cal = {k: v for k, v in cal.items() if v is not None}
        if not plain:
            continue
        bp = min(plain, key=plain.get)
        entry = {"set": int(s), "best_plain": bp, "best_plain_fid": plain[bp]}
        if cal:
            bc = min(cal, key=cal.get)
            entry.update(best_cal=bc, best_cal_fid=cal[bc], ratio=cal[bc] / plain[bp])
        for k, v in teach.items():
            entry.setdefault("teacher", {})[k] = {"fid": v, "ratio": v / plain[bp]}
        per_set.append(entry)
    return {"entries": per_entry, "per_set": per_set, "complete_entries": full}


def fmt(sp: dict[str, float] | None, d: int = 2) -> str:
    if sp is None:
        return "–"
    return f"{sp['mean']:.{d}f} ± {sp['std']:.{d}f} ({sp['min']:.{d}f}–{sp['max']:.{d}f})"


def report(models: dict[str, Any], meta: dict[str, Any]) -> str:
    md = [f"# Calibrated samplers on the trained digits models, FID at {meta['nfe']} NFE", ""]
    md += [meta["text"], ""]
    for model, m in models.items():
        summ = m["summary"]
        md += [f"## {model} model", "", m["about"], ""]
        md += [
            "| entry | NFE | FID mean ± std (min–max) over sets | RMS to teacher |"
            " std / teacher's |",
            "|---|---:|---|---|---:|",
        ]
        ents = summ["entries"]
        order = sorted(
            ents,
            key=lambda k: ents[k]["fid_spread"]["mean"] if ents[k]["fid_spread"] else math.inf,
        )
        for k in order:
            e = ents[k]
            note = "" if e["sets"] == meta["sets"] else f" ({e['sets']} sets)"
            md.append(
                f"| {k}{note} | {e['nfe']:g} | {fmt(e['fid_spread'])} |"
                f" {fmt(e['rms_teacher'], 4)} | {e['std_ratio']['mean']:.3f} |"
            )
        ps = summ["per_set"]
        if ps:
            md += ["", "Per seed set (entries present on every set):", ""]
            md += [
                "| set | best uncalibrated | best calibrated | ratio | teacher FID | teacher / best"
                " uncalibrated |",
                "|---:|---|---|---:|---:|---:|",
            ]
            for e in ps:
                t = next(iter(e.get("teacher", {}).values()), None)
                md.append(
                    f"| {e['set']} | {e['best_plain']} {e['best_plain_fid']:.2f} |"
                    f" {e.get('best_cal', '–')} {e.get('best_cal_fid', math.nan):.2f} |"
                    f" {e.get('ratio', math.nan):.3f} |"
                    f" {t['fid'] if t else math.nan:.2f} | {t['ratio'] if t else math.nan:.3f} |"
                )
            ratios = [e["ratio"] for e in ps if "ratio" in e]
            tr = [next(iter(e["teacher"].values()))["ratio"] for e in ps if "teacher" in e]
            if ratios:
                md += ["", f"Best calibrated / best uncalibrated: {fmt(spread(ratios), 3)}."]
            if tr:
                md += [f"Teacher / best uncalibrated: {fmt(spread(tr), 3)}."]
        if m.get("fits"):
            md += ["", "Calibration fits (RMS to the teacher on the fitting noises):", ""]
            for k, f in m["fits"].items():
                md.append(
                    f"- {k}: {math.sqrt(f['default_loss']):.4f} -> {math.sqrt(f['loss']):.4f}"
                    f" ({f['fit_nfe_per_sample']} NFE per fitting sample, {f['fit_seconds']:.0f}"
                    f" s); grid {', '.join(f'{v:.3g}' for v in f['sigmas'])}"
                )
        md.append("")
    return "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="edm,vp")
    p.add_argument("--work", default="/tmp/sl_digits_cal")
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--sets", type=int, default=4)
    p.add_argument("--n", type=int, default=500, help="samples per FID")
    p.add_argument("--seed-base", type=int, default=11, help="seedsets base (entropy)")
    p.add_argument("--fit-samples", type=int, default=64)
    p.add_argument("--fit-seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--teacher-steps", type=int, default=100)
    p.add_argument("--M", type=int, default=10)
    p.add_argument("--plain", default=",".join(PLAIN))
    p.add_argument("--cal", default=",".join(CALIBRATED))
    p.add_argument("--set-ids", default=None, help="seed sets to run (default 0..sets-1)")
    p.add_argument(
        "--cache-tag", default="", help="a separate row cache (e.g. 'choice' for choice sets)"
    )
    p.add_argument("--train", action="store_true", help="train missing models (fixed epochs)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--note", default=None, help="a markdown file included under the title")
    p.add_argument("--out", default=str(RESULTS / "calibrate_digits"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    for m in models:
        ckpt = Path(args.work) / m / "checkpoints" / "last.ckpt"
        if args.train and not ckpt.is_file():
            from samplerlab.cli import main as cli

            over = ["eval.enabled=false", "logger.wandb=false", "trainer.num_threads=1"]
            if cli(["train", f"out_dir={Path(args.work) / m}", *over, *TRAIN[m]]) != 0:
                raise SystemExit(f"training {m} failed")
    plain = [k for k in args.plain.split(",") if k]
    cal = [k for k in args.cal.split(",") if k]
    for k in plain:
        if k not in SAMPLERS:
            p.error(f"--plain: unknown sampler '{k}'")
    for k in cal:
        if k not in CALIBRATED and k not in VARIANTS:
            p.error(f"--cal: unknown entry '{k}'; valid: {', '.join(CALIBRATED)}")
    set_ids = [int(v) for v in args.set_ids.split(",")] if args.set_ids else list(range(args.sets))
    start = time.perf_counter()
    for m in models:
        b = Bench(m, args)
        if args.report_only:
            continue
        # The teacher and every uncalibrated entry on every set first, then one calibrated
        # entry at a time (its fit, then every set): early numbers on every question.
        for s in set_ids:
            b.teacher_row(s)
            for k in plain:
                b.plain(s, k)
        for k in cal:
            for s in set_ids:
                b.calibrated(s, k)
    out = Path(args.out)
    results: dict[str, Any] = {}
    for m in models:
        b = Bench(m, args)
        fits = {}
        for path in sorted(Path(args.work).glob(f"{m}_cal_*_s{args.fit_seed}.safetensors")):
            c = calibrate.load(path, denoiser=b.den)
            md = c.metadata
            fits[path.name] = {
                "default_loss": md["default_loss"],
                "loss": md["loss"],
                "fit_nfe_per_sample": md["fit_nfe_per_sample"],
                "fit_seconds": md["fit_seconds"],
                "sigmas": c.sigmas.tolist(),
                "default_sigmas": md["default_sigmas"],
            }
        results[m] = {
            "rows": b.rows,
            "summary": summarise(b.rows),
            "fits": fits,
            "fid_floor": b.floor,
            "about": f"Checkpoint {b.ckpt}; data-vs-data FID floor (two halves) {b.floor:.3f}.",
        }
    meta = {
        "command": "PYTHONPATH=. nice -n 10 python benchmarks/bench_digits_calibrate.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "nfe": args.nfe,
        "sets": args.sets,
        "n": args.n,
        "fit_samples": args.fit_samples,
        "iterations": args.iterations,
        "teacher_steps": args.teacher_steps,
        "seconds": time.perf_counter() - start,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta["text"] = (
        f"`{meta['command']}`. {args.n} samples per FID (digits-classifier features against "
        f"all 1797 digits); {args.sets} seed sets (initial noise: `seedsets.stream_seeds(s, "
        f"'init', {args.n}, base={args.seed_base})`). Calibration: {args.fit_samples} fitting "
        f"noises (library fitting seeds, seed {args.fit_seed}; disjoint from every scoring "
        f"set), {args.iterations} Levenberg-Marquardt iterations, teacher DPM-Solver-3 x "
        f"{args.teacher_steps} log-SNR steps ({3 * args.teacher_steps + 1} NFE); IIA M = "
        f"{args.M} on the same noises."
    )
    if args.note:
        meta["text"] = Path(args.note).read_text().strip() + "\n\n" + meta["text"]
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "models": results}))
    atomic_write_text(out.with_suffix(".md"), report(results, meta) + "\n")
    print(report(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
