"""The one model interface, its declared contract, and the helpers every sampler shares.

A denoiser is any callable ``D(x, sigma) -> x0_hat`` in EDM (variance-exploding)
coordinates (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Sec. 2): ``x = x0 + sigma * n``, ``x: [B, ...]``, ``sigma: [B]`` (one
noise level per row). Samplers are pure functions ``(denoiser, x, sigmas, *, noise,
**options) -> x0`` where ``x`` is already at ``sigmas[0]`` and ``sigmas`` is a decreasing
grid of shape ``[N+1]`` (shared by all rows) or ``[N+1, B]`` (one grid per row, used by the
parallel samplers). Grids usually end in 0; a step to ``sigma_next = 0`` is the first-order
"denoise" step ``x <- D(x, sigma)``.

The contract beyond ``D(x, sigma)``:

* :class:`ModelInfo` -- what a denoiser declares (noise range, prior, VP table, sample
  shape, network), read everywhere through :func:`describe` (a plain function declares
  nothing and gets the defaults);
* :class:`DenoiserBase` -- the typed base every samplerlab denoiser and wrapper implements:
  ``__call__``, :attr:`~DenoiserBase.info`, :meth:`~DenoiserBase.take` (per-sample state:
  the place per-row conditioning plugs in, see :func:`take_rows`) and
  :attr:`~DenoiserBase.extra_rows` (network rows evaluated beyond the input rows).
"""

from __future__ import annotations

import math
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
from torch import Tensor

from .errors import SamplerError


class Denoiser(Protocol):
    def __call__(self, x: Tensor, sigma: Tensor, /) -> Tensor: ...


@dataclass(frozen=True)
class ModelInfo:
    """What a denoiser declares beyond ``D(x, sigma)``: the denoiser contract.

    Attributes:
        sigma_min, sigma_max: the noise range the model was trained on (EDM, Karras et al.
            2022, Table 1: 0.002 and 80 by default).
        prior_std: standard deviation of ``x`` at ``sigma_max`` is ``sqrt(sigma_max**2 +
            prior_std**2)``; 0 for the usual ``x_T = sigma_max * n`` start.
        vp: the model's VP time table (:class:`samplerlab.samplers.schedules.VPSchedule`), or
            None for an EDM (variance-exploding) model.
        data_shape: the shape of one sample, or None when the model takes any shape.
        network: the ``torch.nn.Module`` whose weights identify the model (fingerprints of
            fitted coefficients), or None when the denoiser does not name one. Only a declared
            :attr:`DenoiserBase.info` names it; :func:`describe` never probes for it.

    Values are normalised on construction (floats, a tuple of ints), so a declared info and
    one read from attributes compare equal.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    prior_std: float = 0.0
    vp: Any = field(default=None, repr=False)
    data_shape: tuple[int, ...] | None = None
    network: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = self.data_shape
        object.__setattr__(self, "sigma_min", float(self.sigma_min))
        object.__setattr__(self, "sigma_max", float(self.sigma_max))
        object.__setattr__(self, "prior_std", float(self.prior_std or 0.0))
        if shape is not None:
            object.__setattr__(self, "data_shape", tuple(int(s) for s in shape))


# The fields describe() reads from an undeclared denoiser's attributes (never the network).
_PROBED = tuple(f for f in fields(ModelInfo) if f.name != "network")


def describe(denoiser: Any) -> ModelInfo:
    """The declared :class:`ModelInfo` of ``denoiser``: the one place attributes are read
    with defaults (a plain function declares nothing and gets the defaults)."""
    info = getattr(denoiser, "info", None)
    if isinstance(info, ModelInfo):
        return info
    return ModelInfo(**{f.name: getattr(denoiser, f.name, f.default) for f in _PROBED})


class DenoiserBase(ABC):
    """The typed base of every samplerlab denoiser and wrapper: ``D(x, sigma) -> x0_hat``
    with its contract declared instead of probed.

    Subclasses implement ``__call__`` and :attr:`info`. A wrapper declares the wrapped
    denoiser's info (``describe(inner)``). Per-sample state (class labels, text embeddings:
    per-row conditioning) plugs in through :meth:`take`; a denoiser without such state keeps
    the default, which returns itself.
    """

    #: Network rows evaluated beyond the input rows (classifier-free guidance's
    #: unconditional rows): an object whose ``count`` grows, or None. Counted by
    #: :class:`~samplerlab.samplers.denoisers.CountingDenoiser`; wrappers forward it.
    extra_rows: Any = None

    @property
    @abstractmethod
    def info(self) -> ModelInfo:
        """The declared :class:`ModelInfo` (read through :func:`describe`)."""

    @abstractmethod
    def __call__(self, x: Tensor, sigma: Tensor, /) -> Tensor:
        """``D(x, sigma)``: the denoised estimate of ``x0``, of ``x``'s shape."""

    def take(self, rows: Tensor) -> DenoiserBase:
        """This denoiser for a call whose row ``j`` belongs to sample ``rows[j]`` of the batch
        (see :func:`take_rows`); without per-sample state, the denoiser itself."""
        return self


