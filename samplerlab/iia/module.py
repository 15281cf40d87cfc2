"""The IIA fit stage: a LightningModule with no optimiser, run by ``Trainer.fit``.

One epoch = one coarse step ``i``; its batches are fitting samples (indices; the initial
noise of sample ``k`` comes from its own seed, so results do not depend on the batch size
or the number of processes). For each batch the module runs the coarse step from the
stored state ``x_i`` of these samples, the same base solver over ``M`` fine sub-steps
from the same state, and accumulates the ``p x p`` Gram matrix and right-hand side in
float64. At the end of the epoch the sums are all-reduced across ranks, the ridge least
squares is solved, and every sample of this rank advances with the fitted step (greedy,
as in the paper).

States are *kept* (not recomputed): each rank stores the current state and the step
history of its own samples, keyed by sample index, plus the quantities of the current
step until the coefficients are known. That costs ``(p + 2)`` copies of a sample per
fitting sample, and saves re-running the trajectory (``O(N^2)`` network calls).
"""

from __future__ import annotations

import math
import operator
import time
import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor
from torch.utils.data import DataLoader

from ..errors import ConfigError
from ..samplers.api import MAX_GRID_STEPS, build_sigmas
from ..samplers.core import SamplerError, check_grid
from ..samplers.denoisers import CountingDenoiser
from ..samplers.iia import (
    BASES,
    FORMS,
    IIACoefficients,
    StepTerms,
    available_columns,
    check_sampler,
    coefficients_digest,
    default_coefficients,
    fine_grid,
    fine_nfe,
    fine_reference,
    fitted_steps,
    gram_rows,
    num_coefficients,
    resolve_spacing,
    solve,
    step_terms,
)
from ..samplers.noise import PerSampleNoise
from ..samplers.registry import get_sampler
from .files import fingerprint, library_version

# Fitting sample k draws its initial noise from seed FIT_SEED_OFFSET + seed * 2**20 + k:
# disjoint from the seeds 0, 1, ... that `samplerlab.sample` uses by default, so default
# evaluations are on held-out noise.
FIT_SEED_OFFSET = 2**40


def fit_seeds(seed: int, indices: Sequence[int]) -> list[int]:
    return [FIT_SEED_OFFSET + seed * 2**20 + int(k) for k in indices]


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


class _NoWrapDDP(DDPStrategy):
    """DDP processes without the ``DistributedDataParallel`` wrapper.

    The fit has no parameters and no gradients; the only collective is the epoch-end
    all-reduce of the Gram sums (DDP refuses to wrap a module without trainable weights).
    """

    def configure_ddp(self) -> None:
        pass


