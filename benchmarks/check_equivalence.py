"""Bit-identity guard: every registered sampler, IIA fit and calibration fit on analytic mixtures.

Runs each registered sampler (``samplerlab.samplers.SAMPLERS``) with several option sets
(defaults, its stochastic options switched on, its orders/variants, inner solvers and
pipelining of the parallel samplers, several grid schedules, explicit grids and noise,
aliases, calibrated grids, fitted IIA coefficients, class conditioning with classifier-free
guidance) on small analytic Gaussian mixtures (a VP-table one and an EDM one, float64, fixed
per-sample seeds, one thread), every IIA fit and two calibration fits, and compares each
result with a saved baseline by ``torch.equal`` (exact). A case that raises records its
exception type and message (memory addresses and the source tree's path masked), so a
change in validation shows too. Only the stable public API is used: ``samplerlab.sample``,
``samplerlab.samplers.SAMPLERS`` / ``get_sampler``, ``samplerlab.iia.fit``,
``samplerlab.calibrate.fit`` and the models of ``samplerlab.analytic``.

Two look-ups follow the redesign's renames, so that a moved name does not read as a changed
result: the denoiser wrappers are taken from ``samplerlab.denoisers`` or, failing that,
``samplerlab.samplers.denoisers``; the registry-plan cases (``spec/...``) call
``SamplerSpec.plan_for`` / ``nfe_for`` / ``is_deterministic`` or, where those are gone, the
fixed-signature ``plan(steps, options)`` / ``nfe(steps, options)`` / ``deterministic(options)``.

Usage (the library is the one on ``PYTHONPATH``; its path is printed first)::

    python benchmarks/check_equivalence.py --write           # baseline of this tree
    cd /other/tree && PYTHONPATH=$PWD python /path/to/benchmarks/check_equivalence.py
    ... --compare [--only SUBSTR] [--quick] [--baseline PATH] [--verbose]

The baseline (``benchmarks/results/equivalence/baseline.safetensors``, beside this script)
stores each case's tensors as ``<case>::<field>``; ``baseline.json`` maps case keys to
descriptions and records the commit it was written on. Exit status 0 iff every compared
case is identical and none is missing.

Determinism: ``--write`` run twice on the same code gives identical files (checked when the
baseline was made). Dropped as nondeterministic: the fingerprints of ``EDMDenoiser`` around
a plain function (the library hashes such a denoiser's ``repr``, which holds a memory
address); sampling with those denoisers is kept. Lightning's fit stages run on one CPU
device with progress bars off.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
DEFAULT_BASELINE = HERE / "results" / "equivalence" / "baseline.safetensors"
SEP = "::"

N = 8  # samples per case
SEEDS = list(range(1000, 1000 + N))
STEPS = (6, 12)
DT = torch.float64


# --- models -----------------------------------------------------------------------------


@functools.cache
def model(name: str) -> Any:
    """The analytic models (built from the public constructors, fixed seeds)."""
    from samplerlab.analytic import ClassConditionalMixture, GaussianMixture

    if name == "vp":  # linear-beta VP table, d = 4, 3 components
        return GaussianMixture.random(dim=4, components=3, spread=1.2, seed=3)
    if name == "vpcos":  # cosine VP table, d = 5
        return GaussianMixture.random(dim=5, components=3, seed=4, betas="squaredcos_cap_v2")
    if name == "edm":  # EDM parameterisation, d = 6, 4 components
        return GaussianMixture.random(dim=6, components=4, spread=1.0, seed=5, edm=True)
    if name in ("cond", "cond_edm"):
        base = GaussianMixture.random(dim=4, components=3, seed=6, edm=name == "cond_edm")
        return ClassConditionalMixture(
            base.weights, base.means, base.stds, base.vp, edm=name == "cond_edm"
        )
    if name in WRAPPED:
        return WRAPPED[name]()
    raise KeyError(name)


def _vp_net(kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The VP mixture's exact eps / v / x0 prediction as a network ``f(x_vp, t)``."""
    m = model("vp")

    def f(x_vp: Tensor, t: Tensor) -> Tensor:
        sigma = m.vp.sigma(t.to(torch.float64)).to(x_vp.dtype)
        s = sigma.reshape(-1, *[1] * (x_vp.ndim - 1))
        alpha = (1 + s**2).rsqrt()
        x = x_vp / alpha
        x0 = m(x, sigma)
        eps = (x - x0) / s
        if kind == "eps":
            return eps
        if kind == "v":  # v = alpha eps - sigma_vp x0, sigma_vp = alpha sigma
            return alpha * eps - alpha * s * x0
        return x0

    return f


def _tiny_net(x: Tensor, c_noise: Tensor) -> Tensor:
    """A fixed elementwise network ``F(c_in x, c_noise)`` (not a good model; deterministic)."""
    c = c_noise.reshape(-1, *[1] * (x.ndim - 1))
    return torch.tanh(0.7 * x + 0.3 * c) - 0.2 * x


def _lib(name: str) -> Any:
    """A denoiser wrapper of the library by name: ``samplerlab.denoisers`` (the baseline's
    path) or ``samplerlab.samplers.denoisers`` (where the wrappers are defined)."""
    import samplerlab.denoisers
    import samplerlab.samplers.denoisers

    for mod in (samplerlab.denoisers, samplerlab.samplers.denoisers):
        if hasattr(mod, name):
            return getattr(mod, name)
    raise AttributeError(f"samplerlab.denoisers has no attribute {name!r}")


def _wrapped() -> dict[str, Callable[[], Any]]:
    table = lambda: model("vp").vp.alphas_cumprod
    return {
        "vp_eps": lambda: _lib("from_eps")(_vp_net("eps"), table(), data_shape=(4,)),
        "vp_v": lambda: _lib("from_v")(_vp_net("v"), table(), data_shape=(4,)),
        "vp_x0": lambda: _lib("from_x0")(_vp_net("x0"), table(), data_shape=(4,)),
        "vp_eps_quant": lambda: _lib("from_eps")(
            _vp_net("eps"), table(), quantize=True, data_shape=(4,)
        ),
        "vp_eps_clip": lambda: _lib("from_eps")(
            _vp_net("eps"), table(), clip_denoised=True, data_shape=(4,)
        ),
        "vp_chunked": lambda: _lib("chunked")(model("vp"), 3),
        "vp_clipped": lambda: _lib("ClippedDenoiser")(model("vp"), -0.8, 0.8),
        "edm_wrap": lambda: _lib("EDMDenoiser")(
            lambda x, s: model("edm")(x, s), preconditioned=False, data_shape=(6,)
        ),
        "edm_net": lambda: _lib("EDMDenoiser")(_tiny_net, sigma_data=0.6, data_shape=(2, 3)),
    }


