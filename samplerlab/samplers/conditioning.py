"""Per-sample conditioning and classifier-free guidance as denoiser wrappers.

A *conditional* denoiser is ``D(x, sigma, cond) -> x0_hat`` where ``cond`` holds one row per
row of ``x`` (class labels ``[B]``, text embeddings ``[B, L, E]``, or a dict of such
tensors). :class:`Conditioned` binds per-sample conditioning (first dimension: the number
of samples ``n``) to it and is itself an ordinary ``D(x, sigma)``: every sampler runs it
unchanged. Row ``j`` of a call is sample ``j mod n`` (the batch, or whole copies of it);
samplers that evaluate a gathered subset of rows name the rows' samples through
:func:`core.take_rows`, which calls :meth:`Conditioned.take`: per-sample conditioning is
the per-row state of the denoiser contract (:class:`~.core.WrapperBase`). Both wrappers
declare the wrapped model's :class:`~.core.ModelInfo`. No host sync per call.

:class:`Guided` is classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion
Guidance", Eq. 6, written for the denoiser): ``D = D_u + w (D_c - D_u)`` with ``D_c`` the
conditional and ``D_u`` the unconditional prediction, both rows in one batched network
call; optionally only for ``sigma`` in an interval (Kynkäänniemi et al. 2024, "Applying
guidance in a limited interval improves sample and distribution quality in diffusion
models", Sec. 3), and with one scale per sample.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .core import (
    ModelInfo,
    SamplerError,
    WrapperBase,
    append_dims,
    describe,
    extra_rows_of,
    take_rows,
    where_rows,
)

Cond = Tensor | Mapping[str, Tensor]

__all__ = ["Cond", "Conditioned", "Guided", "RowTally", "condition"]


class RowTally:
    """Network rows a wrapper evaluated beyond its input rows (shared by its views).

    :class:`~samplerlab.samplers.denoisers.CountingDenoiser` adds them to its row count, so
    the NFE per sample of a guided run counts both the conditional and the unconditional rows.
    """

    def __init__(self) -> None:
        self.count = 0


def rows_of(c: Cond) -> int:
    """The number of rows (first dimension) of a conditioning value."""
    if isinstance(c, Tensor):
        return c.shape[0]
    return next(iter(c.values())).shape[0]


def _map(c: Cond, fn: Callable[[Tensor], Tensor]) -> Cond:
    return fn(c) if isinstance(c, Tensor) else {k: fn(v) for k, v in c.items()}


def _cat(a: Cond, b: Cond) -> Cond:
    if isinstance(a, Tensor):
        return torch.cat([a, b])  # type: ignore[list-item]
    return {k: torch.cat([v, b[k]]) for k, v in a.items()}  # type: ignore[index]


def _align(c: Cond, m: int, what: str) -> Cond:
    """``c`` for a call of ``m`` rows: row ``j`` is row ``j mod rows(c)`` (one row: all)."""
    r = rows_of(c)
    if r == m:
        return c
    if r == 1:
        return _map(c, lambda v: v.expand(m, *v.shape[1:]))
    if m % r:
        raise SamplerError(
            f"{what} has {r} rows but the network call has {m} rows (neither the batch nor "
            "whole copies of it, and the sampler did not name the rows' samples)"
        )
    return _map(c, lambda v: v.repeat(m // r, *(1,) * (v.ndim - 1)))


class Conditioned(WrapperBase):
    """``D(x, sigma)`` from a conditional ``D(x, sigma, cond)`` and per-sample ``cond``.

    ``cond`` is a tensor or a dict of tensors whose first dimension is the number of
    samples ``n``; each network call receives the rows of ``cond`` that belong to its rows
    of ``x``. Its :attr:`info` is the inner denoiser's.
    """

    def __init__(self, denoiser: Callable[..., Tensor], cond: Cond) -> None:
        self.inner = denoiser
        self.n = rows_of(cond)
        # Per-sample state: name -> value with n rows (per sample) or 1 row (shared).
        self.state: dict[str, Cond] = {"cond": cond}
        self._cache: dict[tuple[str, torch.device], Cond] = {}

    @property
    def info(self) -> ModelInfo:
        return describe(self.inner)

    @property
    def extra_rows(self) -> Any:  # type: ignore[override]
        return extra_rows_of(self.inner)

    def _on(self, key: str, device: torch.device) -> Cond:
        """``state[key]`` on ``device``, copied there once."""
        hit = self._cache.get((key, device))
        if hit is None:
            hit = _map(self.state[key], lambda v: v.to(device, non_blocking=True))
            self._cache[(key, device)] = hit
        return hit

    def take(self, rows: Tensor) -> Conditioned:
        """This denoiser for a call whose row ``j`` is sample ``rows[j]`` (core.take_rows)."""
        view = copy.copy(self)
        view.inner = take_rows(self.inner, rows)
        view.n = rows.shape[0]
        view.state = {}
        for key, value in self.state.items():
            if rows_of(value) == self.n:  # per sample: gather the named rows
                view.state[key] = _map(self._on(key, rows.device), lambda v: v[rows % self.n])
            else:  # one row shared by every sample
                view.state[key] = value
        view._cache = {}
        return view

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        cond = _align(self._on("cond", x.device), x.shape[0], "cond")
        return self.inner(x, sigma, cond)


class Guided(Conditioned):
    """Classifier-free guidance ``D = D_u + w (D_c - D_u)`` (Ho & Salimans 2022, Eq. 6).

    Args:
        denoiser: a conditional ``D(x, sigma, cond)``.
        cond: per-sample conditioning (first dimension ``n``).
        uncond: the model's "no condition" value (a null label, an empty-prompt
            embedding): one row for every sample, or ``n`` rows.
        scale: ``w``, a number or one per sample (``[n]``); ``w = 1`` is ``D_c``.
        interval: ``(sigma_lo, sigma_hi)``: guide only where ``sigma_lo < sigma <= sigma_hi``
            (Kynkäänniemi et al. 2024, Sec. 3); elsewhere ``D = D_c``.
        skip_outside: evaluate the unconditional rows only for rows that are guided (scale
            not 1, inside the interval). Choosing the rows reads the mask on the host: free
            for CPU tensors, one device sync per call on an accelerator. ``None`` (default)
            skips on the CPU only; on an accelerator every row then pays for both rows and
            the unguided rows take ``D_c`` exactly.

    Each call evaluates the conditional rows ``x`` and the unconditional rows in one
    network call (one round); the extra rows are counted in :attr:`extra_rows` (NFE per
    sample: 2 per guided evaluation). Combining denoiser outputs equals combining the
    networks' eps (or v) predictions, since ``D`` is affine in them at fixed ``x, sigma``;
    a model that clamps its ``x0_hat`` (``clip_denoised``) is clamped per branch, before the
    combination.
    """

    extra_rows: RowTally = None  # type: ignore[assignment]  # set per instance

    def __init__(
        self,
        denoiser: Callable[..., Tensor],
        cond: Cond,
        uncond: Cond,
        scale: float | Tensor,
        *,
        interval: tuple[float, float] | None = None,
        skip_outside: bool | None = None,
    ) -> None:
        super().__init__(denoiser, cond)
        self.state["uncond"] = uncond
        self.state["scale"] = torch.as_tensor(scale, dtype=torch.float64).reshape(-1)
        self.interval = interval
        self.skip_outside = skip_outside
        self.extra_rows = RowTally()

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        m, dev = x.shape[0], x.device
        cond = _align(self._on("cond", dev), m, "cond")
        uncond = _align(self._on("uncond", dev), m, "uncond")
        w = _align(self._on("scale", dev), m, "guidance").to(x.dtype)
        # Rows that are guided: a scale other than 1, and sigma inside the interval.
        active = w != 1
        if self.interval is not None:
            lo, hi = self.interval
            active = active & (sigma > lo) & (sigma <= hi)
        skip = dev.type == "cpu" if self.skip_outside is None else self.skip_outside
        if skip:
            # Only the guided rows pay for an unconditional row (the mask read on the host).
            idx = active.nonzero().squeeze(1)
            both = self.inner(
                torch.cat([x, x[idx]]),
                torch.cat([sigma, sigma[idx]]),
                _cat(cond, _map(uncond, lambda v: v[idx])),
            )
            d_c, d_u = both[:m], both[m:]
            self.extra_rows.count += idx.shape[0]
            guided = d_u + append_dims(w[idx], x.ndim) * (d_c[idx] - d_u)
            return d_c.index_copy(0, idx, guided)
        # Conditional and unconditional rows of every sample in one network call.
        both = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), _cat(cond, uncond))
        d_c, d_u = both[:m], both[m:]
        self.extra_rows.count += m
        # D = D_u + w (D_c - D_u) on the guided rows, D_c exactly on the others.
        return where_rows(active, d_u + append_dims(w, x.ndim) * (d_c - d_u), d_c)


def _check_value(c: Any, key: str, n: int | None, like: Cond | None = None) -> Cond:
    """A conditioning value: a tensor or a non-empty dict of tensors, rows ``n`` (or 1)."""
    if isinstance(c, Mapping):
        if not c or not all(isinstance(k, str) for k in c):
            raise SamplerError(f"{key} must be a tensor or a non-empty dict of tensors")
        items = dict(c)
    elif isinstance(c, Tensor):
        items = {"": c}
    else:
        raise SamplerError(f"{key} must be a tensor or a dict of tensors, got {type(c).__name__}")
    for k, v in items.items():
        name = f"{key}[{k!r}]" if k else key
        if not isinstance(v, Tensor) or v.ndim == 0:
            raise SamplerError(f"{name} must be a tensor with one row per sample (ndim >= 1)")
        if n is not None and v.shape[0] not in ((n,) if like is None else (1, n)):
            want = f"{n}" if like is None else f"1 or {n}"
            raise SamplerError(f"{name} has {v.shape[0]} rows; it needs {want} (the samples)")
    rows = {v.shape[0] for v in items.values()}
    if len(rows) > 1:
        raise SamplerError(f"{key}: the tensors' first dimensions differ ({sorted(rows)})")
    if like is not None:
        ref = {"": like} if isinstance(like, Tensor) else dict(like)
        if set(ref) != set(items):
            raise SamplerError(f"{key} must have the keys of cond ({', '.join(sorted(ref))})")
        for k, v in items.items():
            name = f"{key}[{k!r}]" if k else key
            if v.shape[1:] != ref[k].shape[1:] or v.dtype != ref[k].dtype:
                raise SamplerError(
                    f"{name} is {v.dtype} {tuple(v.shape[1:])} per row but cond is "
                    f"{ref[k].dtype} {tuple(ref[k].shape[1:])}"
                )
    return c if isinstance(c, Tensor) else items


def _takes_cond(denoiser: Any) -> bool:
    """Whether ``denoiser(x, sigma, cond)`` can bind (True when it cannot be told)."""
    try:
        sig = inspect.signature(denoiser)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind(None, None, None)
    except TypeError:
        return False
    return True


def condition(
    denoiser: Callable[..., Tensor],
    n: int,
    *,
    cond: Cond | None = None,
    guidance: float | Tensor | None = None,
    uncond: Cond | None = None,
    guidance_interval: tuple[float, float] | None = None,
    skip_outside: bool | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """The denoiser :func:`~samplerlab.samplers.api.sample` runs for ``n`` samples: the
    model itself without ``cond``; :class:`Conditioned` with ``cond`` and no guidance (or
    ``guidance=1``); :class:`Guided` otherwise. Inputs are checked here, once."""
    if cond is None:
        for key, v in (("guidance", guidance), ("uncond", uncond)):
            if v is not None:
                raise SamplerError(f"{key}= needs cond= (the per-sample conditioning)")
        if guidance_interval is not None:
            raise SamplerError("guidance_interval= needs cond= and guidance=")
        return denoiser
    cond = _check_value(cond, "cond", n)
    if not _takes_cond(denoiser):
        raise SamplerError(
            "cond= needs a conditional denoiser D(x, sigma, cond) (from_eps / from_v / "
            "from_x0 / EDMDenoiser / from_diffusers models take it); this one takes (x, sigma)"
        )
    if guidance is None:
        if guidance_interval is not None:
            raise SamplerError("guidance_interval= needs guidance=")
        return Conditioned(denoiser, cond)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float, Tensor)):
        raise SamplerError(f"guidance must be a number or a tensor of {n} scales, got {guidance!r}")
    w = torch.as_tensor(guidance).detach().to("cpu", torch.float64).reshape(-1)
    if w.numel() not in (1, n) or torch.as_tensor(guidance).ndim > 1:
        raise SamplerError(f"guidance must be a number or a tensor of {n} scales (one per sample)")
    if not bool(torch.isfinite(w).all()):
        raise SamplerError("guidance contains NaN or Inf")
    if guidance_interval is not None:
        try:
            lo, hi = (float(v) for v in guidance_interval)
        except (TypeError, ValueError):
            raise SamplerError(
                f"guidance_interval must be (sigma_lo, sigma_hi), got {guidance_interval!r}"
            ) from None
        if not (0 <= lo < hi) or math.isnan(hi):
            raise SamplerError(f"guidance_interval needs 0 <= sigma_lo < sigma_hi, got {lo}, {hi}")
        guidance_interval = (lo, hi)
    if bool((w == 1).all()):
        # Guidance 1 is the conditional model: one row per sample, no unconditional call.
        return Conditioned(denoiser, cond)
    if uncond is None:
        raise SamplerError(
            "guidance= needs uncond= (the model's 'no condition' value: a null label, an "
            "empty-prompt embedding; one row, or one per sample)"
        )
    uncond = _check_value(uncond, "uncond", n, like=cond)
    return Guided(denoiser, cond, uncond, w, interval=guidance_interval, skip_outside=skip_outside)
