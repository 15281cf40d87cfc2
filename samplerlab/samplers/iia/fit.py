"""The IIA fit in pure torch: fine references, Gram sums and the least-squares solve.

For each coarse step ``i`` (Zhang, Niwa & Kleijn, ICLR 2024, eqs. 7, 15, 24): run the
coarse step of the form from the states ``x_i`` of the fitting samples, run ``M`` fine
steps of the same base solver from the same states (the reference), and choose the ``p``
scalars that minimise ``sum || anchor + sum_k c_k Q_k - reference ||^2`` over all samples
and pixels jointly: the normal equations ``G c = g`` with ``G_kl = <Q_k, Q_l>`` and
``g_k = <Q_k, reference - default update>`` (accumulated in float64). The fit is greedy:
every sample then advances with the fitted step, so ``x_{i+1}`` is the IIA sampler's own
state.

:class:`GreedyFit` is one shard's part (the fitting samples it holds): it fills per-sample
Gram rows, and ``finish_step`` sums them (after an optional all-reduce over shards) in
sample order and solves, so the result does not depend on the batch size or the number of
shards (bit for bit). :func:`fit_shard` runs it over all steps; the Lightning fit stage
(``samplerlab.iia``) drives the same object from ``Trainer.fit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core import Denoiser, SamplerError, describe, has_row_state, take_rows
from ..noise import PerSampleNoise
from .coefficients import IIACoefficients
from .form import IIAForm, StepTerms
from .forms import get_form

SPACINGS = ("auto", "sigma", "time", "logsnr")


def resolve_spacing(iia_form: IIAForm, spacing: str, vp: Any) -> str:
    """The fine-grid spacing: ``auto`` = the base solver's own time variable.

    EDM Heun integrates in ``t = sigma``. DDIM and DPM-Solver++ step in the model's time
    ``t`` (a continuous-time wrapper of the VP table); without a VP table, DDIM in EDM
    coordinates is Euler in sigma and DPM-Solver++ integrates in ``lambda = -log sigma``.
    """
    if spacing not in SPACINGS:
        raise SamplerError(f"unknown fine-grid spacing '{spacing}'; valid: {', '.join(SPACINGS)}")
    if spacing == "time" and vp is None:
        raise SamplerError("fine-grid spacing 'time' needs a denoiser with a VP table (vp)")
    if spacing != "auto":
        return spacing
    return iia_form.auto_spacing(vp)


def fine_grid(sigma: float, sigma_next: float, M: int, spacing: str, vp: Any = None) -> Tensor:
    """``[M+1]`` sub-grid of one coarse step, uniform in the solver's time.

    A step to sigma = 0 is split uniformly in sigma (time and log-SNR diverge there).
    """
    u = torch.linspace(0, 1, M + 1, dtype=torch.float64)
    s0, s1 = torch.tensor(sigma, dtype=torch.float64), torch.tensor(sigma_next, dtype=torch.float64)
    if spacing == "sigma" or sigma_next == 0:
        g = s0 + (s1 - s0) * u
    elif spacing == "logsnr":
        g = torch.exp(s0.log() + (s1.log() - s0.log()) * u)
    elif spacing == "time":
        t0, t1 = vp.t(s0[None]).double(), vp.t(s1[None]).double()
        g = vp.sigma(t0 + (t1 - t0) * u).double()
    else:
        raise SamplerError(f"unknown fine-grid spacing '{spacing}'; valid: {', '.join(SPACINGS)}")
    g[0], g[-1] = sigma, sigma_next
    if bool((g[1:] >= g[:-1]).any()):
        raise SamplerError(f"fine grid of step {sigma:g} -> {sigma_next:g} is not decreasing")
    return g


def gram_rows(quantities: Sequence[Tensor | None], target: Tensor) -> Tensor:
    """Per-row float64 sums ``[B, p*p + p + 1]``: ``<Q_k, Q_l>``, ``<Q_k, target>``, ``|target|^2``.

    Summing these rows in sample order makes the fit independent of batch size and of
    the number of processes (bit for bit). Missing quantities give zeros.
    """
    B, p = target.shape[0], len(quantities)
    y = target.reshape(B, -1).to(torch.float64)
    zero = torch.zeros_like(y)
    Q = torch.stack(
        [zero if q is None else q.reshape(B, -1).to(torch.float64) for q in quantities], 1
    )
    G = torch.einsum("bkn,bln->bkl", Q, Q)
    g = torch.einsum("bkn,bn->bk", Q, y)
    return torch.cat([G.reshape(B, p * p), g, y.square().sum(1, keepdim=True)], 1)


def gram(quantities: Sequence[Tensor | None], target: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 sums ``G_kl = <Q_k, Q_l>`` and ``g_k = <Q_k, target>`` over rows and pixels
    (:func:`gram_rows` summed over rows). Missing quantities (``None``) give zeros."""
    p = len(quantities)
    total = gram_rows(quantities, target).sum(0)
    return total[: p * p].reshape(p, p), total[p * p : p * p + p]