WRAPPED = _wrapped()


class NaNBelow:
    """A denoiser (the VP mixture's attributes) that returns NaN for sigma < ``at``."""

    def __init__(self, at: float) -> None:
        m = model("vp")
        self.m, self.at = m, at
        self.vp, self.sigma_min, self.sigma_max = m.vp, m.sigma_min, m.sigma_max
        self.prior_std, self.data_shape = m.prior_std, m.data_shape

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        out = self.m(x, sigma)
        bad = (sigma < self.at).reshape(-1, *[1] * (x.ndim - 1))
        return torch.where(bad, torch.full_like(out, float("nan")), out)


LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 1, 0])


# --- running one case --------------------------------------------------------------------


def _scalar(v: Any, dtype: torch.dtype) -> Tensor:
    return torch.tensor(v, dtype=dtype)


def draw(model_name: str, sampler: str, steps: int, **kw: Any) -> dict[str, Tensor]:
    """``samplerlab.sample`` on a model with the fixed seeds; samples, NFE, rounds, grid."""
    import samplerlab

    kw.setdefault("dtype", DT)
    kw.setdefault("seeds", SEEDS)
    record_name = kw.pop("record_name", False)
    den = kw.pop("denoiser", None) or model(model_name)
    shape = kw.pop("shape", None) or (N, *den.data_shape)
    res = samplerlab.sample(den, sampler, steps=steps, shape=shape, **kw)
    out = {
        "x": res.x.detach().cpu().contiguous(),
        "nfe": _scalar(float(res.nfe), torch.float64),
        "rounds": _scalar(int(res.rounds), torch.int64),
        "sigmas": torch.as_tensor(res.sigmas, dtype=torch.float64).contiguous(),
    }
    if record_name:  # the registry name an alias resolved to, and its options
        out["name"] = _text(json.dumps([res.name, res.options], sort_keys=True, default=str))
    return out


def _quiet() -> contextlib.AbstractContextManager:
    @contextlib.contextmanager
    def cm():
        with warnings.catch_warnings(), open(os.devnull, "w") as null:
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                yield

    return cm()


@functools.cache
def iia_fit(key: str) -> Any:
    """The IIA fits (memoised: sampling cases reuse them)."""
    import samplerlab

    m, sampler, kw = IIA_FITS[key]
    if "calibration" in kw:
        kw = {**kw, "calibration": cal_fit(kw["calibration"])}
    with _quiet():
        return samplerlab.iia.fit(model(m), sampler, progress=False, **kw)


@functools.cache
def cal_fit(key: str) -> Any:
    import samplerlab

    m, sampler, kw = CAL_FITS[key]
    with _quiet():
        return samplerlab.calibrate.fit(model(m), sampler, progress=False, **kw)


# Metadata that is not a result (wall-clock time, the installed version).
UNSTABLE_META = ("fit_seconds", "library_version")


def _meta(metadata: dict[str, Any]) -> Tensor:
    kept = {k: v for k, v in metadata.items() if k not in UNSTABLE_META}
    return _text(json.dumps(kept, sort_keys=True, default=str))


def iia_out(key: str) -> dict[str, Tensor]:
    c = iia_fit(key)
    return {
        "coeffs": c.coeffs.contiguous(),
        "mask": c.mask.contiguous(),
        "sigmas": c.sigmas.contiguous(),
        "form_r": _text(json.dumps([c.sampler, c.form, c.r])),
        "metadata": _meta(c.metadata),
    }


def cal_out(key: str) -> dict[str, Tensor]:
    c = cal_fit(key)
    return {
        "sigmas": c.sigmas.detach().cpu().to(torch.float64).contiguous(),
        "spec": _text(json.dumps([c.sampler, c.steps, c.options], sort_keys=True, default=str)),
        "metadata": _meta(c.metadata),
    }


# --- coefficient and calibration files ----------------------------------------------------

TMP = Path(tempfile.mkdtemp(prefix="samplerlab-equiv-"))
atexit.register(shutil.rmtree, TMP, ignore_errors=True)
# Files written by the baseline's library (--write), read back by the library under test.
FIXTURES = {
    "iia": (DEFAULT_BASELINE.parent / "iia_ddim_vp.safetensors", "iia_ddim@vp"),
    "cal": (DEFAULT_BASELINE.parent / "cal_dpmpp_2m_vp.safetensors", "dpmpp_2m@vp"),
}


def write_fixtures() -> None:
    import samplerlab

    samplerlab.iia.save(iia_fit(FIXTURES["iia"][1]), FIXTURES["iia"][0])
    samplerlab.calibrate.save(cal_fit(FIXTURES["cal"][1]), FIXTURES["cal"][0])


def iia_roundtrip(key: str) -> dict[str, Tensor]:
    """Save a fit, load it (checked against the model) and sample with the loaded file."""
    import samplerlab

    m, sampler, kw = IIA_FITS[key]
    path = samplerlab.iia.save(iia_fit(key), TMP / f"{key}.safetensors")
    c = samplerlab.iia.load(path, denoiser=model(m))
    out = draw(m, sampler, kw["steps"], coeffs=c)
    out.update(coeffs=c.coeffs.clone(), mask=c.mask.clone(), sigmas_fit=c.sigmas.clone())
    return out


def cal_roundtrip(key: str) -> dict[str, Tensor]:
    """Save a calibration and sample from its path (``samplerlab.sample`` loads it)."""
    import samplerlab

    m, sampler, kw = CAL_FITS[key]
    path = samplerlab.calibrate.save(cal_fit(key), TMP / f"{key}.safetensors")
    out = draw(m, sampler, kw["steps"], calibration=str(path))
    out["loaded"] = samplerlab.calibrate.load(path, denoiser=model(m)).sigmas.clone()
    return out


