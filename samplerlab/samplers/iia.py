"""IIA: improved integration approximation (Zhang, Niwa & Kleijn, ICLR 2024).

Each coarse step of a base solver gets a few per-step *scalar* coefficients in front of
quantities the step already computes; the scalars are fitted once by least squares so
that the coarse step matches ``M`` fine steps of the same solver (see
:mod:`samplerlab.iia`). Sampling cost equals the base solver's.

Forms (``p`` scalars per step, ``c_k`` the fitted scalars, ``Q_k`` the quantities)::

    iia_ddim      x_{i+1} = DDIM(x_i) + c_0 (D_i - D_{i-1}) + c_1 (e_i - e_{i-1})   eq. 6, i >= 1
    iia_ddim/guided        = DDIM(x_i) + c_0 e_i                                   eq. 8, i >= 0
    iia_dpmpp_2m  x_{i+1} = DPM++2M(x_i) + c_0 x_i + c_1 D_i                      eq. 23, i >= 1
    iia_edm       x_{i+1} = x_i + sum_k b^eps_k (x_{i-k} - D_{i-k})
                                  + b^D_k (D_{i-k} - D~_{i-k+1})              eqs. 17-19
    biia_edm      x_{i+1} = x_i + sum_k gamma_k (t_{i+1} - t_i) avg-slope_{i-k}    eq. 13

EDM forms fit steps ``1 .. N-2`` (step 0 is plain Heun, the last step to sigma = 0 plain
Euler); their defaults ``b^eps_0 = (t_{i+1}-t_i)/t_i``, ``b^D_0 = (t_{i+1}-t_i)/(2 t_{i+1})``
and ``gamma_0 = 1`` reproduce EDM's Heun step (Lemma 1).

**Coordinates.** The state here is ``x = z / alpha`` (EDM / VE coordinates), the paper's
DDIM and DPM-Solver++ forms are written for the VP state ``z``. The quantities ``D`` (x0
prediction) and ``e`` (eps prediction) are identical in both; dividing the VP update by
``alpha_{i+1}`` turns eq. 6 into the form above with ``c = phi / alpha_{i+1}`` and eq. 23
(whose ``z_i = alpha_i x_i``) into it with ``c_0 = varphi_0 alpha_i / alpha_{i+1}``,
``c_1 = varphi_1 / alpha_{i+1}``. The least-squares objective in VP coordinates is
``alpha_{i+1}^2`` times ours, so the fitted scalars are the same minimiser, only
reparametrised; :meth:`IIACoefficients.vp_coefficients` converts them to the paper's.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .core import Denoiser, Grid, SamplerError, append_dims, describe, to_d
from .ddim import sample_ddim, step_euler
from .dpm_solver import step_dpmpp_2m
from .edm import heun_parts, sample_edm_heun
from .noise import NoiseSource

# IIA sampler name -> base sampler name.
BASES: dict[str, str] = {
    "iia_ddim": "ddim",
    "iia_dpmpp_2m": "dpmpp_2m",
    "iia_edm": "edm_heun",
    "biia_edm": "edm_heun",
}
FORMS: dict[str, tuple[str, ...]] = {
    "iia_ddim": ("default", "guided"),
    "iia_dpmpp_2m": ("default",),
    "iia_edm": ("default",),
    "biia_edm": ("default",),
}
SPACINGS = ("auto", "sigma", "time", "logsnr")


def check_sampler(name: str) -> str:
    """``name`` if it is an IIA sampler, else one clear error."""
    if name not in BASES:
        raise SamplerError(f"'{name}' is not an IIA sampler; valid: {', '.join(BASES)}")
    return name


def num_coefficients(name: str, form: str = "default", r: int = 1) -> int:
    """Scalars per step ``p`` of an IIA form."""
    check_sampler(name)
    if name == "iia_ddim":
        return 1 if form == "guided" else 2
    if name == "iia_dpmpp_2m":
        return 2
    return 2 * (r + 1) if name == "iia_edm" else r + 1


def fitted_steps(name: str, sigmas: Tensor, form: str = "default") -> Tensor:
    """Host bool mask ``[N]``: which coarse steps carry coefficients."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    n = s.shape[0] - 1
    i = torch.arange(n)
    if name == "iia_ddim" and form == "guided":
        return torch.ones(n, dtype=torch.bool)
    if name in ("iia_ddim", "iia_dpmpp_2m"):
        return i >= 1
    # EDM forms: not step 0 (plain Heun), not a step to sigma = 0 (plain Euler).
    return (i >= 1) & (s[1:] > 0)