def solve(G: Tensor, g: Tensor, available: Sequence[bool], ridge: float = 1e-10) -> Tensor:
    """Ridge least squares ``(G + lam I) c = g`` on the available columns (others 0).

    ``lam = ridge * mean(diag G)`` (scale-free); all done in float64 on the host.
    """
    G, g = G.detach().to("cpu", torch.float64), g.detach().to("cpu", torch.float64)
    c = torch.zeros(g.shape[0], dtype=torch.float64)
    idx = torch.tensor([k for k, ok in enumerate(available) if ok], dtype=torch.long)
    if idx.numel() == 0:
        return c
    Gs, gs = G[idx][:, idx], g[idx]
    scale = float(Gs.diagonal().mean())
    if not math.isfinite(scale) or not bool(torch.isfinite(gs).all()):
        raise SamplerError("IIA least-squares system is not finite (NaN/Inf in the fitting solve)")
    if scale == 0.0:
        return c
    lam = ridge * scale
    c[idx] = torch.linalg.solve(Gs + lam * torch.eye(len(idx), dtype=torch.float64), gs)
    return c


def _rows(tree: Any, j: int) -> Any:
    if tree is None:
        return None
    if isinstance(tree, Tensor):
        return tree[j]
    return type(tree)(_rows(t, j) for t in tree)