class IIAFitModule(L.LightningModule):
    """Fits the IIA coefficients of ``sampler`` on the grid ``sigmas`` (see module docs)."""

    def __init__(
        self,
        denoiser: Any,
        sampler: str,
        sigmas: Tensor,
        *,
        shape: Sequence[int],
        M: int = 3,
        num_samples: int = 16,
        batch_size: int | None = None,
        r: int = 1,
        seed: int = 0,
        ridge: float = 1e-10,
        form: str = "default",
        spacing: str = "auto",
        dtype: torch.dtype = torch.float64,
        warm_start: bool = True,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        # Not a submodule: Lightning must neither move nor wrap the model.
        self.__dict__["denoiser"] = denoiser
        self.sampler = check_sampler(sampler)
        self.host = check_grid(sigmas)
        if self.host.ndim != 1:
            raise SamplerError("IIA fits need one grid shared by all samples ([N+1] sigmas)")
        self.shape = tuple(int(s) for s in shape)
        self.M, self.num_samples, self.r, self.seed = M, num_samples, r, seed
        self.batch_size = batch_size or num_samples
        self.ridge, self.form, self.fit_dtype = ridge, form, dtype
        self.warm_start = warm_start
        self.spacing = resolve_spacing(sampler, spacing, getattr(denoiser, "vp", None))
        self.p = num_coefficients(sampler, form, r)
        self.c0 = default_coefficients(sampler, self.host, form, r)
        # Buffers: returned to the main process by Lightning's spawn launcher.
        self.register_buffer("coefficients", self.c0.clone())
        self.register_buffer("fitted", fitted_steps(sampler, self.host, form))
        # Per-step sums ||target||^2 before and after the fitted correction.
        self.register_buffer("local_error", torch.zeros(len(self.c0), 2, dtype=torch.float64))
        self._state: dict[int, Tensor] = {}
        self._history: dict[int, Any] = {}
        self._pending: list[tuple[list[int], StepTerms]] = []
        # Per-sample Gram rows [num_samples, p*p + p + 1]; each rank fills its own rows, so
        # the all-reduce adds zeros only and the ordered sum is the same on any world size.
        self._rows = torch.zeros(num_samples, self.p * self.p + self.p + 1, dtype=torch.float64)

    @property
    def steps(self) -> int:
        return self.host.shape[0] - 1

    def configure_optimizers(self) -> None:
        return None

    def train_dataloader(self) -> DataLoader:
        # Shard sample indices over ranks; every rank gets the same number of batches
        # (empty ones where it runs out) so that all ranks run the same loop.
        rank, world = self.trainer.global_rank, self.trainer.world_size
        mine = list(range(self.num_samples))[rank::world]
        per_rank = math.ceil(self.num_samples / world)
        n_batches = max(1, math.ceil(per_rank / self.batch_size))
        bs = self.batch_size
        batches = [
            torch.tensor(mine[b * bs : (b + 1) * bs], dtype=torch.long) for b in range(n_batches)
        ]
        return DataLoader(batches, batch_size=None, shuffle=False)

    def on_train_epoch_start(self) -> None:
        self._pending = []
        self._rows = torch.zeros_like(self._rows, device=self.device)

    def _initial(self, idx: list[int]) -> Tensor:
        noise = PerSampleNoise(fit_seeds(self.seed, idx))
        z = noise.randn((len(idx), *self.shape), device=self.device, dtype=self.fit_dtype)
        prior = float(getattr(self.denoiser, "prior_std", 0.0))
        return z * math.sqrt(float(self.host[0]) ** 2 + prior**2)

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        idx = [int(k) for k in batch.tolist()]
        if not idx:
            return None
        i = self.current_epoch
        with torch.no_grad():
            if i == 0:
                x, history = self._initial(idx), None
            else:
                x = torch.stack([self._state[k] for k in idx])
                history = _stack([self._history[k] for k in idx])
            B = len(idx)
            sigma = torch.full((B,), float(self.host[i]), device=x.device, dtype=x.dtype)
            sigma_next = torch.full((B,), float(self.host[i + 1]), device=x.device, dtype=x.dtype)
            terms = step_terms(
                self.sampler,
                self.denoiser,
                x,
                sigma,
                sigma_next,
                history,
                final=bool(self.host[i + 1] == 0),
                form=self.form,
                r=self.r,
            )
            if bool(self.fitted[i]):
                # Fine reference: M steps of the same solver from the same state.
                sub = fine_grid(
                    float(self.host[i]),
                    float(self.host[i + 1]),
                    self.M,
                    self.spacing,
                    getattr(self.denoiser, "vp", None),
                )
                ref = fine_reference(
                    self.sampler, self.denoiser, x, sub, history, warm_start=self.warm_start
                )
                # Target: what the coefficients must add on top of the default update.
                target = ref - terms.combine(self.c0[i].tolist())
                rows = gram_rows(terms.quantities, target).to(self._rows.device)
                self._rows[torch.tensor(idx, device=self._rows.device)] = rows
            self._pending.append((idx, terms))
        return None

    def _all_reduce(self, t: Tensor) -> Tensor:
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def on_train_epoch_end(self) -> None:
        i, p = self.current_epoch, self.p
        c = self.c0[i]
        if bool(self.fitted[i]):
            sums = self._all_reduce(self._rows.clone()).cpu().sum(0)
            G, g, yy = sums[: p * p].reshape(p, p), sums[p * p : p * p + p], sums[-1]
            delta = solve(G, g, available_columns(self.sampler, i, self.form, self.r), self.ridge)
            c = self.c0[i] + delta
            after = yy - 2 * (delta @ g) + delta @ G @ delta
            self.coefficients[i] = c.to(self.coefficients)
            self.local_error[i] = torch.stack([yy, after.clamp_min(0)]).to(self.local_error)
        # Advance every sample of this rank with the (fitted) step.
        for idx, terms in self._pending:
            x_next = terms.combine(c.tolist()) if bool(self.fitted[i]) else terms.base
            for j, k in enumerate(idx):
                self._state[k] = x_next[j]
                self._history[k] = _rows(terms.history, j)
        self._pending = []


def _device_of(denoiser: Any) -> torch.device:
    from ..samplers.iia import _find_module

    module = _find_module(denoiser)
    if module is not None:
        for t in [*module.parameters(), *module.buffers()]:
            return t.device
    return torch.device("cpu")


_START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


def _strategy(strategy: Any, devices: int) -> Any:
    if not isinstance(strategy, str):
        return strategy
    if strategy == "auto" and devices > 1:
        strategy = "ddp_spawn"
    if strategy in _START_METHODS:
        return _NoWrapDDP(start_method=_START_METHODS[strategy])
    return strategy


def _check_fit_inputs(
    denoiser: Any, shape: Any, dtype: torch.dtype, sigma: float
) -> tuple[int, ...]:
    """One line for a denoiser, sample shape or dtype that cannot be fitted, before Lightning
    starts: the shape must be the model's, and one call on one row must return that shape."""
    if not callable(denoiser):
        raise ConfigError(f"the denoiser must be a callable D(x, sigma), got {type(denoiser)}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    try:
        shape = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise ConfigError(f"shape must be one sample's shape (integers), got {shape!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"shape must be one sample's shape (positive sizes), got {shape}")
    want = getattr(denoiser, "data_shape", None)
    if want is not None and tuple(want) != shape:
        raise ConfigError(f"shape {shape} is not the model's sample shape {tuple(want)}")
    # One probe call (one row) finds a model that does not take or return this shape.
    x = torch.zeros((1, *shape), device=_device_of(denoiser), dtype=dtype)
    try:
        with torch.no_grad():
            out = CountingDenoiser(denoiser)(
                x, torch.full((1,), sigma, device=x.device, dtype=dtype)
            )
    except SamplerError as e:
        raise ConfigError(str(e)) from None
    except (RuntimeError, TypeError, ValueError) as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ConfigError(
            f"the denoiser does not take samples of shape {shape} ({first})"
        ) from None
    del out
    return shape


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    return value


def fit(
    denoiser: Any,
    sampler: str,
    *,
    steps: int | None = None,
    schedule: str | None = None,
    schedule_options: dict[str, Any] | None = None,
    sigmas: Tensor | None = None,
    calibration: Any = None,
    M: int = 3,
    num_samples: int = 16,
    batch_size: int | None = None,
    r: int = 1,
    seed: int = 0,
    ridge: float = 1e-10,
    form: str = "default",
    spacing: str = "auto",
    shape: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float64,
    warm_start: bool = True,
    guidance_scale: float | None = None,
    devices: int = 1,
    strategy: Any = "auto",
    accelerator: str | None = None,
    progress: bool = True,
    trainer_kwargs: dict[str, Any] | None = None,
) -> IIACoefficients:
    """Fit IIA coefficients for ``sampler`` on ``denoiser`` (Lightning ``Trainer.fit``).

    Args:
        sampler: ``iia_ddim``, ``iia_dpmpp_2m``, ``iia_edm`` or ``biia_edm``.
        steps: as for ``samplerlab.sample`` (grid steps; the registry's schedule); or
            ``sigmas``, an explicit ``[N+1]`` grid; or ``calibration``, a grid calibrated
            for the base sampler (``samplerlab.calibrate``). Sampling must use the same grid.
        M: fine sub-steps per coarse step; ``num_samples``: fitting noises (seeded per
            sample, so the result is independent of ``batch_size`` and ``devices``);
        r: past terms of the EDM forms; ``ridge``: relative ridge of the solve;
        form: ``default`` or ``guided`` (iia_ddim with a guided denoiser, eq. 8);
        spacing: fine grid ``auto`` (the solver's time), ``sigma``, ``time``, ``logsnr``.
        warm_start: DPM-Solver++ only: the first fine sub-step uses the coarse previous
            data prediction (second order) instead of a first-order start (except on the
            step to sigma = 0, whose coarse step is first order; see ``fine_reference``).
        shape: one sample's shape (default: the denoiser's ``data_shape``).
        devices, strategy, accelerator: Lightning's; several devices use DDP
            (``ddp_spawn`` by default, ``ddp`` for scripts/CLI and cluster launchers).
    """
    check_sampler(sampler)
    _check_int("M", M, 1)
    _check_int("num_samples", num_samples, 1)
    _check_int("seed", seed, 0)
    if num_samples > 2**20 or seed >= 2**42:
        # Fitting seeds are FIT_SEED_OFFSET + seed * 2**20 + k: disjoint blocks, 63 bits.
        raise ConfigError(
            f"num_samples must be <= 2**20 and seed < 2**42, got {num_samples} and {seed}"
        )
    _check_int("r", r, 0)
    _check_int("devices", devices, 1)
    if batch_size is not None:
        _check_int("batch_size", batch_size, 1)
    if form not in FORMS[sampler]:
        raise ConfigError(
            f"form '{form}' is not valid for {sampler}; valid: {', '.join(FORMS[sampler])}"
        )
    if not ridge >= 0:
        raise ConfigError(f"ridge must be >= 0, got {ridge!r}")
    spec = get_sampler(sampler)
    if calibration is not None:
        # A calibrated grid of the base sampler (samplerlab.calibrate), checked for sampler,
        # steps and model.
        from ..calibrate.grid import resolve

        if sigmas is not None or schedule is not None or steps is None:
            raise ConfigError("calibration= needs steps= and no sigmas= or schedule=")
        sigmas = resolve(calibration, sampler, steps, None, denoiser)
    if sigmas is None:
        if steps is None:
            raise ConfigError("give steps or sigmas")
        _check_int("steps", steps, 1)
        if steps > MAX_GRID_STEPS:
            raise ConfigError(f"steps={steps} is more than samplerlab plans ({MAX_GRID_STEPS})")
        grid_steps, _ = spec.plan(steps)
        sigmas = build_sigmas(denoiser, spec, grid_steps, schedule, schedule_options)
    host = check_grid(sigmas)
    if not bool(fitted_steps(sampler, host, form).any()):
        raise ConfigError(
            f"{sampler} on a grid of {host.shape[0] - 1} steps has no step to fit "
            "(EDM forms fit steps 1..N-2); use more steps"
        )
    if shape is None:
        shape = getattr(denoiser, "data_shape", None)
        if shape is None:
            raise ConfigError("pass shape= (one sample's shape): the denoiser has no data_shape")
    shape = _check_fit_inputs(denoiser, shape, dtype, float(host[0]))
    module = IIAFitModule(
        denoiser,
        sampler,
        host,
        shape=shape,
        M=M,
        num_samples=num_samples,
        batch_size=batch_size,
        r=r,
        seed=seed,
        ridge=ridge,
        form=form,
        spacing=spacing,
        dtype=dtype,
        warm_start=warm_start,
    )
    device = _device_of(denoiser)
    if accelerator is None:
        accelerator = "cpu" if device.type == "cpu" else "gpu"
    kwargs: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": devices,
        "strategy": _strategy(strategy, devices),
        "max_epochs": module.steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "use_distributed_sampler": False,
        "enable_progress_bar": progress,
        "deterministic": False,
        **(trainer_kwargs or {}),
    }
    trainer = L.Trainer(**kwargs)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Running without an optimiser is the point of this stage.
        warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`")
        trainer.fit(module)
    seconds = time.perf_counter() - start
    fitted = module.fitted.detach().cpu()
    n_fitted = int(fitted.sum())
    metadata = {
        "sampler": sampler,
        "base": BASES[sampler],
        "steps": module.steps,
        "nfe": int(spec.nfe(module.steps)),  # exact for the IIA samplers
        "M": M,
        "num_samples": num_samples,
        "r": r,
        "form": form,
        "spacing": module.spacing,
        "ridge": ridge,
        "warm_start": warm_start,
        "seed": seed,
        "fingerprint": fingerprint(denoiser),
        "guidance_scale": guidance_scale,
        "library_version": library_version(),
        "fit_seconds": seconds,
        "fit_extra_nfe_per_sample": n_fitted * fine_nfe(sampler, M),
        "world_size": trainer.world_size,
        "local_error": module.local_error.detach().cpu().tolist(),
        "calibrated": calibration is not None,
    }
    coefficients = module.coefficients.detach().cpu().to(torch.float64)
    # What this fit produced: loading checks it (a file edited after the fit is refused).
    metadata["coeffs_digest"] = coefficients_digest(coefficients, fitted, host)
    return IIACoefficients(sampler, host.clone(), coefficients, fitted, form, r, metadata)