class ModelBase(DenoiserBase):
    """A model whose contract fields are plain attributes, set in ``__init__`` and read or
    reassigned by users (``den.vp``, ``den.sigma_min``): :attr:`info` reads them on each
    access."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    prior_std: float = 0.0
    vp: Any = None
    data_shape: tuple[int, ...] | None = None
    network: Any = None

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            self.sigma_min, self.sigma_max, self.prior_std, self.vp, self.data_shape, self.network
        )


class WrapperBase(DenoiserBase):
    """A denoiser around another one, whose :attr:`info` is the wrapped denoiser's.

    The :class:`ModelInfo` fields also read as attributes (``den.vp``, ``den.sigma_min``,
    ...; read-only), as they do on the models; these and ``take`` / ``extra_rows`` are all a
    wrapper forwards (library code reads :func:`describe`).
    """

    sigma_min = property(lambda self: self.info.sigma_min)
    sigma_max = property(lambda self: self.info.sigma_max)
    prior_std = property(lambda self: self.info.prior_std)
    vp = property(lambda self: self.info.vp)
    data_shape = property(lambda self: self.info.data_shape)
    network = property(lambda self: self.info.network)


def take_rows(denoiser: Denoiser, rows: Tensor) -> Denoiser:
    """The denoiser for a call whose row ``j`` belongs to sample ``rows[j]`` of the batch.

    A sampler that evaluates a gathered subset of its rows (PMM's midpoints, ParaDiGMS'
    windows) names each row's sample this way, so that per-sample conditioning (class
    labels) follows the rows. A call of whole copies of the batch (row ``j`` is sample
    ``j mod batch``) needs nothing. Denoisers without per-sample state
    (:func:`has_row_state`) are returned as they are; ``rows`` is a device tensor (no host
    sync).
    """
    return denoiser.take(rows) if has_row_state(denoiser) else denoiser  # type: ignore[attr-defined]


def has_row_state(denoiser: Any) -> bool:
    """Whether ``take`` of ``denoiser`` may return another denoiser (per-sample state, or a
    wrapper around a denoiser that may have it): a wrapper that splits a call's rows names
    each part's rows only then, and spends no index tensor on a stateless denoiser."""
    take = getattr(denoiser, "take", None)
    return take is not None and getattr(take, "__func__", None) is not DenoiserBase.take


def extra_rows_of(denoiser: Any) -> Any:
    """The :attr:`DenoiserBase.extra_rows` tally of ``denoiser`` (None for a plain function)."""
    return getattr(denoiser, "extra_rows", None)


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so a per-row ``[B]`` vector broadcasts against ``x``."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The PF-ODE derivative ``dx/dsigma = (x - D) / sigma`` (equal to the eps prediction)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def where_rows(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per-row select: rows where ``mask`` is true take ``a``, the others ``b``."""
    return torch.where(append_dims(mask, a.ndim), a, b)


