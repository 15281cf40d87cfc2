"""Analytic models with exact denoisers: a Gaussian and a Gaussian mixture in any dimension.

For ``x = y + sigma n`` with ``y ~ N(mu, diag(s^2))`` the denoiser is
``D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)`` and the probability-flow ODE
``dx/dsigma = (x - D)/sigma`` has the closed form
``x(sigma) = mu + sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)) (x(sigma_0) - mu)``.
A mixture diffused to ``sigma`` is ``sum_k w_k N(mu_k, diag(s_k^2) + sigma^2 I)``; its
denoiser is the responsibility-weighted sum of the component denoisers (Tweedie's formula,
Efron 2011, "Tweedie's Formula and Selection Bias": ``D = x + sigma^2 grad log p``).

Each is a :class:`~samplerlab.samplers.core.ModelBase`: it declares its
:class:`~samplerlab.samplers.core.ModelInfo` through plain attributes (``sigma_min``,
``sigma_max``, ``prior_std``, ``vp``, ``data_shape``; no network). Both carry a linear-beta
1000-step VP table (``vp``) by default, so every schedule, including the discrete
diffusers spacings and the full DDPM chain, applies to them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .samplers.core import ModelBase, SamplerError, append_dims, where_rows
from .samplers.schedules import DiscreteVP, betas_for


def _default_vp() -> DiscreteVP:
    return DiscreteVP.from_betas(betas_for("linear", 1000))


class Gaussian(ModelBase):
    """``N(mu, diag(s^2))`` with exact denoiser, samples and PF-ODE solution."""

    def __init__(self, mu: Tensor, s: Tensor, vp: DiscreteVP | None = None) -> None:
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.s = torch.as_tensor(s, dtype=torch.float64)
        if self.mu.shape != self.s.shape or self.mu.ndim != 1:
            raise SamplerError("mu and s must be 1-D tensors of the same length")
        self.vp = vp if vp is not None else _default_vp()
        self.sigma_min, self.sigma_max = self.vp.sigma_min, self.vp.sigma_max
        self.prior_std = 1.0
        self.data_shape = (self.mu.numel(),)

    @property
    def dim(self) -> int:
        return self.mu.numel()

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        mu, s2 = self.mu.to(x), self.s.to(x) ** 2
        sig2 = append_dims(sigma.to(x.dtype), x.ndim) ** 2
        return mu + s2 / (s2 + sig2) * (x - mu)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.mu + self.s * z

    def ode_solution(
        self, x: Tensor, sigma_from: Tensor | float, sigma_to: Tensor | float
    ) -> Tensor:
        """The exact PF-ODE state at ``sigma_to`` started from ``x`` at ``sigma_from``."""
        mu, s2 = self.mu.to(x), self.s.to(x) ** 2
        a = append_dims(torch.as_tensor(sigma_from, dtype=x.dtype).expand(x.shape[0]), x.ndim)
        b = append_dims(torch.as_tensor(sigma_to, dtype=x.dtype).expand(x.shape[0]), x.ndim)
        return mu + ((s2 + b**2) / (s2 + a**2)).sqrt() * (x - mu)


class GaussianMixture(ModelBase):
    """``sum_k w_k N(mu_k, diag(s_k^2))`` with exact denoiser and exact samples."""

    def __init__(
        self,
        weights: Tensor,
        means: Tensor,
        stds: Tensor,
        vp: DiscreteVP | None = None,
        *,
        edm: bool = False,
    ) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)
        K = self.weights.numel()
        if self.means.ndim != 2 or self.means.shape[0] != K or self.stds.shape != self.means.shape:
            raise SamplerError("means and stds must be [K, d] with K = len(weights)")
        if bool((self.weights <= 0).any()) or bool((self.stds <= 0).any()):
            raise SamplerError("weights and stds must be positive")
        self.weights = self.weights / self.weights.sum()
        if edm:
            # EDM parameterisation: no time table, sigma in [0.002, 80], prior N(0, sigma_max^2 I).
            if vp is not None:
                raise SamplerError("an EDM-parameterised mixture has no VP table (vp=None)")
            self.vp = None
            self.sigma_min, self.sigma_max, self.prior_std = 0.002, 80.0, 0.0
        else:
            self.vp = vp if vp is not None else _default_vp()
            self.sigma_min, self.sigma_max = self.vp.sigma_min, self.vp.sigma_max
            self.prior_std = 1.0
        self.data_shape = (self.means.shape[1],)

    @classmethod
    def default(cls, dim: int = 8, components: int = 6, seed: int = 0) -> GaussianMixture:
        """The benchmark mixture: well-separated, anisotropic, narrow modes (curved ODE paths)."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=g, dtype=torch.float64)
        means = 1.2 * means / means.norm(dim=1, keepdim=True) * math.sqrt(dim) ** 0.5
        stds = 0.05 + 0.25 * torch.rand(components, dim, generator=g, dtype=torch.float64)
        weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
        return cls(weights, means, stds)

    @classmethod
    def random(
        cls,
        dim: int,
        components: int,
        *,
        spread: float = 1.0,
        std_range: tuple[float, float] = (0.05, 0.3),
        seed: int = 0,
        edm: bool = False,
        betas: str = "linear",
    ) -> GaussianMixture:
        """A random mixture: means on a sphere of radius ``spread * dim**0.25``, per-dimension
        stds uniform in ``std_range``, weights uniform in [0.5, 1.5] (normalised); a VP table
        from ``betas`` (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``) unless ``edm``."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=g, dtype=torch.float64)
        means = spread * means / means.norm(dim=1, keepdim=True) * dim**0.25
        lo, hi = std_range
        stds = lo + (hi - lo) * torch.rand(components, dim, generator=g, dtype=torch.float64)
        weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
        vp = None if edm else DiscreteVP.from_betas(betas_for(betas, 1000))
        return cls(weights, means, stds, vp, edm=edm)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _posterior(self, flat: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Component responsibilities ``[B, K]``, ``x - mu_k`` and ``s_k^2 + sigma^2``."""
        var = self.stds.to(flat)[None] ** 2 + append_dims(sigma.to(flat.dtype), 3) ** 2
        diff = flat[:, None, :] - self.means.to(flat)[None]  # [B, K, d]
        logp = -0.5 * ((diff**2 / var) + torch.log(2 * math.pi * var)).sum(-1)
        return torch.softmax(logp + self.weights.to(flat).log(), dim=1), diff, var

    def responsibilities(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self._posterior(x, sigma)[0]

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        r, diff, var = self._posterior(flat, sigma)
        s2 = self.stds.to(flat)[None] ** 2
        per_component = self.means.to(flat)[None] + s2 / var * diff  # [B, K, d]
        return (r[..., None] * per_component).sum(1).reshape(x.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k] * z


class ClassConditionalMixture(GaussianMixture):
    """A Gaussian mixture whose components are the classes: ``p(y = k) = w_k``,
    ``p(x | y = k) = N(mu_k, diag(s_k^2))``; ``p(x)`` is the mixture.

    A conditional denoiser ``D(x, sigma, cond)``: ``cond`` holds one label per row of ``x``;
    label ``k >= 0`` gives the class's Gaussian denoiser
    ``mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)``, a negative label (:attr:`NULL`, the
    "no condition" value) the mixture's, as does a call without ``cond``. The conditional
    PF-ODE of each class is a Gaussian's, solved exactly by :meth:`ode_solution`.
    """

    NULL = -1

    def __call__(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        marginal = super().__call__(x, sigma)
        if cond is None:
            return marginal
        flat = x.reshape(x.shape[0], -1)
        y = cond.reshape(-1).long()
        k = y.clamp(min=0)
        mu, s2 = self.means.to(flat)[k], self.stds.to(flat)[k] ** 2
        sig2 = append_dims(sigma.to(flat.dtype), 2) ** 2
        per_class = (mu + s2 / (s2 + sig2) * (flat - mu)).reshape(x.shape)
        return where_rows(y < 0, marginal, per_class)

    def component(self, k: int) -> Gaussian:
        """Class ``k`` as a :class:`Gaussian` (same VP table)."""
        return Gaussian(self.means[k], self.stds[k], self.vp)

    def sample_class(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples of ``p(x | y)``, one per label."""
        k = torch.as_tensor(labels).reshape(-1).long()
        z = torch.randn(k.numel(), self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k] * z

    def ode_solution(
        self, x: Tensor, labels: Tensor, sigma_from: Tensor | float, sigma_to: Tensor | float
    ) -> Tensor:
        """The exact conditional PF-ODE state at ``sigma_to`` of each row's class (labels
        ``>= 0``), started from ``x`` at ``sigma_from``."""
        k = torch.as_tensor(labels, device=x.device).reshape(-1).long()
        if bool((k < 0).any()) or bool((k >= self.weights.numel()).any()):
            raise SamplerError(f"labels must be classes in [0, {self.weights.numel()})")
        mu, s2 = self.means.to(x)[k], self.stds.to(x)[k] ** 2
        a = append_dims(torch.as_tensor(sigma_from, dtype=x.dtype).expand(x.shape[0]), x.ndim)
        b = append_dims(torch.as_tensor(sigma_to, dtype=x.dtype).expand(x.shape[0]), x.ndim)
        return mu + ((s2 + b**2) / (s2 + a**2)).sqrt() * (x - mu)


# The panel on which defaults are chosen (defaults are chosen on a panel, not on one
# model): mixtures of several dimensions, component counts and spreads, on VP tables and in
# the EDM parameterisation. HOLDOUT models are never used to choose anything; benchmarks
# report them separately as the out-of-sample check.
PANEL: dict[str, dict] = {
    "vp-d2-k4": dict(dim=2, components=4, spread=1.5, seed=11),
    "vp-d8-k6-cos": dict(dim=8, components=6, spread=1.2, seed=12, betas="squaredcos_cap_v2"),
    "vp-d16-k3-wide": dict(dim=16, components=3, spread=0.8, std_range=(0.2, 0.8), seed=13),
    "vp-d32-k10": dict(dim=32, components=10, spread=1.0, seed=14),
    "edm-d4-k5": dict(dim=4, components=5, spread=1.0, seed=15, edm=True),
    "edm-d16-k8-narrow": dict(
        dim=16, components=8, spread=1.3, std_range=(0.02, 0.1), seed=16, edm=True
    ),
}
HOLDOUT: dict[str, dict] = {
    "holdout-vp-d64-k8": dict(dim=64, components=8, spread=1.0, seed=101),
    "holdout-edm-d24-k6": dict(dim=24, components=6, spread=1.1, seed=102, edm=True),
}


def panel(names: str | list[str] = "panel") -> dict[str, GaussianMixture]:
    """Panel models by name: ``"panel"`` (choose defaults here), ``"holdout"`` (report only),
    ``"all"``, or a list of names from :data:`PANEL` / :data:`HOLDOUT`."""
    specs = {**PANEL, **HOLDOUT}
    if names == "panel":
        keys = list(PANEL)
    elif names == "holdout":
        keys = list(HOLDOUT)
    elif names == "all":
        keys = list(specs)
    else:
        keys = [names] if isinstance(names, str) else list(names)
    unknown = [k for k in keys if k not in specs]
    if unknown:
        raise SamplerError(f"unknown panel model(s) {unknown}; valid: {', '.join(specs)}")
    return {k: GaussianMixture.random(**specs[k]) for k in keys}


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size sample sets (exact 1-D W2)."""
    if a.shape != b.shape:
        raise SamplerError(f"sample sets differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = (a.cpu() @ dirs).sort(0)
    pb, _ = (b.cpu() @ dirs).sort(0)
    return float(((pa - pb) ** 2).mean().sqrt())