def spec_out(name: str, options: dict[str, Any]) -> dict[str, Tensor]:
    """What the registry entry plans and counts: grid steps, NFE, steps for NFE budgets,
    determinism (``SamplerSpec`` methods as of the baseline's commit)."""
    from samplerlab.samplers import get_sampler

    spec = get_sampler(name)
    # The methods as of the baseline (plan_for, nfe_for, is_deterministic) or the fixed-
    # signature contract that replaces them (plan, nfe, deterministic with (steps, options)).
    plan_for = getattr(spec, "plan_for", None) or spec.plan
    nfe_for = getattr(spec, "nfe_for", None) or spec.nfe
    is_det = getattr(spec, "is_deterministic", None) or spec.deterministic
    grid, nfe, planned = [], [], []
    for steps in range(1, 13):
        try:
            g, p = plan_for(steps, options)
            grid.append(g)
            planned.append(p)
        except Exception as e:  # the message is part of the result
            grid.append(-1)
            planned.append(f"{type(e).__name__}: {e}")
        try:
            nfe.append(float(nfe_for(steps, options)))
        except Exception:
            nfe.append(float("nan"))
    budgets = []
    for b in (1, 2, 3, 5, 8, 10, 13, 20):
        try:
            got = spec.steps_for_nfe(b, options)
        except Exception:
            got = -2
        budgets.append(-1 if got is None else got)
    return {
        "grid_steps": torch.tensor(grid, dtype=torch.int64),
        "nfe": torch.tensor(nfe, dtype=torch.float64),
        "steps_for_nfe": torch.tensor(budgets, dtype=torch.int64),
        "deterministic": torch.tensor(bool(is_det(options))),
        "planned": _text(json.dumps(planned, sort_keys=True, default=str)),
    }


# IIA fits: key -> (model, sampler, fit options). Small M and num_samples: seconds each.
_FIT = {"M": 2, "num_samples": 8}
IIA_FITS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "iia_ddim@vp": ("vp", "iia_ddim", {"steps": 6, **_FIT}),
    "iia_ddim@vp_s8_M3": ("vp", "iia_ddim", {"steps": 8, "M": 3, "num_samples": 6}),
    "iia_ddim@edm": ("edm", "iia_ddim", {"steps": 6, **_FIT}),
    "iia_dpmpp_2m@vp": ("vp", "iia_dpmpp_2m", {"steps": 6, **_FIT}),
    "iia_dpmpp_2m@vp_nowarm": (
        "vp",
        "iia_dpmpp_2m",
        {"steps": 6, "warm_start": False, **_FIT},
    ),
    "iia_dpmpp_2m@edm": ("edm", "iia_dpmpp_2m", {"steps": 6, **_FIT}),
    "iia_edm@edm": ("edm", "iia_edm", {"steps": 6, **_FIT}),
    "iia_edm@edm_r2": ("edm", "iia_edm", {"steps": 7, "r": 2, **_FIT}),
    "iia_edm@vp": ("vp", "iia_edm", {"steps": 6, **_FIT}),
    "biia_edm@edm": ("edm", "biia_edm", {"steps": 6, **_FIT}),
    "biia_edm@vp": ("vp", "biia_edm", {"steps": 6, **_FIT}),
    "iia_dpmpp_2m@vp_cal": (
        "vp",
        "iia_dpmpp_2m",
        {"steps": 6, "calibration": "dpmpp_2m@vp", **_FIT},
    ),
    "iia_ddim@vp_spacing_sigma": (
        "vp",
        "iia_ddim",
        {"steps": 6, "spacing": "sigma", **_FIT},
    ),
    "iia_ddim@vp_guided": ("vp", "iia_ddim", {"steps": 6, "form": "guided", **_FIT}),
    "iia_ddim@cond_guided": (
        "cond",
        "iia_ddim",
        {"steps": 6, "form": "guided", "guidance_scale": 2.0, **_FIT},
    ),
    "iia_ddim@vp_eps": ("vp_eps", "iia_ddim", {"steps": 6, **_FIT}),
    "iia_edm@edm_batch3": (
        "edm",
        "iia_edm",
        {"steps": 6, "batch_size": 3, "seed": 2, **_FIT},
    ),
    "iia_dpmpp_2m@vp_sigma_grid": (
        "vp",
        "iia_dpmpp_2m",
        {
            "sigmas": torch.tensor([80.0, 20.0, 5.0, 1.5, 0.5, 0.1, 0.0], dtype=DT),
            **_FIT,
        },
    ),
}
# Calibration fits: key -> (model, sampler, fit options). Few iterations, few samples.
_CAL = {"iterations": 3, "num_samples": 8, "teacher_steps": 20}
CAL_FITS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "dpmpp_2m@vp": ("vp", "dpmpp_2m", {"steps": 6, **_CAL}),
    "edm_heun@edm": ("edm", "edm_heun", {"steps": 5, **_CAL}),
    "ddim@vp_nocand": ("vp", "ddim", {"steps": 6, "candidates": False, **_CAL}),
}


# --- the case list ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    key: str
    description: str
    run: Callable[[], dict[str, Tensor]]
    quick: bool = False


