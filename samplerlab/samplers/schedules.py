"""Sigma grids and VP noise schedules.

A grid is a float64 tensor ``[N+1]``, strictly decreasing, ending in 0. Sigma-based grids
(``karras``, ``logsnr``) need only ``sigma_min``/``sigma_max``; time-based grids
(``time_uniform``, ``time_quadratic``) and the diffusers spacings of a discrete table
(``linspace``, ``leading``, ``trailing``) need the model's VP schedule, which VP denoiser
wrappers carry as ``.vp``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import SamplerError

# --------------------------------------------------------------------------------------
# VP schedules: the map between the model's time variable and the EDM sigma.
# --------------------------------------------------------------------------------------


def betas_for(
    kind: str, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2
) -> Tensor:
    """The betas of a discrete DDPM schedule (diffusers' ``beta_schedule`` names)."""
    T = num_train_timesteps
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if kind in ("squaredcos_cap_v2", "cosine"):

        def abar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        b = [min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)]
        return torch.tensor(b, dtype=torch.float64)
    raise SamplerError(
        f"unknown beta schedule '{kind}'; valid: linear, scaled_linear, squaredcos_cap_v2"
    )


@dataclass(frozen=True, eq=False)
class DiscreteVP:
    """A discrete ``alphas_cumprod`` table (DDPM, LDM, diffusers schedulers).

    ``sigma(t)`` and ``t(sigma)`` are exact on the table's own integer timesteps and
    interpolate linearly in log-sigma between them.
    """

    alphas_cumprod: Tensor
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        ac = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64).detach().cpu()
        if ac.ndim != 1 or ac.numel() < 2 or bool(((ac <= 0) | (ac >= 1)).any()):
            raise SamplerError("alphas_cumprod must be a 1-D table with values in (0, 1)")
        if bool((ac[1:] >= ac[:-1]).any()):
            raise SamplerError("alphas_cumprod must be strictly decreasing")
        object.__setattr__(self, "alphas_cumprod", ac)

    @classmethod
    def from_betas(cls, betas: Tensor) -> DiscreteVP:
        return cls(torch.cumprod(1 - torch.as_tensor(betas, dtype=torch.float64), 0))

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    @property
    def sigmas(self) -> Tensor:
        ac = self.alphas_cumprod
        return ((1 - ac) / ac).sqrt()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return float(self.num_timesteps - 1)

    def _log_sigmas(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache[key] = self.sigmas.log().to(device, dtype)
        return self._cache[key]

    def t(self, sigma: Tensor) -> Tensor:
        """Fractional timestep of ``sigma`` (log-sigma interpolation; exact on the table)."""
        ls = self._log_sigmas(sigma.device, torch.float64)
        log_sigma = sigma.to(torch.float64).clamp_min(1e-30).log()
        hi = torch.searchsorted(ls, log_sigma).clamp(1, ls.numel() - 1)
        lo = hi - 1
        w = ((log_sigma - ls[lo]) / (ls[hi] - ls[lo])).clamp(0, 1)
        return (lo.to(torch.float64) + w).to(sigma.dtype)

    def sigma(self, t: Tensor) -> Tensor:
        ls = self._log_sigmas(t.device, torch.float64)
        t64 = t.to(torch.float64).clamp(0, ls.numel() - 1)
        lo = t64.floor().long().clamp(0, ls.numel() - 1)
        hi = (lo + 1).clamp_max(ls.numel() - 1)
        w = t64 - lo
        # sigma_lo * (sigma_hi / sigma_lo)^w: bit-exact table values at integer t.
        key = (str(t.device), "sigmas")
        if key not in self._cache:
            self._cache[key] = self.sigmas.to(t.device)
        sigmas = self._cache[key]
        return (sigmas[lo] * (w * (ls[hi] - ls[lo])).exp()).to(t.dtype)


@dataclass(frozen=True, eq=False)
class ContinuousVP:
    """A continuous-time VP schedule on ``t in [t_min, t_max]`` (Song et al. 2021).

    ``kind='linear'``: ``log abar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2)``;
    ``kind='cosine'``: ``abar(t) = cos^2((t+s)/(1+s) pi/2) / cos^2(s/(1+s) pi/2)``.
    """

    kind: str = "linear"
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_s: float = 0.008
    t_min: float = 1e-3
    t_max: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "cosine"):
            raise SamplerError(f"unknown VP schedule '{self.kind}'; valid: linear, cosine")
        if self.kind == "cosine" and self.t_max >= 1.0:
            object.__setattr__(self, "t_max", 0.9946)  # DPM-Solver's cap: abar(1) = 0

    def _cos0(self) -> float:
        return math.cos(self.cosine_s / (1 + self.cosine_s) * math.pi / 2)

    def sigma(self, t: Tensor) -> Tensor:
        t64 = t.to(torch.float64)
        if self.kind == "linear":
            neg_log_abar = self.beta_min * t64 + 0.5 * (self.beta_max - self.beta_min) * t64**2
            return torch.expm1(neg_log_abar).sqrt().to(t.dtype)
        s = self.cosine_s
        abar = (torch.cos((t64 + s) / (1 + s) * math.pi / 2) / self._cos0()) ** 2
        return ((1 - abar) / abar).sqrt().to(t.dtype)

    def t(self, sigma: Tensor) -> Tensor:
        s64 = sigma.to(torch.float64)
        log1p = torch.log1p(s64**2)  # = -log abar
        if self.kind == "linear":
            db = self.beta_max - self.beta_min
            out = (-self.beta_min + (self.beta_min**2 + 2 * db * log1p).sqrt()) / db
        else:
            s = self.cosine_s
            c = (torch.exp(-0.5 * log1p) * self._cos0()).clamp(-1, 1)
            out = (1 + s) * 2 / math.pi * torch.acos(c) - s
        return out.to(sigma.dtype)

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))


