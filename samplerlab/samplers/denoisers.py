"""Wrappers that turn any model into the one interface ``D(x, sigma) -> x0_hat``.

Samplers never branch on the model type: a VP epsilon / v / x0-prediction network on a
discrete ``alphas_cumprod`` table or a continuous VP schedule, or an EDM-preconditioned
network, is adapted here once. Each class is a :class:`~.core.DenoiserBase` declaring a
:class:`~.core.ModelInfo` (``info``); the models keep its fields as plain attributes
(``prior_std`` is 1 for VP models, whose initial state is ``x_vp ~ N(0, I)``). A wrapper
(:class:`~.core.WrapperBase`) declares the wrapped denoiser's ``info`` (its fields read as
attributes too) and forwards only ``take`` (per-sample state follows the rows) and
``extra_rows`` (cost); nothing else.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .core import (
    ModelBase,
    ModelInfo,
    SamplerError,
    WrapperBase,
    append_dims,
    describe,
    extra_rows_of,
    grid_positions,
    has_row_state,
    take_rows,
)
from .errors import NonFiniteError
from .schedules import ContinuousVP, DiscreteVP, VPSchedule

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def maybe_compile(
    fn: Callable[[Tensor, Tensor], Tensor], compile: bool | Mapping[str, Any]
) -> Callable[[Tensor, Tensor], Tensor]:
    """``torch.compile`` the network call: ``True`` uses CUDA graphs
    (``mode="reduce-overhead"``); a mapping gives ``torch.compile``'s keyword arguments."""
    if not compile:
        return fn
    kwargs = {"mode": "reduce-overhead"} if compile is True else dict(compile)
    return torch.compile(fn, **kwargs)