# Per-sampler option sets beyond the defaults and spec.stochastic_options (tag -> options).
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "euler": {
        "churn_window": {
            "s_churn": 2.0,
            "s_tmin": 0.1,
            "s_tmax": 10.0,
            "s_noise": 1.003,
        }
    },
    "ddim": {"eta0.5": {"eta": 0.5}},
    "ddpm": {"fixed_large": {"variant": "fixed_large"}, "sde": {"variant": "sde"}},
    "edm_heun": {
        "churn_window": {
            "s_churn": 3.0,
            "s_tmin": 0.05,
            "s_tmax": 20.0,
            "s_noise": 1.007,
        }
    },
    "dpm_solver_1": {"orders111": {"orders": [1, 1, 1]}},
    "dpm_solver_2": {
        "dpmsolver": {"algorithm": "dpmsolver"},
        "orders221": {"orders": [2, 2, 1]},
    },
    "dpm_solver_3": {
        "dpmsolver": {"algorithm": "dpmsolver"},
        "order2": {"order": 2},
        "orders321": {"orders": [3, 2, 1]},
        "orders3321": {"orders": [3, 3, 2, 1], "algorithm": "dpmsolver"},
    },
    "dpmpp_2m": {"lof": {"lower_order_final": True}},
    "pmm": {
        "K2": {"K": 2},
        "K3_single": {"K": 3, "midpoints": "single"},
        "K2_fixed_large": {"K": 2, "variant": "fixed_large"},
        "K2_sde": {"K": 2, "variant": "sde"},
    },
    "rmm": {"data": {"form": "data"}, "exponential": {"form": "exponential"}},
    "rmm_pc": {
        "data": {"form": "data"},
        "w2c2": {"window": 2, "corrector_steps": 2, "gamma": 1.5, "step_size": 0.05},
    },
    "rmm_parallel": {
        "R6K3": {"R": 6, "K": 3},
        "corrector": {"corrector_steps": 1},
        "data": {"form": "data"},
        "max_rows4": {"max_rows": 4},
    },
    "srds": {
        "nopipe": {"pipelined": False},
        "dpmpp_2m": {"inner": "dpmpp_2m"},
        "dpmpp_2m_nopipe": {"inner": "dpmpp_2m", "pipelined": False},
        "edm_heun": {"inner": "edm_heun"},
        "edm_heun_nopipe": {"inner": "edm_heun", "pipelined": False},
        "ddpm": {"inner": "ddpm"},
        "ddpm_nopipe": {"inner": "ddpm", "pipelined": False},
        "ddim_eta": {"inner": "ddim", "inner_options": {"eta": 0.5}},
        "blocks3": {"blocks": 3},
        "iters1": {"max_iters": 1},
        "tol0": {"tol": 0.0},
        "max_rows4": {"max_rows": 4},
        "unipc": {"inner": "unipc"},
        "unipc_nopipe": {"inner": "unipc", "pipelined": False},
        "dpmpp_3m_nopipe": {"inner": "dpmpp_3m", "pipelined": False},
        "lms_nopipe": {"inner": "lms", "pipelined": False},
    },
    "paradigms": {
        "dpmpp_2m": {"inner": "dpmpp_2m"},
        "edm_heun": {"inner": "edm_heun"},
        "ddpm": {"inner": "ddpm"},
        "window4": {"window": 4},
        "dpmpp_2m_window3": {"inner": "dpmpp_2m", "window": 3},
        "tol1e-2": {"tol": 1e-2},
        "max_rows4": {"max_rows": 4},
        "ddim_eta": {"inner": "ddim", "inner_options": {"eta": 1.0}},
    },
    "unipc": {
        **{f"{v}_o{o}": {"variant": v, "order": o} for v in ("bh1", "bh2") for o in (1, 2, 3)},
        "nocorr": {"corrector": False},
        "o3_lof": {"order": 3, "lower_order_final": True},
    },
    "deis": {
        "o1": {"order": 1},
        "o2": {"order": 2},
        "o3_nolof": {"order": 3, "lower_order_final": False},
    },
    "ipndm": {f"max{o}": {"max_order": o} for o in (1, 2, 3)},
    "lms": {f"o{o}": {"order": o} for o in (1, 2, 3)},
    "dpmpp_3m": {"taylor": {"form": "taylor"}, "nolof": {"lower_order_final": False}},
    "dpmpp_2m_sde": {"eta0.5": {"eta": 0.5, "s_noise": 0.8}, "eta0": {"eta": 0.0}},
    "dpmpp_3m_sde": {"eta0.5": {"eta": 0.5}, "taylor": {"form": "taylor"}},
    "dpmpp_sde": {"eta0.5": {"eta": 0.5}, "r0.3": {"r": 0.3}},
    "dpmpp_2s_ancestral": {"eta0.5": {"eta": 0.5, "s_noise": 0.9}},
    "dpm_2": {"churn_window": {"s_churn": 1.5, "s_tmin": 0.1, "s_tmax": 5.0}},
    "dpm_2_ancestral": {"eta0.5": {"eta": 0.5}},
    "euler_ancestral": {"eta0.5": {"eta": 0.5, "s_noise": 0.95}},
    "dpm_adaptive": {
        "o2": {"order": 2},
        "rtol0.01": {"rtol": 0.01, "atol": 0.001, "h_init": 0.5},
    },
    "iia_ddim": {"coeffs_none": {"coeffs": None}},
}
# Samplers costly per step (fine grids, Picard rounds, adaptive steps): one step count for
# their variants.
SLOW = {"pmm", "rmm_parallel", "srds", "paradigms", "dpm_adaptive", "rmm_pc"}

QUICK = {
    "sample/vp/ddim/s6/default",
    "sample/vp/ddim/s6/eta",
    "sample/edm/edm_heun/s6/s_churn",
    "sample/vp/dpmpp_2m/s12/default",
    "sample/vp/dpm_solver_3/s12/default",
    "sample/edm/unipc/s6/bh1_o3",
    "sample/vp/deis/s6/o2",
    "sample/vp/lms/s12/default",
    "sample/vp/ddpm/s6/default",
    "sample/vp/pmm/s6/K2",
    "sample/vp/rmm/s6/default",
    "sample/vp/rmm_parallel/s6/default",
    "sample/vp/srds/s6/dpmpp_2m",
    "sample/edm/paradigms/s6/edm_heun",
    "sample/edm/dpmpp_2m_sde/s6/default",
    "sample/vp/dpm_adaptive/s6/default",
    "iia/iia_ddim@vp",
    "sample/vp/iia_ddim/s6/coeffs:iia_ddim@vp",
    "sample/edm/iia_edm/s6/coeffs:iia_edm@edm",
    "cal/dpmpp_2m@vp",
    "sched/vp/dpmpp_2m/s8/karras",
    "cond/cond/dpmpp_2m/s6/guided",
    "error/unknown_option",
    "error/file_iia_other_model",
    "spec/dpm_solver_3/default",
    "spec/pmm/K2",
    "file/legacy/iia_ddim@vp",
    "sample/vp_eps/dpmpp_2m/s6/default",
    "rows/vp/dpmpp_2m",
}


def _sample_case(model_name: str, sampler: str, steps: int, tag: str, **kw: Any) -> Case:
    key = f"sample/{model_name}/{sampler}/s{steps}/{tag}"
    desc = f"sample {sampler} on {model_name} at steps={steps} with {kw or 'defaults'}"
    return Case(
        key,
        desc,
        functools.partial(draw, model_name, sampler, steps, **kw),
        key in QUICK,
    )


def _err(fn: Callable[[], Any]) -> Callable[[], dict[str, Tensor]]:
    def run() -> dict[str, Tensor]:
        fn()
        return {"no_error": torch.tensor(1)}

    return run