VPSchedule = DiscreteVP | ContinuousVP

# --------------------------------------------------------------------------------------
# Grids.
# --------------------------------------------------------------------------------------


def _append_zero(s: Tensor) -> Tensor:
    return torch.cat([s.to(torch.float64), s.new_zeros(1, dtype=torch.float64)])


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SamplerError(f"steps must be an integer >= 1, got {n!r}")
    return n


def _need_vp(name: str, vp: VPSchedule | None) -> VPSchedule:
    if vp is None:
        raise SamplerError(
            f"schedule '{name}' needs the model's VP time schedule, and this denoiser has none; "
            "use schedule 'karras' or 'logsnr'"
        )
    return vp


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, **_: object) -> Tensor:
    """Karras et al. (2022) eq. 5: uniform in ``sigma^(1/rho)``, then 0."""
    _check_n(n)
    if n == 1:
        return _append_zero(torch.tensor([sigma_max], dtype=torch.float64))
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def logsnr(n: int, sigma_min: float, sigma_max: float, **_: object) -> Tensor:
    """Uniform in log-SNR ``lambda = -log sigma`` (DPM-Solver's ``logSNR`` grid), then 0."""
    _check_n(n)
    if n == 1:
        return _append_zero(torch.tensor([sigma_max], dtype=torch.float64))
    return _append_zero(
        torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    )


def time_uniform(
    n: int, sigma_min: float, sigma_max: float, vp: VPSchedule | None = None, **_: object
) -> Tensor:
    """Uniform in the model's time from ``t_max`` to ``t_min`` (DPM-Solver ``time_uniform``)."""
    v = _need_vp("time_uniform", vp)
    _check_n(n)
    t = (
        torch.linspace(v.t_max, v.t_min, n, dtype=torch.float64)
        if n > 1
        else torch.tensor([v.t_max], dtype=torch.float64)
    )
    return _append_zero(v.sigma(t))


def time_quadratic(
    n: int, sigma_min: float, sigma_max: float, vp: VPSchedule | None = None, **_: object
) -> Tensor:
    """Uniform in ``sqrt(t)`` (DPM-Solver ``time_quadratic``)."""
    v = _need_vp("time_quadratic", vp)
    _check_n(n)
    lo, hi = math.sqrt(v.t_min), math.sqrt(v.t_max)
    t = (
        torch.linspace(hi, lo, n, dtype=torch.float64) ** 2
        if n > 1
        else torch.tensor([v.t_max], dtype=torch.float64)
    )
    return _append_zero(v.sigma(t))