class VPDenoiser(ModelBase):
    """A VP model ``f(x_vp, t)`` seen in EDM coordinates.

    ``x_vp = x / sqrt(1 + sigma^2)``, ``t = vp.t(sigma)``; the output is converted to
    ``x0_hat`` by the prediction type (k-diffusion's ``DiscreteEpsDDPMDenoiser``).

    Args:
        model_fn: ``f(x_vp, t) -> eps | v | x0`` with ``t: [B]`` (float; long if ``quantize``);
            called as ``f(x_vp, t, cond)`` when the denoiser is called with conditioning
            (the rows of ``cond`` aligned with ``x``'s: see :mod:`.conditioning`).
        vp: the model's :class:`DiscreteVP` table or :class:`ContinuousVP` schedule.
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample``.
        clip_denoised: clamp ``x0_hat`` to ``[-1, 1]`` (diffusers' ``clip_sample``).
        quantize: round ``t`` to the nearest table timestep and pass it as ``long``.
        time_scale: multiply ``t`` by this before calling the model (e.g. 1000 for
            continuous-time models trained on ``t * 1000``).
        compile: compile ``model_fn`` (see :func:`maybe_compile`); samplers never sync per
            step, so a compiled network keeps its launch-overhead gain.
        network: the ``nn.Module`` that identifies the model (declared in :attr:`info`);
            default: ``model_fn`` itself when it is a module.
    """

    def __init__(
        self,
        model_fn: Callable[[Tensor, Tensor], Tensor],
        vp: VPSchedule,
        *,
        prediction_type: str = "epsilon",
        clip_denoised: bool = False,
        quantize: bool = False,
        time_scale: float = 1.0,
        data_shape: tuple[int, ...] | None = None,
        compile: bool | Mapping[str, Any] = False,
        network: torch.nn.Module | None = None,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise SamplerError(
                f"unknown prediction_type '{prediction_type}'; valid: {', '.join(PREDICTION_TYPES)}"
            )
        if not isinstance(vp, (DiscreteVP, ContinuousVP)):
            raise SamplerError("vp must be a DiscreteVP table or a ContinuousVP schedule")
        self.model_fn = maybe_compile(model_fn, compile)
        self.vp = vp
        self.prediction_type = prediction_type
        self.clip_denoised = clip_denoised
        self.quantize = quantize
        self.time_scale = time_scale
        self.sigma_min = vp.sigma_min
        self.sigma_max = vp.sigma_max
        self.prior_std = 1.0
        self.data_shape = data_shape
        self.network = _module_or(network, self.model_fn)
        self._grid_cache: tuple | None = None  # (weakref to a grid, version, dtype, alpha, t)
        self._last_grid: weakref.ref | None = None

    def take(self, rows: Tensor) -> VPDenoiser:
        """This model for the rows ``rows`` of the batch (see :func:`core.take_rows`)."""
        fn = take_rows(self.model_fn, rows)
        if fn is self.model_fn:
            return self
        view = copy.copy(self)  # __getstate__: the view starts without a grid cache
        view.model_fn = fn
        return view

    def __getstate__(self) -> dict[str, Any]:
        # The grid cache holds weak references: not copied, not pickled.
        return {**self.__dict__, "_grid_cache": None, "_last_grid": None}

    def _schedule(self, sigma: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(alpha, t)`` of ``sigma``: the VP signal scale and the model's time input."""
        s = sigma.to(dtype)
        t = self.vp.t(s)
        if self.quantize:
            t = t.round().long()
        elif self.time_scale != 1.0:
            t = t * self.time_scale
        return (1 + s * s).rsqrt(), t

    def _lookup(self, sigma: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """:meth:`_schedule`, once per grid: samplers pass views of one device grid step
        after step (:func:`grid_positions`), so from the second call on a grid its lookups
        are made for every grid point at once and read back as views; a grid seen once
        (one-step inner calls) is computed directly."""
        found = grid_positions(sigma)
        if found is None:
            return self._schedule(sigma, dtype)
        grid, at = found
        version = None if torch.is_inference(grid) else grid._version
        cached = self._grid_cache
        if cached is None or cached[0]() is not grid or cached[1:3] != (version, dtype):
            if self._last_grid is None or self._last_grid() is not grid:
                self._last_grid = weakref.ref(grid)  # first call on this grid
                return self._schedule(sigma, dtype)
            cached = (weakref.ref(grid), version, dtype, *self._schedule(grid, dtype))
            self._grid_cache = cached
        return cached[3].as_strided(*at), cached[4].as_strided(*at)

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        # Schedule math in at least float32 (in bf16, t = 999 rounds to 1000, off the table).
        dtype = torch.promote_types(x.dtype, torch.float32)
        alpha, t = self._lookup(sigma, dtype)
        alpha = append_dims(alpha, x.ndim)  # VP signal scale
        sigma = sigma.to(dtype)
        x_vp = (x * alpha).to(x.dtype)
        out = self.model_fn(x_vp, t) if cond is None else self.model_fn(x_vp, t, cond)
        out = out.to(x.dtype)
        if self.prediction_type == "epsilon":
            x0 = torch.addcmul(x, append_dims(sigma, x.ndim), out, value=-1)  # x - sigma eps
        elif self.prediction_type == "v_prediction":
            # x0 = alpha * x_vp - sigma_vp * v with x_vp = alpha x, sigma_vp = alpha sigma.
            x0 = alpha * (alpha * x - append_dims(sigma, x.ndim) * out)
        else:
            x0 = out
        x0 = x0.to(x.dtype)
        return x0.clamp(-1, 1) if self.clip_denoised else x0


def _module_or(network: torch.nn.Module | None, fn: Any) -> torch.nn.Module | None:
    return fn if network is None and isinstance(fn, torch.nn.Module) else network


def from_eps(
    eps_fn: Callable[[Tensor, Tensor], Tensor], alphas_cumprod: Tensor, **kw: Any
) -> VPDenoiser:
    """An epsilon-prediction model on a discrete ``alphas_cumprod`` table (``kw``: the
    :class:`VPDenoiser` options, as :func:`from_v` and :func:`from_x0`)."""
    return VPDenoiser(eps_fn, DiscreteVP(alphas_cumprod), prediction_type="epsilon", **kw)


def from_v(
    v_fn: Callable[[Tensor, Tensor], Tensor], alphas_cumprod: Tensor, **kw: Any
) -> VPDenoiser:
    """A v-prediction model on a discrete ``alphas_cumprod`` table."""
    return VPDenoiser(v_fn, DiscreteVP(alphas_cumprod), prediction_type="v_prediction", **kw)


def from_x0(
    x0_fn: Callable[[Tensor, Tensor], Tensor], alphas_cumprod: Tensor, **kw: Any
) -> VPDenoiser:
    """An x0 ("sample") prediction model on a discrete ``alphas_cumprod`` table."""
    return VPDenoiser(x0_fn, DiscreteVP(alphas_cumprod), prediction_type="sample", **kw)


class EDMDenoiser(ModelBase):
    """An EDM-preconditioned network (Karras et al. 2022, Table 1, "Ours").

    ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` with ``c_skip = sd^2/(sigma^2+sd^2)``,
    ``c_out = sigma sd / sqrt(sigma^2+sd^2)``, ``c_in = 1/sqrt(sigma^2+sd^2)``,
    ``c_noise = log(sigma)/4``. Pass ``preconditioned=False`` for a network that already
    returns ``D`` (then it is called as ``net(x, sigma)``). Called with conditioning
    ``cond`` (rows aligned with ``x``'s), the network is called as ``net(x, c, cond)``.
    ``network`` (declared in :attr:`info`) defaults to ``net`` when it is a module.
    """

    def __init__(
        self,
        net: Callable[[Tensor, Tensor], Tensor],
        *,
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        preconditioned: bool = True,
        data_shape: tuple[int, ...] | None = None,
        compile: bool | Mapping[str, Any] = False,
        network: torch.nn.Module | None = None,
    ) -> None:
        self.net = maybe_compile(net, compile)
        self.sigma_data = sigma_data
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.preconditioned = preconditioned
        self.vp = None
        self.prior_std = 0.0
        self.data_shape = data_shape
        self.network = _module_or(network, self.net)

    def take(self, rows: Tensor) -> EDMDenoiser:
        """This model for the rows ``rows`` of the batch (see :func:`core.take_rows`)."""
        net = take_rows(self.net, rows)
        if net is self.net:
            return self
        view = copy.copy(self)
        view.net = net
        return view

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        sigma = sigma.to(x.dtype)
        extra = () if cond is None else (cond,)
        if not self.preconditioned:
            return self.net(x, sigma, *extra).to(x.dtype)
        sd = self.sigma_data
        s = append_dims(sigma, x.ndim)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = (s**2 + sd**2).rsqrt()
        c_noise = sigma.log() / 4
        return c_skip * x + c_out * self.net(c_in * x, c_noise, *extra).to(x.dtype)


class _Wrapper(WrapperBase):
    """A denoiser around ``inner`` (see :class:`~.core.WrapperBase`)."""

    def __init__(self, inner: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.inner = inner

    @property
    def info(self) -> ModelInfo:
        return describe(self.inner)

    @property
    def extra_rows(self) -> Any:  # type: ignore[override]
        return extra_rows_of(self.inner)

    def take(self, rows: Tensor) -> Any:
        """This wrapper around the inner denoiser for the rows ``rows`` (core.take_rows)."""
        inner = take_rows(self.inner, rows)
        if inner is self.inner:
            return self
        view = copy.copy(self)
        view.inner = inner
        return view


def check_output(out: Any, x: Tensor) -> Tensor:
    """``out`` if it is a tensor of ``x``'s shape, else one clear :class:`SamplerError` (another
    shape would be broadcast into wrong samples; a shape is host metadata: no sync)."""
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise SamplerError(
            f"the denoiser returned {got} for an input of shape {tuple(x.shape)}: "
            "D(x, sigma) must return a tensor of x's shape"
        )
    return out


class CountingDenoiser(_Wrapper):
    """Counts sequential network rounds and evaluated rows.

    One call is one round (a sequential network call, whatever its batch); NFE per sample
    is ``rows / batch``. A denoiser that evaluates more network rows than it is given
    (classifier-free guidance: a conditional and an unconditional row) reports them in its
    ``extra_rows`` tally, which is added here. Counters are Python ints: no GPU->CPU sync.
    The output must have the input's shape (:func:`check_output`).
    """

    def __init__(
        self, inner: Callable[[Tensor, Tensor], Tensor], parent: CountingDenoiser | None = None
    ) -> None:
        super().__init__(inner)
        self.rounds = 0
        self.rows = 0
        self.parent = parent  # views for row subsets (take) count into their parent

    def take(self, rows: Tensor) -> CountingDenoiser:
        inner = take_rows(self.inner, rows)
        return self if inner is self.inner else CountingDenoiser(inner, self.parent or self)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        counts = self.parent or self
        counts.rounds += 1
        tally = extra_rows_of(self.inner)
        before = 0 if tally is None else tally.count
        out = self.inner(x, sigma)
        counts.rows += x.shape[0] + (0 if tally is None else tally.count - before)
        return check_output(out, x)

    def nfe(self, batch: int) -> float:
        return self.rows / batch

    def reset(self) -> None:
        self.rounds = 0
        self.rows = 0


class ChunkedDenoiser(_Wrapper):
    """Evaluates at most ``max_rows`` rows per network call; results are unchanged.

    Chunk ``c`` is rows ``start..start + len`` of the call: a denoiser with per-sample state
    (:func:`~.core.has_row_state`) is given those rows through :func:`~.core.take_rows`, so
    each row keeps its own conditioning.
    """

    def __init__(self, inner: Callable[[Tensor, Tensor], Tensor], max_rows: int) -> None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise SamplerError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        super().__init__(inner)
        self.max_rows = max_rows

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        if x.shape[0] <= self.max_rows:
            return self.inner(x, sigma)
        out, start = [], 0
        for xc, sc in zip(x.split(self.max_rows), sigma.split(self.max_rows), strict=True):
            # Chunk rows start..start+len of this call (per-sample conditioning follows them).
            if not has_row_state(self.inner):
                part = self.inner
            else:
                part = take_rows(self.inner, torch.arange(start, start + len(xc), device=x.device))
            out.append(part(xc, sc))
            start += len(xc)
        return torch.cat(out)


def chunked(
    denoiser: Callable[[Tensor, Tensor], Tensor], max_rows: int | None
) -> Callable[[Tensor, Tensor], Tensor]:
    """Cap the rows per network call (``None``: no cap)."""
    return denoiser if max_rows is None else ChunkedDenoiser(denoiser, max_rows)


class ClippedDenoiser(_Wrapper):
    """Clamps ``x0_hat`` to ``[lo, hi]`` (pixel models; makes the update non-affine in eps);
    row-wise, so :meth:`take` gives the wrapped denoiser's per-sample state."""

    def __init__(
        self, inner: Callable[[Tensor, Tensor], Tensor], lo: float = -1.0, hi: float = 1.0
    ) -> None:
        super().__init__(inner)
        self.lo, self.hi = lo, hi

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.inner(x, sigma).clamp(self.lo, self.hi)


class FiniteCheckDenoiser(_Wrapper):
    """Raises at the first network round whose input or output is not finite (syncs: debug only)."""

    def __init__(self, inner: Callable[[Tensor, Tensor], Tensor], label: str = "sampler") -> None:
        super().__init__(inner)
        self.label = label
        self.rounds = 0

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.rounds += 1
        where = (
            f"{self.label}: round {self.rounds} (sigma in [{float(sigma.min()):.4g}, "
            f"{float(sigma.max()):.4g}])"
        )
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError(f"{where}: the state entering the network is not finite")
        out = self.inner(x, sigma)
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteError(f"{where}: the network output is not finite")
        return out
