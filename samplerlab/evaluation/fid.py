"""The Fréchet distance between feature Gaussians, and its bootstrap uncertainty.

FID (Heusel et al. 2017, eq. 6) between ``N(mu_1, S_1)`` and ``N(mu_2, S_2)``::

    d^2 = |mu_1 - mu_2|^2 + Tr(S_1) + Tr(S_2) - 2 Tr((S_1 S_2)^{1/2})

``Tr((S_1 S_2)^{1/2})`` is computed as the sum of the square roots of the eigenvalues of the
symmetric positive semi-definite ``S_1^{1/2} S_2 S_1^{1/2}`` (same spectrum as ``S_1 S_2``),
in float64 with ``torch.linalg.eigh``: no private torchmetrics API, no complex ``sqrtm``.

The uncertainty of a FID row is a bootstrap over the generated features (Efron 1979): the
reference statistics are fixed (every sampler is scored against the same real set), so the
only random part that differs between samplers is the generated sample; resampling its
``n`` features with replacement ``B`` times and taking the standard deviation of the ``B``
FIDs estimates the FID's sampling noise at this ``n`` without drawing new samples.
"""

from __future__ import annotations

import torch
from torch import Tensor


def stats_of(features: Tensor) -> dict[str, Tensor]:
    """Feature sums (the DDP-reducible form): ``sum [F]``, ``cov_sum [F, F]``, ``n``."""
    f = features.double()
    return {"sum": f.sum(0), "cov_sum": f.t() @ f, "n": torch.tensor(f.shape[0], dtype=torch.long)}


def moments(s: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance from feature sums."""
    n = s["n"].double()
    mu = s["sum"].double() / n
    cov = (s["cov_sum"].double() - n * torch.outer(mu, mu)) / (n - 1)
    return mu, cov


def _psd_sqrt(cov: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((cov + cov.t()) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.t()


def frechet_distance(
    mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor, *, sqrt_cov1: Tensor | None = None
) -> float:
    """The squared Fréchet distance between two Gaussians (float64).

    ``sqrt_cov1``: ``cov1^{1/2}`` if already computed (the bootstrap reuses it).
    """
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    root = _psd_sqrt(cov1) if sqrt_cov1 is None else sqrt_cov1
    inner = root @ cov2 @ root
    tr_covmean = torch.linalg.eigvalsh((inner + inner.t()) / 2).clamp_min(0).sqrt().sum()
    d = (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * tr_covmean
    return float(d)


def fid_from_stats(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """FID between two sets given as feature sums (:func:`stats_of`)."""
    return frechet_distance(*moments(a), *moments(b))


def bootstrap_fid_std(
    real: dict[str, Tensor], features: Tensor, repeats: int, seed: int = 0
) -> float | None:
    """Standard deviation of the FID over ``repeats`` bootstrap resamples of ``features``
    (``[n, F]``, the generated set) against the fixed ``real`` statistics.

    The resamples are drawn as multinomial counts from a generator seeded by ``seed`` (the
    same on every DDP rank, so every rank gets the same answer). Computed on the features'
    device; with fewer samples than features (``n <= F``, e.g. Inception's 2048) the trace
    term comes from the ``n x n`` Gram matrix, whose non-zero spectrum is that of
    ``S_r^{1/2} S_b S_r^{1/2}``. ``None`` when ``repeats < 2`` or ``n < 2``.
    """
    n, nf = features.shape
    if repeats < 2 or n < 2:
        return None
    f = features.double()
    mu_r, cov_r = (t.to(f.device) for t in moments(real))
    root = _psd_sqrt(cov_r)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(repeats):
        # One resample: how often each generated sample is drawn (n draws with replacement).
        w = torch.bincount(torch.randint(0, n, (n,), generator=gen), minlength=n).double()
        w = w.to(f.device)
        # Its moments: weighted mean; covariance X^T X / (n - 1), X_i = sqrt(w_i)(f_i - mu).
        mu = (w @ f) / n
        x = (f - mu) * w.sqrt()[:, None]
        tr_cov = x.pow(2).sum() / (n - 1)
        m = x @ root  # [n, F]: S_r^{1/2} S_b S_r^{1/2} = m^T m / (n - 1)
        small = m @ m.t() if n <= nf else m.t() @ m
        eig = torch.linalg.eigvalsh((small + small.t()) / (2 * (n - 1)))
        tr_covmean = eig.clamp_min(0).sqrt().sum()
        d = (mu_r - mu).pow(2).sum() + torch.trace(cov_r) + tr_cov - 2 * tr_covmean
        out.append(d)
    return float(torch.stack(out).std())