def available_columns(name: str, i: int, form: str = "default", r: int = 1) -> list[bool]:
    """Which of the ``p`` quantities exist at step ``i`` (history needs earlier steps)."""
    p = num_coefficients(name, form, r)
    if name == "iia_ddim":
        return [form == "guided" or i >= 1] * p
    if name == "iia_dpmpp_2m":
        return [True] * p
    per = 2 if name == "iia_edm" else 1
    return [k // per <= i for k in range(p)]


def default_coefficients(name: str, sigmas: Tensor, form: str = "default", r: int = 1) -> Tensor:
    """``[N, p]`` float64 coefficients that reproduce the base sampler exactly."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    n, p = s.shape[0] - 1, num_coefficients(name, form, r)
    c = torch.zeros(n, p, dtype=torch.float64)
    t, t_next = s[:-1], s[1:]
    if name == "iia_edm":
        # Lemma 1: b^eps_0 = (t_{i+1} - t_i)/t_i, b^D_0 = (t_{i+1} - t_i)/(2 t_{i+1}).
        c[:, 0] = (t_next - t) / t
        c[:, 1] = torch.where(t_next > 0, (t_next - t) / (2 * t_next.clamp_min(1e-300)), 0.0)
    elif name == "biia_edm":
        c[:, 0] = 1.0
    return c


@dataclass(frozen=True, eq=False)
class IIACoefficients:
    """Fitted IIA scalars for one sampler, grid and model.

    Attributes:
        sampler: the IIA sampler name (``iia_ddim``, ``iia_dpmpp_2m``, ``iia_edm``, ``biia_edm``).
        sigmas: ``[N+1]`` float64 grid the fit was done on (sampling must use the same grid).
        coeffs: ``[N, p]`` float64 scalars in EDM coordinates (see the module docstring).
        mask: ``[N]`` bool, the steps that use ``coeffs`` (the others run the plain base step).
        form: ``default`` or ``guided`` (iia_ddim, eq. 8).
        r: number of past terms of the EDM forms.
        metadata: fit settings (M, fitting samples, model fingerprint, ...), JSON-serialisable.
    """

    sampler: str
    sigmas: Tensor
    coeffs: Tensor
    mask: Tensor
    form: str = "default"
    r: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Host tensors: samplers read one row of scalars per step without a device sync.
        object.__setattr__(self, "sigmas", self.sigmas.detach().to("cpu", torch.float64))
        object.__setattr__(self, "coeffs", self.coeffs.detach().to("cpu", torch.float64))
        object.__setattr__(self, "mask", self.mask.detach().to("cpu", torch.bool))
        check_sampler(self.sampler)
        if self.form not in FORMS[self.sampler]:
            raise SamplerError(
                f"form '{self.form}' is not valid for {self.sampler}; "
                f"valid: {', '.join(FORMS[self.sampler])}"
            )
        n = self.sigmas.shape[0] - 1
        p = num_coefficients(self.sampler, self.form, self.r)
        if tuple(self.coeffs.shape) != (n, p) or tuple(self.mask.shape) != (n,):
            raise SamplerError(
                f"{self.sampler} coefficients must be [{n}, {p}] with a [{n}] mask for a grid "
                f"of {n} steps; got {tuple(self.coeffs.shape)} and {tuple(self.mask.shape)}"
            )

    @property
    def base(self) -> str:
        return BASES[self.sampler]

    @property
    def steps(self) -> int:
        return self.sigmas.shape[0] - 1

    @classmethod
    def defaults(
        cls, sampler: str, sigmas: Tensor, form: str = "default", r: int = 1
    ) -> IIACoefficients:
        """Coefficients that reproduce the base sampler (on every fittable step)."""
        s = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
        return cls(
            sampler,
            s,
            default_coefficients(sampler, s, form, r),
            fitted_steps(sampler, s, form),
            form,
            r,
        )

    def vp_coefficients(self) -> Tensor:
        """The scalars in the paper's VP coordinates (``phi``, ``varphi``, ``beta``).

        EDM forms are already in the paper's (EDM) coordinates and are returned unchanged.
        """
        alpha = (1 + self.sigmas**2).rsqrt()
        c = self.coeffs.clone()
        if self.sampler == "iia_ddim":
            c = c * alpha[1:, None]
        elif self.sampler == "iia_dpmpp_2m":
            c[:, 0] = c[:, 0] * alpha[1:] / alpha[:-1]
            c[:, 1] = c[:, 1] * alpha[1:]
        return c


# --------------------------------------------------------------------------------------
# Per-step quantity builders (shared by the samplers and the fit).
# --------------------------------------------------------------------------------------


@dataclass
class StepTerms:
    """What one coarse step computed.

    ``base`` is the plain base step; on a step with coefficients ``c`` the IIA update is
    ``anchor + sum_k c_k Q_k`` over the available quantities (``None`` = no history yet,
    coefficient fixed at 0). ``history`` is carried to the next step.
    """

    base: Tensor
    anchor: Tensor
    quantities: list[Tensor | None]
    history: Any

    def combine(self, c: Sequence[float] | Tensor) -> Tensor:
        x = self.anchor
        for c_k, q in zip(c, self.quantities, strict=True):
            if q is not None:
                x = x + float(c_k) * q
        return x


def step_terms(
    name: str,
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    history: Any,
    *,
    final: bool,
    form: str = "default",
    r: int = 1,
) -> StepTerms:
    """Run coarse step ``sigma -> sigma_next`` of ``name``'s base and collect its quantities.

    ``final`` (host) says that every row ends at sigma = 0 (EDM's plain Euler step).
    """
    n = x.ndim
    a = lambda v: append_dims(v, n)
    if name == "iia_ddim":
        # DDIM step in EDM coordinates: x_{i+1} = D_i + sigma_{i+1} e_i (as sample_ddim
        # computes it: one interpolation between D_i and x_i).
        D = denoiser(x, sigma)
        e = to_d(x, sigma, D)
        base = torch.lerp(D, x, a(sigma_next / sigma))
        if form == "guided":
            q: list[Tensor | None] = [e]
        elif history is None:
            q = [None, None]
        else:
            # Differences of the x0 and eps predictions with the previous step (eq. 6).
            q = [D - history[0], e - history[1]]
        return StepTerms(base, base, q, (D, e))
    if name == "iia_dpmpp_2m":
        D = denoiser(x, sigma)
        # DPM-Solver++(2M) step (first order without history: DPM-Solver++-1).
        base, h = step_dpmpp_2m(x, sigma, sigma_next, D, *(history or (None, None)))
        # Raw state and data prediction (eq. 23).
        return StepTerms(base, base, [x, D], (D, h))
    if name not in ("iia_edm", "biia_edm"):
        check_sampler(name)
    past = [] if history is None else list(history)
    h_i = a(sigma_next - sigma)
    if final:
        # Last step to sigma = 0: plain Euler (no D at sigma = 0).
        x_euler = step_euler(denoiser, x, sigma, sigma_next)
        return StepTerms(x_euler, x, [None] * num_coefficients(name, form, r), past)
    # Heun step with its intermediate values (rows that end at 0 keep the Euler step).
    D, d, _, D_tilde, d_prime, base = heun_parts(denoiser, x, sigma, sigma_next)
    if name == "iia_edm":
        # Current pair (x_i - D_i, D_i - D~_{i+1}), then the r previous pairs (eqs. 18-19).
        pairs = [(x - D, D - D_tilde), *past][: r + 1]
        q = [t for pair in pairs for t in pair]
        q += [None] * (2 * (r + 1) - len(q))
        return StepTerms(base, x, q, pairs[:r])
    # BIIA: Heun average slopes of steps i, i-1, ..., times the current step size.
    slopes = [(d + d_prime) / 2, *past][: r + 1]
    q = [h_i * s for s in slopes] + [None] * (r + 1 - len(slopes))
    return StepTerms(base, x, q, slopes[:r])


# --------------------------------------------------------------------------------------
# Binding coefficients to their model: fingerprints and integrity.
# --------------------------------------------------------------------------------------


def _find_module(obj: Any, depth: int = 0) -> torch.nn.Module | None:
    """The ``nn.Module`` behind a denoiser wrapper (attributes, wrapped callables, closures)."""
    if isinstance(obj, torch.nn.Module):
        return obj
    if depth > 4 or obj is None:
        return None
    candidates: list[Any] = []
    for name in ("net", "model", "unet", "module", "inner", "model_fn", "denoiser"):
        if hasattr(type(obj), name) or name in getattr(obj, "__dict__", {}):
            with contextlib.suppress(AttributeError):
                candidates.append(getattr(obj, name))
    candidates.append(getattr(obj, "__self__", None))  # bound methods
    for cell in getattr(obj, "__closure__", None) or ():  # closures (from_diffusers' model_fn)
        with contextlib.suppress(ValueError):  # empty cell
            candidates.append(cell.cell_contents)
    for c in candidates:
        found = _find_module(c, depth + 1)
        if found is not None:
            return found
    return None


def _hash_tensor(h: Any, name: str, t: Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    if t.is_floating_point() and t.dtype != torch.float32:
        # One model in float64 (float64 evaluation) or float32: the same fingerprint (a float32
        # weight survives the round trip through float64 exactly).
        t = t.float()
    h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


# Module -> (state key, digest): the weights are hashed again only after they changed (every
# in-place update, an optimiser step or load_state_dict, bumps a tensor's version counter).
_WEIGHT_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights_digest(module: torch.nn.Module) -> bytes:
    state = sorted(module.state_dict().items())
    # Inference tensors (weights made under torch.inference_mode) have no version counter:
    # their digest is never cached.
    cacheable = not any(t.is_inference() for _, t in state)
    key = (
        tuple((n, t.data_ptr(), t._version, tuple(t.shape), t.dtype) for n, t in state)
        if cacheable
        else None
    )
    hit = _WEIGHT_DIGESTS.get(module)
    if key is not None and hit is not None and hit[0] == key:
        return hit[1]
    h = hashlib.sha256(b"weights;")
    for name, t in state:
        _hash_tensor(h, name, t)
    if key is not None:
        _WEIGHT_DIGESTS[module] = (key, h.digest())
    return h.digest()


def model_fingerprint(denoiser: Any) -> str:
    """A short hash identifying the model behind ``denoiser``.

    Order of preference: a ``fingerprint`` attribute or method of the denoiser (a hook for
    checkpoint-backed denoisers); the bytes of the weights of the ``nn.Module`` found
    through the wrapper (cached until the weights change); the tensors held by an analytic
    model (e.g. a Gaussian mixture's weights, means and stds); else the denoiser's ``repr``.
    """
    own = getattr(denoiser, "fingerprint", None)
    if own is not None:
        return str(own() if callable(own) else own)
    inner = getattr(denoiser, "inner", None)  # samplerlab wrappers (Counting, Chunked, ...)
    if inner is not None and not isinstance(denoiser, torch.nn.Module):
        return model_fingerprint(inner)
    replicas = getattr(denoiser, "__dict__", {}).get("replicas")  # ShardedDenoiser
    if replicas:
        return model_fingerprint(replicas[0])
    h = hashlib.sha256()
    h.update(type(denoiser).__qualname__.encode())
    module = _find_module(denoiser)
    if module is not None:
        h.update(_weights_digest(module))
    else:
        attrs = getattr(denoiser, "__dict__", {})
        tensors = {k: v for k, v in attrs.items() if isinstance(v, Tensor)}
        vp = describe(denoiser).vp
        if vp is not None and isinstance(getattr(vp, "alphas_cumprod", None), Tensor):
            tensors["vp.alphas_cumprod"] = vp.alphas_cumprod
        if tensors:
            for name in sorted(tensors):
                _hash_tensor(h, name, tensors[name])
        else:
            h.update(repr(denoiser).encode())
    return h.hexdigest()[:16]


def coefficients_digest(coeffs: Tensor, mask: Tensor, sigmas: Tensor) -> str:
    """A short hash of a fit's output (scalars, mask and grid), stored with the fit."""
    h = hashlib.sha256(b"iia;")
    _hash_tensor(h, "coeffs", coeffs.to(torch.float64))
    _hash_tensor(h, "mask", mask.to(torch.bool))
    _hash_tensor(h, "sigmas", sigmas.to(torch.float64))
    return h.hexdigest()[:16]


def check_fingerprint(
    coeffs: IIACoefficients, denoiser: Any, source: str, *, allow_mismatch: bool = False
) -> None:
    """Refuse coefficients fitted on another model (their stored fingerprint is not the
    denoiser's). Coefficients without a stored fingerprint (built by hand) are not checked;
    ``allow_mismatch`` skips the check for those who know the models share their dynamics."""
    want = coeffs.metadata.get("fingerprint")
    if want is None or allow_mismatch:
        return
    got = model_fingerprint(denoiser)
    if str(want) != got:
        raise SamplerError(
            f"IIA coefficients {source} were fitted for another model (fingerprint {want}, "
            f"this model {got}); refit them on this model, or pass "
            "allow_fingerprint_mismatch=True to use them anyway"
        )


def check_integrity(coeffs: IIACoefficients, source: str) -> None:
    """Refuse non-finite scalars, and scalars that are not those the fit stored (the fit
    records a digest of its output; an edited file keeps the fit's metadata, not its digest)."""
    if not bool(torch.isfinite(coeffs.coeffs).all()):
        raise SamplerError(f"IIA coefficients {source} contain NaN or Inf; fit them again")
    want = coeffs.metadata.get("coeffs_digest")
    if want is None:
        return
    got = coefficients_digest(coeffs.coeffs, coeffs.mask, coeffs.sigmas)
    if str(want) != got:
        raise SamplerError(
            f"IIA coefficients {source} are not the ones their fit produced (digest {want}, "
            f"contents {got}): the values were changed after fitting; fit them again"
        )


# --------------------------------------------------------------------------------------
# Samplers.
# --------------------------------------------------------------------------------------


def resolve_coefficients(
    coeffs: IIACoefficients | str | Path | None,
    name: str,
    grid: Grid,
    denoiser: Any = None,
    allow_fingerprint_mismatch: bool = False,
) -> IIACoefficients | None:
    """Load (for a path) and check coefficients against the sampler, the grid and the model
    (the fingerprint stored by the fit, when ``denoiser`` is given)."""
    if coeffs is None:
        return None
    if not isinstance(allow_fingerprint_mismatch, bool):
        raise SamplerError(
            f"allow_fingerprint_mismatch must be True or False, got {allow_fingerprint_mismatch!r}"
        )
    source = "(in memory)"
    if isinstance(coeffs, (str, Path)):
        source = str(coeffs)
        # Lazy: the file format needs safetensors (kept out of this torch-only package).
        from importlib import import_module

        coeffs = import_module("samplerlab.iia.files").load(coeffs)
    if not isinstance(coeffs, IIACoefficients):
        raise SamplerError(f"coeffs must be IIACoefficients or a file path, got {type(coeffs)}")
    check_integrity(coeffs, source)
    if denoiser is not None:
        check_fingerprint(coeffs, denoiser, source, allow_mismatch=allow_fingerprint_mismatch)
    if coeffs.sampler != name:
        raise SamplerError(
            f"coefficients were fitted for {coeffs.sampler}, not {name}; refit with "
            f"`samplerlab iia-fit --sampler {name} ...`"
        )
    mismatch = grid_mismatch(coeffs.sigmas, grid.host)
    if mismatch is not None:
        raise SamplerError(
            f"coefficients were fitted on a different grid {mismatch}; refit with "
            f"`samplerlab iia-fit --sampler {name} --steps {grid.steps} ...`"
        )
    return coeffs


def grid_mismatch(fitted: Tensor, requested: Tensor) -> str | None:
    """``None`` if ``requested`` (``[N+1]`` or per-row ``[N+1, B]``) is the ``fitted`` grid
    (rtol 1e-6, atol 1e-9), else ``"(fitted) than the requested one (requested)"``."""
    ref = fitted.to(torch.float64)[:, None]
    req = requested.detach().to("cpu", torch.float64)
    req = req if req.ndim == 2 else req[:, None]
    same_len = req.shape[0] == ref.shape[0]
    if same_len and torch.allclose(req, ref, rtol=1e-6, atol=1e-9):
        return None
    worst = f", largest |dsigma| {float((req - ref).abs().max()):.3g}" if same_len else ""
    return (
        f"({ref.shape[0] - 1} steps, sigma_max {float(ref[0]):.4g}) than the requested one "
        f"({req.shape[0] - 1} steps, sigma_max {float(req[0].max()):.4g}{worst})"
    )


def _sample(
    name: str,
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    coeffs: IIACoefficients | str | Path | None,
    allow_fingerprint_mismatch: bool = False,
) -> Tensor:
    grid = Grid(sigmas, x)
    table = resolve_coefficients(coeffs, name, grid, denoiser, allow_fingerprint_mismatch)
    form = table.form if table is not None else "default"
    r = table.r if table is not None else 0
    history = None
    for i, sigma, sigma_next in grid:
        terms = step_terms(
            name,
            denoiser,
            x,
            sigma,
            sigma_next,
            history,
            final=grid.all_final(i),
            form=form,
            r=r,
        )
        if table is not None and bool(table.mask[i]):
            # Fitted step: anchor + sum_k c_ik Q_k (host scalars, no device sync).
            x = terms.combine(table.coeffs[i].tolist())
        else:
            # Plain base step.
            x = terms.base
        history = terms.history
    return x


@torch.no_grad()
def sample_iia_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    coeffs: IIACoefficients | str | Path | None = None,
    allow_fingerprint_mismatch: bool = False,
) -> Tensor:
    """IIA-DDIM (Zhang et al. 2024, eq. 6; eq. 8 for the ``guided`` form).

    Without ``coeffs`` this is DDIM (eta = 0) exactly. Coefficients are checked against
    the grid and, when their fit stored one, the model's fingerprint: another model's
    coefficients are refused unless ``allow_fingerprint_mismatch=True`` (all IIA samplers).
    """
    return _sample("iia_ddim", denoiser, x, sigmas, coeffs, allow_fingerprint_mismatch)


@torch.no_grad()
def sample_iia_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    coeffs: IIACoefficients | str | Path | None = None,
    allow_fingerprint_mismatch: bool = False,
) -> Tensor:
    """IIA-DPM-Solver++(2M) (Zhang et al. 2024, eq. 23); without ``coeffs`` DPM-Solver++(2M)."""
    return _sample("iia_dpmpp_2m", denoiser, x, sigmas, coeffs, allow_fingerprint_mismatch)


@torch.no_grad()
def sample_iia_edm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    coeffs: IIACoefficients | str | Path | None = None,
    allow_fingerprint_mismatch: bool = False,
) -> Tensor:
    """IIA-EDM (Zhang et al. 2024, eqs. 17-19, Alg. 1); without ``coeffs`` EDM Heun."""
    return _sample("iia_edm", denoiser, x, sigmas, coeffs, allow_fingerprint_mismatch)