def check_grid(sigmas: Tensor) -> Tensor:
    """Validate a sigma grid (host-side, once per call) and return it as float64 on the CPU."""
    if not isinstance(sigmas, Tensor):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    s = sigmas.detach().to("cpu", torch.float64)
    if s.ndim not in (1, 2) or s.shape[0] < 2:
        raise SamplerError(
            f"sigmas must have shape [N+1] or [N+1, B], N >= 1; got {tuple(s.shape)}"
        )
    if not bool(torch.isfinite(s).all()):
        raise SamplerError("sigmas contain NaN or Inf")
    if bool((s[1:] >= s[:-1]).any()) or bool((s < 0).any()):
        raise SamplerError("sigmas must be strictly decreasing and non-negative")
    return s


# The device grids of running sampler calls (Grid.compact), by storage address. Weak: an
# entry leaves with its call. Wrappers use it to compute grid-only quantities once per grid.
_LIVE_GRIDS: weakref.WeakValueDictionary[tuple, Tensor] = weakref.WeakValueDictionary()


def _storage_key(t: Tensor) -> tuple[torch.device, int]:
    return t.device, t.data_ptr() - t.storage_offset() * t.element_size()  # storage start


def grid_positions(sigma: Tensor) -> tuple[Tensor, tuple] | None:
    """The live device grid ``sigma`` is a view of, and where in it: ``(grid, (shape, stride,
    offset))`` such that ``table.as_strided(shape, stride, offset)`` reads, from any table
    computed elementwise on ``grid``, the entries at ``sigma``'s positions. None when
    ``sigma`` is not inside a live grid (then compute directly)."""
    grid = _LIVE_GRIDS.get(_storage_key(sigma))
    if grid is None or grid.dtype != sigma.dtype:
        return None
    offset = sigma.storage_offset() - grid.storage_offset()
    last = offset + sum((n - 1) * st for n, st in zip(sigma.shape, sigma.stride(), strict=True))
    if offset < 0 or last >= grid.numel() or min(sigma.stride(), default=0) < 0:
        return None
    if math.prod(sigma.shape) == 0:
        return None
    return grid, (tuple(sigma.shape), tuple(sigma.stride()), offset)


class Grid:
    """A sigma grid prepared once per sampler call.

    Holds the host copy (for branching on known values without a GPU->CPU sync) and a
    device copy of shape ``[N+1, B]`` whose rows are sliced per step.
    """

    def __init__(self, sigmas: Tensor, x: Tensor) -> None:
        self.host = check_grid(sigmas)
        batch = x.shape[0]
        if self.host.ndim == 2 and self.host.shape[1] != batch:
            raise SamplerError(
                f"per-row sigmas have {self.host.shape[1]} columns but x has {batch} rows"
            )
        dev = self.host.to(x.device, x.dtype, non_blocking=True)  # no host sync per call
        self.compact = dev  # [N+1] (shared by all rows) or [N+1, B]
        if dev.is_contiguous():
            _LIVE_GRIDS[_storage_key(dev)] = dev
        self.dev = dev if dev.ndim == 2 else dev[:, None].expand(-1, batch)
        self.steps = self.host.shape[0] - 1
        self.batch = batch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[int, Tensor, Tensor]]:
        for i in range(self.steps):
            yield i, self.dev[i], self.dev[i + 1]

    def per_step(self, fn: Callable[[Tensor, Tensor], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
        """``fn(sigma, sigma_next)`` for every step at once, as ``[N, B]`` device tensors.

        Grid-only quantities (per-step coefficients) are computed in one set of kernels
        per call, on the compact grid (a shared grid is expanded afterwards, not copied),
        instead of a set of kernels per step.
        """
        s = self.compact
        out = fn(s[:-1], s[1:])
        if s.ndim == 2:
            return out
        return tuple(v[:, None].expand(-1, self.batch) for v in out)

    def all_final(self, i: int) -> bool:
        """Whether every row's step ``i`` ends at sigma = 0 (known on the host)."""
        return bool((self.host[i + 1] == 0).all())

    def any_final(self, i: int) -> bool:
        return bool((self.host[i + 1] == 0).any())