def build_cases() -> list[Case]:
    import samplerlab
    from samplerlab.samplers import SAMPLERS, get_sampler

    cases: list[Case] = []
    add = cases.append
    # 1. every registered sampler: defaults and each option set, on both models.
    for name in SAMPLERS:
        spec = get_sampler(name)
        sets: dict[str, dict[str, Any]] = {"default": {}}
        for opt in spec.stochastic_options:
            sets[opt] = {opt: 1.0}
        sets.update(VARIANTS.get(name, {}))
        for tag, opts in sets.items():
            steps = STEPS if (tag == "default" or name not in SLOW) else STEPS[:1]
            for m in ("vp", "edm"):
                for s in steps:
                    add(_sample_case(m, name, s, tag, **opts))
    # The cosine VP table: each sampler's defaults at one step count.
    for name in SAMPLERS:
        add(_sample_case("vpcos", name, 8, "default"))
    # 2. grid schedules (and schedule options) for a few samplers.
    sched_sets = {
        s: {"schedule": s}
        for s in (
            "karras",
            "logsnr",
            "time_uniform",
            "time_quadratic",
            "linspace",
            "leading",
            "trailing",
        )
    }
    sched_sets.update(
        {
            "karras_rho5": {"schedule": "karras", "schedule_options": {"rho": 5.0}},
            "logsnr_replace": {
                "schedule": "logsnr",
                "schedule_options": {"final": "replace"},
            },
            "leading_offset1": {
                "schedule": "leading",
                "schedule_options": {"steps_offset": 1},
            },
            "karras_range": {
                "schedule": "karras",
                "schedule_options": {"sigma_min": 0.01, "sigma_max": 20.0},
            },
            "default_opts_replace": {"schedule_options": {"final": "replace"}},
        }
    )
    for name in (
        "ddim",
        "dpmpp_2m",
        "edm_heun",
        "unipc",
        "dpm_solver_3",
        "euler_ancestral",
        "srds",
    ):
        for tag, kw in sched_sets.items():
            # The time-table schedules raise on the EDM model: recorded once (for ddim).
            vp_only = kw.get("schedule") not in (None, "karras", "logsnr")
            for m in ("vp",) if (vp_only and name != "ddim") else ("vp", "edm"):
                key = f"sched/{m}/{name}/s8/{tag}"
                add(
                    Case(
                        key,
                        f"{name} on {m}, steps=8, {kw}",
                        functools.partial(draw, m, name, 8, **kw),
                        key in QUICK,
                    )
                )
    # Explicit grids, given noise, float32, the generator noise stream, default seeds.
    grid = torch.tensor([60.0, 10.0, 3.0, 1.0, 0.3, 0.05, 0.0], dtype=torch.float64)
    z = torch.randn(N, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for name in ("ddim", "dpmpp_2m", "edm_heun", "euler_ancestral", "unipc", "srds"):
        add(
            Case(
                f"misc/vp/{name}/sigmas",
                f"{name} on an explicit grid",
                functools.partial(draw, "vp", name, 6, sigmas=grid),
            )
        )
        add(
            Case(
                f"misc/vp/{name}/noise",
                f"{name} with given initial noise",
                functools.partial(draw, "vp", name, 6, noise=z),
            )
        )
        add(
            Case(
                f"misc/vp/{name}/float32",
                f"{name} in float32",
                functools.partial(draw, "vp", name, 6, dtype=torch.float32),
            )
        )
        add(
            Case(
                f"misc/vp/{name}/generator",
                f"{name} with noise_kind=generator",
                functools.partial(draw, "vp", name, 6, noise_kind="generator"),
            )
        )
        add(
            Case(
                f"misc/vp/{name}/default_seeds",
                f"{name} with seeds=None",
                functools.partial(draw, "vp", name, 6, seeds=None),
            )
        )
    # Library aliases.
    for alias in (
        "DPM++ 2M Karras",
        "UniPC",
        "DDIM",
        "Euler a",
        "DPM fast",
        "LMS Karras",
        "DPMSolverSinglestepScheduler",
        "DEISMultistepScheduler",
        "DDPMScheduler",
        "UniPCMultistepScheduler",
        "DPM++ 3M SDE",
    ):
        add(
            Case(
                f"alias/vp/{alias}",
                f"alias {alias!r} at steps=8",
                functools.partial(draw, "vp", alias, 8, record_name=True),
            )
        )
    # 3. IIA fits: coefficients, and samples drawn with them.
    for key, (m, sampler, kw) in IIA_FITS.items():
        add(
            Case(
                f"iia/{key}",
                f"samplerlab.iia.fit({m}, {sampler}, {kw})",
                functools.partial(iia_out, key),
                f"iia/{key}" in QUICK,
            )
        )
        extra: dict[str, Any] = {}
        if "calibration" in kw:
            extra = {"calibration_key": kw["calibration"]}
        if "sigmas" in kw:
            extra["sigmas"] = kw["sigmas"]
        steps = kw["steps"] if "steps" in kw else len(kw["sigmas"]) - 1

        def run(
            key: str = key,
            m: str = m,
            sampler: str = sampler,
            steps: int = steps,
            extra: dict[str, Any] = extra,
        ) -> dict[str, Tensor]:
            kw2: dict[str, Any] = {"coeffs": iia_fit(key)}
            if "calibration_key" in extra:
                kw2["calibration"] = cal_fit(extra["calibration_key"])
            if "sigmas" in extra:
                kw2["sigmas"] = extra["sigmas"]
            return draw(m, sampler, steps, **kw2)

        skey = f"sample/{m}/{sampler}/s{steps}/coeffs:{key}"
        add(
            Case(
                skey,
                f"{sampler} with the coefficients of iia fit {key}",
                run,
                skey in QUICK,
            )
        )
    # IIA coefficients used with a grid they were not fitted on (an error).
    add(
        Case(
            "sample/vp/iia_ddim/s12/coeffs_wrong_steps",
            "iia_ddim coeffs fitted at 6, steps=12",
            lambda: draw("vp", "iia_ddim", 12, coeffs=iia_fit("iia_ddim@vp")),
        )
    )
    # 4. calibration fits, and sampling on the calibrated grids.
    for key, (m, sampler, kw) in CAL_FITS.items():
        add(
            Case(
                f"cal/{key}",
                f"samplerlab.calibrate.fit({m}, {sampler}, {kw})",
                functools.partial(cal_out, key),
                f"cal/{key}" in QUICK,
            )
        )
        add(
            Case(
                f"sample/{m}/{sampler}/s{kw['steps']}/calibration:{key}",
                f"{sampler} on the calibrated grid {key}",
                lambda m=m, sampler=sampler, key=key, s=kw["steps"]: draw(
                    m, sampler, s, calibration=cal_fit(key)
                ),
            )
        )
    add(
        Case(
            "sample/vp/iia_dpmpp_2m/s6/calibration_nocoeffs",
            "iia_dpmpp_2m (no coeffs) on the dpmpp_2m calibrated grid",
            lambda: draw("vp", "iia_dpmpp_2m", 6, calibration=cal_fit("dpmpp_2m@vp")),
        )
    )
    add(
        Case(
            "sample/vp/srds/s6/calibration:dpmpp_2m@vp",
            "srds with a dpmpp_2m calibration",
            lambda: draw("vp", "srds", 6, calibration=cal_fit("dpmpp_2m@vp")),
        )
    )
    add(
        Case(
            "sample/vp/dpmpp_2m/s12/calibration_wrong_steps",
            "calibrated at 6, steps=12",
            lambda: draw("vp", "dpmpp_2m", 12, calibration=cal_fit("dpmpp_2m@vp")),
        )
    )
    # 5. conditioning and classifier-free guidance on the class-conditional mixture.
    null = torch.tensor([-1])
    cond_sets: dict[str, dict[str, Any]] = {
        "cond": {"cond": LABELS},
        "guided": {"cond": LABELS, "guidance": 2.0, "uncond": null},
        "guided_rows": {
            "cond": LABELS,
            "guidance": torch.linspace(0.0, 3.0, N, dtype=torch.float64),
            "uncond": null.expand(N),
        },
        "guided_interval": {
            "cond": LABELS,
            "guidance": 1.5,
            "uncond": null,
            "guidance_interval": (0.3, 5.0),
        },
        "null_cond": {"cond": null.expand(N)},
    }
    for name in (
        "ddim",
        "dpmpp_2m",
        "edm_heun",
        "euler_ancestral",
        "unipc",
        "dpm_solver_2",
        "srds",
        "paradigms",
        "ddpm",
        "rmm",
    ):
        for tag, kw in cond_sets.items():
            for m in ("cond", "cond_edm"):
                key = f"cond/{m}/{name}/s6/{tag}"
                add(
                    Case(
                        key,
                        f"{name} on {m} with {tag}",
                        functools.partial(draw, m, name, 6, **kw),
                        key in QUICK,
                    )
                )
    # IIA with a guided fit, sampled with guidance on the class-conditional mixture.
    add(
        Case(
            "cond/cond/iia_ddim/s6/guided_coeffs:iia_ddim@cond_guided",
            "iia_ddim guided-form coefficients with cond + guidance 2",
            lambda: draw(
                "cond",
                "iia_ddim",
                6,
                coeffs=iia_fit("iia_ddim@cond_guided"),
                cond=LABELS,
                guidance=2.0,
                uncond=torch.tensor([-1]),
            ),
        )
    )
    # Coefficient and calibration files: save, load, sample; files of the baseline's library.
    for key in ("iia_ddim@vp", "iia_dpmpp_2m@vp", "iia_edm@edm", "biia_edm@edm"):
        add(
            Case(
                f"file/iia/{key}",
                f"save, load and sample iia fit {key}",
                functools.partial(iia_roundtrip, key),
            )
        )
    for key in ("dpmpp_2m@vp", "edm_heun@edm"):
        add(
            Case(
                f"file/cal/{key}",
                f"save calibration {key}, sample from its path",
                functools.partial(cal_roundtrip, key),
            )
        )

    def legacy_iia() -> dict[str, Tensor]:
        c = samplerlab.iia.load(FIXTURES["iia"][0], denoiser=model("vp"))
        out = draw("vp", "iia_ddim", 6, coeffs=c)
        out.update(coeffs=c.coeffs.clone(), mask=c.mask.clone())
        return out

    def legacy_cal() -> dict[str, Tensor]:
        return draw("vp", "dpmpp_2m", 6, calibration=str(FIXTURES["cal"][0]))

    add(
        Case(
            "file/legacy/iia_ddim@vp",
            "load the baseline's iia file and sample",
            legacy_iia,
        )
    )
    add(
        Case(
            "file/legacy/dpmpp_2m@vp",
            "sample from the baseline's calibration file",
            legacy_cal,
        )
    )

    def bad_file(kind: str) -> Callable[[], Any]:
        def run() -> Any:
            path = TMP / f"bad_{kind}.safetensors"
            if kind == "iia_corrupt":
                path.write_bytes(b"not a safetensors file")
                return samplerlab.iia.load(path)
            if kind == "cal_corrupt":
                path.write_bytes(b"not a safetensors file")
                return samplerlab.calibrate.load(path)
            if kind == "iia_missing":
                return samplerlab.iia.load(TMP / "missing.safetensors")
            if kind == "cal_missing":
                return draw("vp", "dpmpp_2m", 6, calibration=str(TMP / "missing.safetensors"))
            if kind == "iia_other_model":
                return samplerlab.iia.load(FIXTURES["iia"][0], denoiser=model("vpcos"))
            if kind == "cal_other_model":
                return draw("vpcos", "dpmpp_2m", 6, calibration=str(FIXTURES["cal"][0]))
            if kind == "cal_other_sampler":
                return draw("vp", "ddim", 6, calibration=str(FIXTURES["cal"][0]))
            if kind == "iia_other_model_sample":
                c = samplerlab.iia.load(FIXTURES["iia"][0])
                return draw("vpcos", "iia_ddim", 6, coeffs=c)
            raise KeyError(kind)

        return _err(run)

    for kind in (
        "iia_corrupt",
        "cal_corrupt",
        "iia_missing",
        "cal_missing",
        "iia_other_model",
        "cal_other_model",
        "cal_other_sampler",
        "iia_other_model_sample",
    ):
        add(Case(f"error/file_{kind}", f"file error: {kind}", bad_file(kind)))
    # Denoiser wrappers (samplerlab.denoisers) around the analytic models and a tiny network.
    for m in WRAPPED:
        for name in (
            "ddim",
            "dpmpp_2m",
            "edm_heun",
            "euler_ancestral",
            "unipc",
            "dpm_solver_3",
            "ddpm",
            "srds",
            "paradigms",
            "rmm",
            "iia_ddim",
        ):
            add(_sample_case(m, name, 6, "default"))
    for name in ("pmm", "rmm_parallel", "lms", "dpmpp_3m_sde"):
        add(_sample_case("edm_net", name, 6, "default"))
        add(_sample_case("vp_eps", name, 6, "default"))
    # Model fingerprints (coefficient and calibration files are bound to them).
    # (Not of edm_wrap / edm_net: a plain function's fingerprint is its repr's hash, which
    # holds its memory address and so differs between runs.)
    for m in ("vp", "vpcos", "edm", "cond", "cond_edm", *WRAPPED):
        if m in ("edm_wrap", "edm_net"):
            continue
        add(
            Case(
                f"fingerprint/{m}",
                f"samplerlab.iia.fingerprint of {m}",
                lambda m=m: {"fp": _text(str(samplerlab.iia.fingerprint(model(m))))},
            )
        )
    # Per-row grids ([N+1, n]: each sample its own time points).
    rows = grid[:, None] * torch.linspace(0.5, 1.0, N, dtype=torch.float64)[None, :]
    for name in (
        "ddim",
        "dpmpp_2m",
        "edm_heun",
        "euler_ancestral",
        "unipc",
        "dpm_solver_2",
        "ddpm",
        "srds",
        "paradigms",
        "iia_ddim",
        "lms",
        "rmm",
    ):
        add(
            Case(
                f"rows/vp/{name}",
                f"{name} on a per-row grid",
                functools.partial(draw, "vp", name, 6, sigmas=rows),
            )
        )
    # A model that turns non-finite (the re-run names the round).
    for name in ("ddim", "dpmpp_2m", "srds", "edm_heun"):
        add(
            Case(
                f"error/nonfinite_{name}",
                f"{name} on a model that is NaN below sigma 1",
                _err(lambda name=name: draw("vp", name, 6, denoiser=NaNBelow(1.0))),
            )
        )
    # Registry plans: grid steps, NFE rule, steps for NFE budgets, determinism.
    for name in SAMPLERS:
        spec = get_sampler(name)
        sets = {"default": {}}
        for opt in spec.stochastic_options:
            sets[opt] = {opt: 1.0}
        sets.update(VARIANTS.get(name, {}))
        for tag, opts in sets.items():
            add(
                Case(
                    f"spec/{name}/{tag}",
                    f"registry plan of {name} with {opts}",
                    functools.partial(spec_out, name, opts),
                    f"spec/{name}/{tag}" in QUICK,
                )
            )
    # 6. validation: what each bad input raises (type and message).
    den = model("vp")

    def s(*a: Any, **k: Any) -> Any:
        k.setdefault("shape", (N, 4))
        return samplerlab.sample(den, *a, **k)

    errors: dict[str, Callable[[], Any]] = {
        "unknown_option": lambda: s("ddim", steps=6, bogus=1),
        "unknown_sampler": lambda: s("ddimm", steps=6),
        "steps0": lambda: s("ddim", steps=0),
        "steps_float": lambda: s("ddim", steps=6.0),
        "bad_shape": lambda: s("ddim", steps=6, shape=(N, 5)),
        "seed_count": lambda: s("ddim", steps=6, seeds=[1, 2]),
        "seed_negative": lambda: s("ddim", steps=6, seeds=[-1] * N),
        "bad_schedule": lambda: s("ddim", steps=6, schedule="nope"),
        "bad_schedule_option": lambda: s(
            "ddim", steps=6, schedule="karras", schedule_options={"bogus": 1}
        ),
        "sigmas_length": lambda: s("ddim", steps=6, sigmas=torch.linspace(10, 0, 5)),
        "calibration_and_sigmas": lambda: s(
            "dpmpp_2m", steps=6, calibration=object(), sigmas=torch.linspace(10, 0, 7)
        ),
        "calibration_type": lambda: s("dpmpp_2m", steps=6, calibration=object()),
        "bad_dtype": lambda: s("ddim", steps=6, dtype=torch.int64),
        "bad_device": lambda: s("ddim", steps=6, device="nodevice"),
        "srds_bad_inner": lambda: s("srds", steps=6, inner="nope"),
        "srds_stochastic_grid_inner": lambda: s(
            "srds", steps=6, inner="edm_heun", inner_options={"s_churn": 1.0}
        ),
        "paradigms_bad_inner": lambda: s("paradigms", steps=6, inner="dpmpp_3m_sde"),
        "pmm_bad_K": lambda: s("pmm", steps=6, K=0),
        "rmm_bad_form": lambda: s("rmm", steps=6, form="nope"),
        "unipc_bad_variant": lambda: s("unipc", steps=6, variant="bh3"),
        "ddpm_bad_variant": lambda: s("ddpm", steps=6, variant="nope"),
        "dpm_solver_bad_orders": lambda: s("dpm_solver_3", steps=6, orders=[4, 1]),
        "iia_bad_coeffs": lambda: s("iia_edm", steps=6, coeffs=iia_fit("iia_ddim@vp")),
        "iia_fit_bad_form": lambda: samplerlab.iia.fit(
            den, "iia_ddim", steps=6, form="nope", progress=False
        ),
        "iia_fit_bad_sampler": lambda: samplerlab.iia.fit(den, "ddim", steps=6, progress=False),
        "iia_fit_too_few_steps": lambda: samplerlab.iia.fit(
            den, "iia_edm", steps=2, progress=False
        ),
        "iia_fit_M0": lambda: samplerlab.iia.fit(den, "iia_ddim", steps=6, M=0, progress=False),
        "cal_fit_stochastic": lambda: samplerlab.calibrate.fit(
            den, "ddpm", steps=6, progress=False
        ),
        "cal_fit_steps0": lambda: samplerlab.calibrate.fit(den, "ddim", steps=0, progress=False),
        "cond_rows": lambda: samplerlab.sample(
            model("cond"), "ddim", steps=6, shape=(N, 4), cond=LABELS[:3]
        ),
        "guidance_no_uncond": lambda: samplerlab.sample(
            model("cond"), "ddim", steps=6, shape=(N, 4), cond=LABELS, guidance=2.0
        ),
    }
    for tag, fn in errors.items():
        key = f"error/{tag}"
        add(Case(key, f"validation: {tag}", _err(fn), key in QUICK))
    keys = [c.key for c in cases]
    dup = {k for k in keys if keys.count(k) > 1}
    assert not dup, f"duplicate case keys: {sorted(dup)}"
    return cases


# --- running, writing, comparing --------------------------------------------------------


def _mask(text: str) -> str:
    import samplerlab

    root = str(Path(samplerlab.__file__).resolve().parent.parent)
    text = text.replace(str(TMP), "<tmp>").replace(str(HERE), "<benchmarks>")
    text = text.replace(root, "<root>")
    return re.sub(r"0x[0-9a-fA-F]+", "0x?", text)


def _text(s: str) -> Tensor:
    return torch.tensor(list(s.encode()), dtype=torch.uint8)


def _untext(t: Tensor) -> str:
    return bytes(t.tolist()).decode(errors="replace")


def run_case(case: Case) -> dict[str, Tensor]:
    try:
        out = case.run()
    except Exception as e:  # the exception is the case's result
        return {"error": _text(_mask(f"{type(e).__name__}: {e}")[:2000])}
    return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}