@torch.no_grad()
def sample_biia_edm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    coeffs: IIACoefficients | str | Path | None = None,
    allow_fingerprint_mismatch: bool = False,
) -> Tensor:
    """BIIA-EDM (Zhang et al. 2024, eqs. 13-16, Alg. 2); without ``coeffs`` EDM Heun."""
    return _sample("biia_edm", denoiser, x, sigmas, coeffs, allow_fingerprint_mismatch)


# --------------------------------------------------------------------------------------
# Fitting helpers (pure torch; the Lightning fit stage in samplerlab.iia drives them).
# --------------------------------------------------------------------------------------


def resolve_spacing(name: str, spacing: str, vp: Any) -> str:
    """The fine-grid spacing: ``auto`` = the base solver's own time variable.

    EDM Heun integrates in ``t = sigma``. DDIM and DPM-Solver++ step in the model's time
    ``t`` (§3.1, §3.9.3: a continuous-time wrapper of the VP table); without a VP table,
    DDIM in EDM coordinates is Euler in sigma and DPM-Solver++ integrates in
    ``lambda = -log sigma``.
    """
    if spacing not in SPACINGS:
        raise SamplerError(f"unknown fine-grid spacing '{spacing}'; valid: {', '.join(SPACINGS)}")
    if spacing == "time" and vp is None:
        raise SamplerError("fine-grid spacing 'time' needs a denoiser with a VP table (vp)")
    if spacing != "auto":
        return spacing
    if name in ("iia_edm", "biia_edm"):
        return "sigma"
    if vp is not None:
        return "time"
    return "sigma" if name == "iia_ddim" else "logsnr"


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


