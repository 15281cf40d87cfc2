"""Loading diffusers models (a local folder or a loaded network) as ``D(x, sigma)``.

The torch-only denoisers and wrappers live in :mod:`samplerlab.samplers.denoisers`
(``from_eps``, ``VPDenoiser``, ``EDMDenoiser``, ``CountingDenoiser``, ...); this module adds
what needs the third-party ``diffusers`` package: :func:`from_diffusers` (a
:class:`~samplerlab.samplers.denoisers.VPDenoiser` on the scheduler's ``alphas_cumprod``,
declaring the network as its ``ModelInfo.network``), :func:`load_scheduler_config`, and the
model functions ``f(x_vp, t)`` it wraps: :class:`DiffusersModel` and :class:`LabelledModel`
(bound class labels: its ``take`` is the per-sample state of the denoiser contract, reached
through ``VPDenoiser.take``).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

from .samplers.core import SamplerError
from .samplers.denoisers import VPDenoiser, maybe_compile
from .samplers.schedules import DiscreteVP

__all__ = [
    "DiffusersModel",
    "LabelledModel",
    "from_diffusers",
    "load_scheduler_config",
]


def load_scheduler_config(path: str | Path) -> dict[str, Any]:
    """Read a diffusers ``scheduler_config.json`` (a file, or a folder holding one)."""
    p = Path(path)
    candidates = (
        [p]
        if p.is_file()
        else [p / "scheduler_config.json", p / "scheduler" / "scheduler_config.json"]
    )
    for c in candidates:
        if c.is_file():
            try:
                return json.loads(c.read_text())
            except json.JSONDecodeError as e:
                raise SamplerError(f"{c}: not valid JSON ({e.msg} at line {e.lineno})") from None
    raise SamplerError(
        f"no scheduler_config.json found at {p} (looked in: "
        f"{', '.join(str(c) for c in candidates)})"
    )


# Networks a folder may hold (its config's _class_name), and the pipeline subfolders.
NETWORKS = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel", "Transformer2DModel")
NETWORK_FOLDERS = ("unet", "transformer")


def from_diffusers(
    model: str | Path | torch.nn.Module,
    scheduler: Any = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    clip_denoised: bool | None = None,
    class_labels: torch.Tensor | None = None,
    compile: bool | dict[str, Any] = False,
) -> VPDenoiser:
    """A diffusers network and its noise schedule as ``D(x, sigma)``.

    The network is a ``UNet2DModel``, a ``UNet2DConditionModel`` (text-conditional: the
    embeddings come as ``cond``) or a DiT (``DiTTransformer2DModel`` /
    ``Transformer2DModel``, class-conditional; a learned-variance output's second half is
    dropped). Latent models sample latents (decoding them is the caller's). ``model`` is a
    loaded network or a local folder: a pipeline folder (``unet/`` or ``transformer/``, and
    ``scheduler/``) or a network folder with ``scheduler_config.json`` beside its config.
    ``scheduler`` is a diffusers scheduler, a config dict or a path; by default it is
    looked up in the folder. Nothing is downloaded: ``from_pretrained`` reads the folder.
    The prediction type and ``clip_sample`` come from the scheduler config; ``compile=True``
    wraps the UNet call in ``torch.compile(mode="reduce-overhead")`` (CUDA graphs).
    ``class_labels`` binds one label per sample (or one for all); conditioning passed to
    ``samplerlab.sample(..., cond=)`` instead reaches the UNet as described in
    :class:`DiffusersModel` (and may be guided). The denoiser declares ``unet`` as its
    ``info.network`` (the module whose weights fingerprint fitted coefficients).
    """
    import diffusers
    from diffusers import DDPMScheduler

    if isinstance(model, (str, Path)):
        root = Path(model)
        if not root.exists():
            raise SamplerError(f"model folder {root} does not exist")
        sub = next((d for d in NETWORK_FOLDERS if (root / d / "config.json").is_file()), None)
        if sub is None and not (root / "config.json").is_file():
            raise SamplerError(f"{root} holds neither config.json nor unet/ or transformer/")
        config_file = root / (sub or "") / "config.json"
        try:
            kind = json.loads(config_file.read_text()).get("_class_name", "UNet2DModel")
        except json.JSONDecodeError as e:
            raise SamplerError(f"{config_file}: not valid JSON ({e.msg})") from None
        if kind not in NETWORKS:
            raise SamplerError(
                f"{config_file}: _class_name {kind!r} is not a network samplerlab loads "
                f"(valid: {', '.join(NETWORKS)})"
            )
        try:
            unet = getattr(diffusers, kind).from_pretrained(
                root, subfolder=sub, local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise SamplerError(f"cannot load a {kind} from {root}: {e}") from None
        if scheduler is None:
            scheduler = load_scheduler_config(root)
    else:
        unet = model
        if scheduler is None:
            raise SamplerError("pass the scheduler (object, dict or path) with a loaded UNet")
    if isinstance(scheduler, (str, Path)):
        scheduler = load_scheduler_config(scheduler)
    config = dict(scheduler) if isinstance(scheduler, dict) else dict(scheduler.config)
    ddpm = DDPMScheduler.from_config(config)
    unet = unet.eval()
    if device is not None or dtype is not None:
        unet = unet.to(device=device, dtype=dtype)
    size = unet.config.sample_size
    hw = (size, size) if isinstance(size, int) else tuple(size)

    labels_all = None if class_labels is None else torch.as_tensor(class_labels).reshape(-1)
    if labels_all is None:
        model_fn = DiffusersModel(
            unet, maybe_compile(lambda x, t, **kw: unet(x, t, **kw).sample, compile)
        )
        vp_compile = False
    else:
        # Compile the network call itself: the labels wrapper stays a plain object whose
        # take() gives gathered rows their own samples' labels.
        call = maybe_compile(lambda x, t, y: unet(x, t, class_labels=y).sample, compile)
        model_fn = LabelledModel(unet, call, labels_all)
        vp_compile = False
    return VPDenoiser(
        model_fn,
        DiscreteVP(ddpm.alphas_cumprod.double()),
        prediction_type=config.get("prediction_type", "epsilon"),
        clip_denoised=bool(config.get("clip_sample", False))
        if clip_denoised is None
        else clip_denoised,
        data_shape=(unet.config.in_channels, *hw),
        compile=vp_compile,
        network=unet,
    )


class DiffusersModel:
    """A diffusers network as ``f(x_vp, t)`` or, with conditioning, ``f(x_vp, t, cond)``.

    ``cond`` holds the rows aligned with ``x_vp``'s: a tensor goes to
    ``encoder_hidden_states`` when it is floating and the network takes that argument
    (``UNet2DConditionModel``: text embeddings), else to ``class_labels``
    (``UNet2DModel`` with a class embedding); a dict is passed as keyword arguments
    (e.g. ``{"class_labels": y}``), its keys checked against the network's ``forward``.
    """

    def __init__(self, unet: torch.nn.Module, call: Any) -> None:
        self.unet = unet  # the module (for fingerprints)
        self.call = call  # call(x, t, **kwargs) -> output tensor
        params = list(inspect.signature(unet.forward).parameters.values())
        self.params = frozenset(p.name for p in params)
        # Arguments after (x, t) without a default (UNet2DConditionModel's embeddings).
        self.required = [p.name for p in params[2:] if p.default is inspect.Parameter.empty]
        cfg = unet.config
        out = getattr(cfg, "out_channels", None) or cfg.in_channels
        # A learned-variance output (DiT): [eps, variance] along the channels.
        self.channels = cfg.in_channels if out == 2 * cfg.in_channels else None

    def keywords(self, cond: Any) -> dict[str, Any]:
        if isinstance(cond, dict):
            unknown = sorted(set(cond) - self.params)
            if unknown:
                raise SamplerError(
                    f"cond keys {unknown} are not arguments of {type(self.unet).__name__}"
                    f".forward (it takes: {', '.join(sorted(self.params - {'self'}))})"
                )
            return dict(cond)
        if cond.is_floating_point() and "encoder_hidden_states" in self.params:
            return {"encoder_hidden_states": cond.to(self.unet.dtype)}
        if "class_labels" in self.params:
            return {"class_labels": cond}
        raise SamplerError(
            f"{type(self.unet).__name__} takes neither class_labels nor encoder_hidden_states: "
            "pass cond as a dict of its forward's keyword arguments"
        )

    def __call__(self, x_vp: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if cond is None and self.required:
            raise SamplerError(
                f"{type(self.unet).__name__} needs conditioning ({', '.join(self.required)}): "
                "pass sample(..., cond=)"
            )
        kwargs = {} if cond is None else self.keywords(cond)
        out = self.call(x_vp.to(self.unet.dtype), t, **kwargs)
        return out if self.channels is None else out[:, : self.channels]


class LabelledModel:
    """A class-conditional network call ``f(x_vp, t)`` with one label per sample (or one
    for all).

    Row ``j`` of a call is sample ``j mod n`` of the ``n`` labels: a whole batch, or whole
    copies of it stacked by a parallel sampler (SRDS blocks, RMM-parallel rounds, chunks of
    either). Samplers that gather a subset of the rows name each row's sample through
    :func:`samplerlab.samplers.core.take_rows` (PMM's midpoints, ParaDiGMS' windows), which
    calls :meth:`take`. Labels are copied to each device once; no host sync per call.
    """

    def __init__(self, unet: torch.nn.Module, call: Any, labels: torch.Tensor) -> None:
        self.unet = unet  # the module (for fingerprints)
        self.call = call
        self.labels = labels
        self._on: dict[torch.device, torch.Tensor] = {labels.device: labels}

    def _labels_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._on:
            self._on[device] = self.labels.to(device)
        return self._on[device]

    def take(self, rows: torch.Tensor) -> LabelledModel:
        labels = self._labels_on(rows.device)
        n = labels.numel()
        view = LabelledModel(self.unet, self.call, labels if n == 1 else labels[rows % n])
        return view

    def __call__(self, x_vp: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if cond is not None:
            raise SamplerError(
                "this model's class labels are bound by from_diffusers(class_labels=); pass "
                "them there or as sample(cond=), not both"
            )
        labels = self._labels_on(x_vp.device)
        rows, n = x_vp.shape[0], labels.numel()
        if n == 1:
            labels = labels.expand(rows)
        elif rows != n:
            if rows % n:
                raise SamplerError(
                    f"class_labels has {n} entries but the network call has {rows} rows "
                    "(neither the batch nor whole copies of it, and the sampler did not name "
                    "the rows' samples)"
                )
            labels = labels.repeat(rows // n)
        return self.call(x_vp.to(self.unet.dtype), t, labels)