def select(cases: list[Case], only: str | None, quick: bool) -> list[Case]:
    if quick:
        cases = [c for c in cases if c.quick]
    if only:
        cases = [c for c in cases if only in c.key]
    return cases


def compute(cases: list[Case], verbose: bool = False) -> dict[str, dict[str, Tensor]]:
    results = {}
    for case in cases:
        t = time.perf_counter()
        results[case.key] = run_case(case)
        if verbose:
            print(f"  {time.perf_counter() - t:7.3f}s {case.key}", flush=True)
    return results


def _git(*args: str, cwd: Path = HERE) -> str:
    try:
        run = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return run.stdout.strip()


def _provenance() -> dict[str, Any]:
    """The commit of this script's tree, and the library that was run: its git tree hash
    (equal to ``git rev-parse <commit>:samplerlab`` of the commit it matches) and whether it
    had uncommitted changes."""
    import samplerlab

    lib = Path(samplerlab.__file__).resolve().parent
    return {
        "commit": _git("rev-parse", "HEAD"),
        "samplerlab": str(lib),
        "samplerlab_tree": _git("rev-parse", "HEAD:./", cwd=lib),
        "samplerlab_uncommitted_changes": bool(_git("status", "--porcelain", "--", ".", cwd=lib)),
    }


def write(path: Path, cases: list[Case], results: dict[str, dict[str, Tensor]]) -> None:
    from safetensors.torch import save_file

    flat = {f"{k}{SEP}{f}": t for k, fields in results.items() for f, t in fields.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(flat, str(tmp))
    os.replace(tmp, path)
    index = {
        **_provenance(),
        "torch": torch.__version__,
        "cases": {c.key: c.description for c in cases},
    }
    jpath = path.with_suffix(".json")
    jtmp = jpath.with_suffix(".json.tmp")
    jtmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(jtmp, jpath)


def load(path: Path) -> dict[str, dict[str, Tensor]]:
    from safetensors.torch import load_file

    out: dict[str, dict[str, Tensor]] = {}
    for name, t in load_file(str(path)).items():
        key, field = name.rsplit(SEP, 1)
        out.setdefault(key, {})[field] = t
    return out


def diff(want: dict[str, Tensor], got: dict[str, Tensor]) -> str | None:
    """``None`` if identical, else one line saying how they differ."""
    if "error" in want or "error" in got:
        if "error" in want and "error" in got and torch.equal(want["error"], got["error"]):
            return None
        w = _untext(want["error"]) if "error" in want else "no error"
        g = _untext(got["error"]) if "error" in got else "no error"
        return f"baseline: {w[:200]!r}; now: {g[:200]!r}"
    parts = []
    for f in sorted(set(want) | set(got)):
        if f not in want or f not in got:
            parts.append(f"field {f} {'missing' if f not in got else 'extra'}")
            continue
        a, b = want[f], got[f]
        if a.dtype != b.dtype or a.shape != b.shape:
            parts.append(f"{f}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
        elif not torch.equal(a, b):
            d = (a.double() - b.double()).abs()
            d = d[~torch.isnan(d)] if d.is_floating_point() else d
            m = float(d.max()) if d.numel() else float("nan")
            parts.append(f"{f}: max |diff| {m:.3e}")
    return "; ".join(parts) or None


def compare(
    baseline: dict[str, dict[str, Tensor]],
    results: dict[str, dict[str, Tensor]],
    selected_keys: list[str],
    only: str | None,
    quick: bool,
) -> tuple[list[str], tuple[int, int, int, int]]:
    """Lines to print and (cases, identical, differ, missing)."""
    lines = []
    chosen = set(selected_keys)
    base_keys = [k for k in baseline if (not quick or k in chosen) and (not only or only in k)]
    identical = differ = missing = 0
    for k in base_keys:
        if k not in results:
            lines.append(f"MISSING {k}: in the baseline, not in this run's case list")
            missing += 1
            continue
        d = diff(baseline[k], results[k])
        if d is None:
            identical += 1
        else:
            differ += 1
            lines.append(f"DIFFER {k}: {d}")
    for k in results:
        if k not in baseline:
            lines.append(f"EXTRA {k}: not in the baseline")
            missing += 1
    total = identical + differ + missing
    return lines, (total, identical, differ, missing)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the baseline")
    mode.add_argument("--compare", action="store_true", help="compare with it (default)")
    p.add_argument("--only", default=None, help="only cases whose key contains SUBSTR")
    p.add_argument("--quick", action="store_true", help="the representative CI subset")
    p.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    p.add_argument("--verbose", action="store_true", help="print each case's time")
    p.add_argument("--list", action="store_true", help="list the case keys and exit")
    p.add_argument(
        "--keep-fixtures",
        action="store_true",
        help="with --write: keep the files written by an earlier library (file/legacy/ cases "
        "then record how this library reads them)",
    )
    args = p.parse_args(argv)

    import samplerlab

    print(samplerlab.__file__, flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loggers = [
        logging.getLogger(n)
        for n in (
            "lightning.pytorch",
            "lightning.fabric",
            "pytorch_lightning",
            "lightning",
        )
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        cases = build_cases()
        if args.list:
            for c in select(cases, args.only, args.quick):
                print(c.key)
            return 0
        if args.write and (args.only or args.quick):
            p.error("--write writes the whole baseline; drop --only/--quick")
        chosen = select(cases, args.only, args.quick)
        t0 = time.perf_counter()
        if args.write and not args.keep_fixtures:
            with _quiet():
                write_fixtures()
        results = compute(chosen, args.verbose)
        seconds = time.perf_counter() - t0
        if args.write:
            write(args.baseline, cases, results)
            size = args.baseline.stat().st_size
            errors = sum("error" in r for r in results.values())
            print(
                f"wrote {len(results)} cases ({errors} record an exception) to "
                f"{args.baseline} ({size / 2**20:.2f} MiB) in {seconds:.1f} s"
            )
            return 0
        if not args.baseline.exists():
            print(f"baseline {args.baseline} does not exist (run with --write first)")
            return 1
        lines, (total, same, differ, missing) = compare(
            load(args.baseline), results, [c.key for c in chosen], args.only, args.quick
        )
        for line in lines:
            print(line)
        print(f"({seconds:.1f} s)")
        print(f"{total} cases, {same} identical, {differ} differ, {missing} missing")
        return 0 if (differ == 0 and missing == 0 and total > 0) else 1
    finally:
        torch.set_num_threads(threads)
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


if __name__ == "__main__":
    sys.exit(main())