def fine_reference(
    name: str,
    denoiser: Denoiser,
    x: Tensor,
    sub_grid: Tensor,
    history: Any = None,
    *,
    warm_start: bool = False,
) -> Tensor:
    """``M`` steps of the SAME base solver from ``x`` over ``sub_grid``.

    DPM-Solver++(2M) uses its own fine-step history inside the sub-interval (§3.9.2); its
    first sub-step is first order, or, with ``warm_start``, second order using the coarse
    step's previous data prediction ``history`` (the only history outside the interval).
    A step to sigma = 0 always starts cold: its coarse step is first order (no history to
    match), and the coarse previous data prediction, extrapolated over the first fine
    sub-step, makes the reference less accurate than the coarse denoise step itself.
    """
    base = BASES[check_sampler(name)]
    if base == "ddim":
        return sample_ddim(denoiser, x, sub_grid)
    if base == "edm_heun":
        return sample_edm_heun(denoiser, x, sub_grid)
    grid = Grid(sub_grid, x)
    to_zero = bool((grid.host[-1] == 0).all())
    hist = history if warm_start and not to_zero else None
    for i, sigma, sigma_next in grid:
        terms = step_terms(name, denoiser, x, sigma, sigma_next, hist, final=grid.all_final(i))
        x, hist = terms.base, terms.history
    return x


def fine_nfe(name: str, M: int) -> int:
    """Extra network evaluations per fitting sample and fitted step."""
    return 2 * M - 1 if BASES[check_sampler(name)] == "edm_heun" else M


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