def _stack(trees: list[Any]) -> Any:
    first = trees[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.stack(trees)
    return type(first)(_stack([t[m] for t in trees]) for m in range(len(first)))


class GreedyFit:
    """One shard's part of the greedy IIA fit of ``sampler`` on the grid ``sigmas``.

    ``seeds[k]`` seeds fitting sample ``k``'s initial noise (:class:`PerSampleNoise`), so a
    sample is the same on any shard; a conditioned ``denoiser`` (per-sample state, e.g.
    :class:`~samplerlab.samplers.conditioning.Guided` bound to ``len(seeds)`` condition rows)
    pairs sample ``k`` with its condition row ``k`` (:meth:`denoiser_for`). Per step ``i``:
    :meth:`start_step`, then :meth:`add_batch` for each batch of this shard's sample indices, then
    :meth:`finish_step` with the all-reduce that sums the Gram rows over shards.

    States are kept per sample (not recomputed): the current state and step history of
    this shard's samples, plus the quantities of the current step until the scalars are
    known, ``(p + 2)`` copies of a sample per fitting sample.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        sampler: str,
        sigmas: Tensor,
        seeds: Sequence[int],
        *,
        shape: Sequence[int],
        M: int = 3,
        r: int = 1,
        ridge: float = 1e-10,
        form: str = "default",
        spacing: str = "auto",
        dtype: torch.dtype = torch.float64,
        warm_start: bool = True,
    ) -> None:
        self.denoiser, self.iia_form = denoiser, get_form(sampler)
        self.host = sigmas.detach().to("cpu", torch.float64)
        self.seeds, self.shape = [int(s) for s in seeds], tuple(int(s) for s in shape)
        self.M, self.r, self.ridge, self.form = M, r, ridge, form
        self.dtype, self.warm_start = dtype, warm_start
        info = describe(denoiser)
        self.vp, self.prior_std = info.vp, info.prior_std
        self.spacing = resolve_spacing(self.iia_form, spacing, self.vp)
        self.p = self.iia_form.num_coefficients(form, r)
        self.c0 = self.iia_form.default_coefficients(self.host, form, r)
        self.coefficients = self.c0.clone()
        self.fitted = self.iia_form.fitted_steps(self.host, form)
        # Per-step sums ||target||^2 before and after the fitted correction.
        self.local_error = torch.zeros(len(self.c0), 2, dtype=torch.float64)
        self._state: dict[int, Tensor] = {}
        self._history: dict[int, Any] = {}
        self._pending: list[tuple[list[int], StepTerms]] = []
        # Per-sample Gram rows [num_samples, p*p + p + 1]; each shard fills its own rows, so
        # the all-reduce adds zeros only and the ordered sum is the same on any world size.
        width = self.p * self.p + self.p + 1
        self._rows = torch.zeros(len(self.seeds), width, dtype=torch.float64)

    @property
    def steps(self) -> int:
        return self.host.shape[0] - 1

    def start_step(self, device: torch.device | str = "cpu") -> None:
        self._pending = []
        self._rows = torch.zeros_like(self._rows, device=device)

    def initial(self, idx: list[int], device: torch.device | str = "cpu") -> Tensor:
        """The initial states ``z sqrt(sigma_0^2 + prior_std^2)`` of samples ``idx``."""
        noise = PerSampleNoise([self.seeds[k] for k in idx])
        z = noise.randn((len(idx), *self.shape), device=device, dtype=self.dtype)
        return z * math.sqrt(float(self.host[0]) ** 2 + self.prior_std**2)

    def denoiser_for(self, idx: list[int], device: torch.device | str) -> Denoiser:
        """The denoiser for a batch of fitting samples ``idx``: with per-sample conditioning
        (a (noise, condition) pair per fitting sample) row ``j`` gets sample ``idx[j]``'s
        condition row; a denoiser without per-sample state is used as it is."""
        if not has_row_state(self.denoiser):
            return self.denoiser
        return take_rows(self.denoiser, torch.tensor(idx, dtype=torch.long, device=device))

    @torch.no_grad()
    def add_batch(self, i: int, idx: list[int], device: torch.device | str = "cpu") -> None:
        """Coarse step ``i`` of samples ``idx`` and, on a fitted step, their Gram rows."""
        if not idx:
            return
        if i == 0:
            x, history = self.initial(idx, device), None
        else:
            x = torch.stack([self._state[k] for k in idx])
            history = _stack([self._history[k] for k in idx])
        B, host, f = len(idx), self.host, self.iia_form
        den = self.denoiser_for(idx, x.device)
        sigma = torch.full((B,), float(host[i]), device=x.device, dtype=x.dtype)
        sigma_next = torch.full((B,), float(host[i + 1]), device=x.device, dtype=x.dtype)
        final = bool(host[i + 1] == 0)
        terms = f.step(den, x, sigma, sigma_next, history, final=final, form=self.form, r=self.r)
        if bool(self.fitted[i]):
            # Fine reference: M steps of the same solver from the same state.
            sub = fine_grid(float(host[i]), float(host[i + 1]), self.M, self.spacing, self.vp)
            ref = f.fine_reference(den, x, sub, history, warm_start=self.warm_start)
            # Target: what the coefficients must add on top of the default update.
            target = ref - terms.combine(self.c0[i].tolist())
            rows = gram_rows(terms.quantities, target).to(self._rows.device)
            self._rows[torch.tensor(idx, device=self._rows.device)] = rows
        self._pending.append((idx, terms))

    def finish_step(self, i: int, all_reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Solve step ``i`` from the Gram rows of all shards (``all_reduce`` sums a tensor
        over shards; none for one shard) and advance this shard's samples."""
        p, c = self.p, self.c0[i]
        if bool(self.fitted[i]):
            rows = self._rows.clone()
            sums = (rows if all_reduce is None else all_reduce(rows)).cpu().sum(0)
            G, g, yy = sums[: p * p].reshape(p, p), sums[p * p : p * p + p], sums[-1]
            available = self.iia_form.available_columns(i, self.form, self.r)
            delta = solve(G, g, available, self.ridge)
            c = self.c0[i] + delta
            after = yy - 2 * (delta @ g) + delta @ G @ delta
            self.coefficients[i] = c
            self.local_error[i] = torch.stack([yy, after.clamp_min(0)])
        # Advance every sample of this shard with the (fitted) step.
        for idx, terms in self._pending:
            x_next = terms.combine(c.tolist()) if bool(self.fitted[i]) else terms.base
            for j, k in enumerate(idx):
                self._state[k] = x_next[j]
                self._history[k] = _rows(terms.history, j)
        self._pending = []

    def result(self, metadata: dict[str, Any] | None = None) -> IIACoefficients:
        """The fitted coefficients (with ``metadata``)."""
        return IIACoefficients(
            self.iia_form.name,
            self.host.clone(),
            self.coefficients.clone(),
            self.fitted.clone(),
            self.form,
            self.r,
            dict(metadata or {}),
        )


def shard_batches(indices: Sequence[int], batch_size: int, n_batches: int) -> list[list[int]]:
    """``n_batches`` batches of at most ``batch_size`` of ``indices`` (empty ones at the end:
    every shard runs the same number of batches)."""
    mine = [int(k) for k in indices]
    return [mine[b * batch_size : (b + 1) * batch_size] for b in range(n_batches)]


def fit_shard(
    fit: GreedyFit,
    indices: Sequence[int],
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    all_reduce: Callable[[Tensor], Tensor] | None = None,
) -> GreedyFit:
    """Run the whole greedy fit on this shard's fitting samples ``indices`` (in batches of
    ``batch_size``); ``all_reduce`` sums the Gram rows over shards at each fitted step."""
    batches = shard_batches(indices, batch_size, max(1, math.ceil(len(indices) / batch_size)))
    for i in range(fit.steps):
        fit.start_step(device)
        for idx in batches:
            fit.add_batch(i, idx, device)
        fit.finish_step(i, all_reduce)
    return fit