def discrete_timesteps(
    n: int, num_train_timesteps: int, spacing: str, steps_offset: int = 0
) -> Tensor:
    """Integer timesteps of diffusers' ``timestep_spacing`` (DDIM/DDPM schedulers), descending."""
    _check_n(n)
    T = num_train_timesteps
    if n > T:
        raise SamplerError(f"steps={n} exceeds the table's {T} timesteps")
    if spacing == "linspace":
        ts = torch.linspace(0, T - 1, n, dtype=torch.float64).round().flip(0)
    elif spacing == "leading":
        ts = (torch.arange(0, n, dtype=torch.float64) * (T // n)).round().flip(0) + steps_offset
    elif spacing == "trailing":
        ts = torch.arange(T, 0, -T / n, dtype=torch.float64).round() - 1
    else:
        raise SamplerError(f"unknown spacing '{spacing}'; valid: linspace, leading, trailing")
    return ts.long()


def _spacing(spacing: str) -> Callable[..., Tensor]:
    def grid(
        n: int,
        sigma_min: float,
        sigma_max: float,
        vp: VPSchedule | None = None,
        steps_offset: int = 0,
        **_: object,
    ) -> Tensor:
        v = _need_vp(spacing, vp)
        if not isinstance(v, DiscreteVP):
            raise SamplerError(f"schedule '{spacing}' needs a discrete alphas_cumprod table")
        ts = discrete_timesteps(n, v.num_timesteps, spacing, steps_offset)
        return _append_zero(v.sigmas[ts])

    grid.__doc__ = f"diffusers' '{spacing}' timestep spacing of a discrete table, then 0."
    return grid


SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "karras": karras,
    "logsnr": logsnr,
    "time_uniform": time_uniform,
    "time_quadratic": time_quadratic,
    "linspace": _spacing("linspace"),
    "leading": _spacing("leading"),
    "trailing": _spacing("trailing"),
}


def schedule_option_names(schedule: str) -> list[str]:
    """The extra keyword options a named schedule takes (e.g. ``rho`` for ``karras``)."""
    params = inspect.signature(SCHEDULES[schedule]).parameters.values()
    fixed = ("n", "sigma_min", "sigma_max", "vp")
    return [p.name for p in params if p.name not in fixed and p.kind is not p.VAR_KEYWORD]


def get_sigmas(
    schedule: str,
    n: int,
    *,
    sigma_min: float,
    sigma_max: float,
    vp: VPSchedule | None = None,
    final: str = "append",
    **kwargs: float,
) -> Tensor:
    """Build the ``[n+1]`` grid of a named schedule (one clear error for an unknown name).

    ``final="append"`` (EDM, k-diffusion): ``n`` points from ``sigma_max`` to ``sigma_min``,
    then 0, so the last step is the denoise step from ``sigma_min``. ``final="replace"``
    (DPM-Solver; diffusers' ``final_sigmas_type="zero"``): the schedule's ``n + 1`` points
    with ``sigma_min`` replaced by 0, so the last step is a full interval ending at 0.
    """
    if schedule not in SCHEDULES:
        raise SamplerError(f"unknown schedule '{schedule}'; valid: {', '.join(SCHEDULES)}")
    valid = schedule_option_names(schedule)
    for key in kwargs:
        if key not in valid:
            raise SamplerError(
                f"unknown option '{key}' for schedule '{schedule}'; valid: "
                f"{', '.join(['sigma_min', 'sigma_max', 'final', *valid])}"
            )
    if final not in ("append", "replace"):
        raise SamplerError(f"schedule option final must be 'append' or 'replace', got {final!r}")
    for key, value in {"sigma_min": sigma_min, "sigma_max": sigma_max, **kwargs}.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SamplerError(f"schedule option {key} must be a number, got {value!r}")
        if not math.isfinite(value) or (key == "rho" and value <= 0):
            raise SamplerError(f"schedule option {key} must be finite (rho > 0), got {value!r}")
    if not 0 < sigma_min < sigma_max:
        raise SamplerError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if final == "replace":
        _check_n(n)
        s = SCHEDULES[schedule](n + 1, sigma_min, sigma_max, vp=vp, **kwargs)
        return torch.cat([s[:-2], s.new_zeros(1)])
    return SCHEDULES[schedule](n, sigma_min, sigma_max, vp=vp, **kwargs)
