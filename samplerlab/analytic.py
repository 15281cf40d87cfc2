"""Analytic models with exact denoisers: a Gaussian and a Gaussian mixture in any dimension.

For ``x = y + sigma n`` with ``y ~ N(mu, diag(s^2))`` the denoiser is
``D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)`` and the probability-flow ODE
``dx/dsigma = (x - D)/sigma`` has the closed form
``x(sigma) = mu + sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)) (x(sigma_0) - mu)``.
A mixture diffused to ``sigma`` is ``sum_k w_k N(mu_k, diag(s_k^2) + sigma^2 I)``; its
denoiser is the responsibility-weighted sum of the component denoisers (Tweedie).

Both carry a linear-beta 1000-step VP table (``vp``) so every schedule, including the
discrete diffusers spacings and the full DDPM chain, applies to them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .samplers.core import SamplerError, append_dims
from .samplers.schedules import DiscreteVP, betas_for


def _default_vp() -> DiscreteVP:
    return DiscreteVP.from_betas(betas_for("linear", 1000))


class Gaussian:
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


class GaussianMixture:
    """``sum_k w_k N(mu_k, diag(s_k^2))`` with exact denoiser and exact samples."""

    def __init__(
        self, weights: Tensor, means: Tensor, stds: Tensor, vp: DiscreteVP | None = None
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
