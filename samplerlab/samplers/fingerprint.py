"""Model fingerprints: a short hash naming the model behind a denoiser wrapper.

Fitted artefacts (IIA coefficients, calibrated grids) are bound to the model they were
fitted on through this hash; it reads the weights of the ``nn.Module`` behind the wrapper
(cached until they change), or the tensors of an analytic model.
"""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from typing import Any

import torch
from torch import Tensor

from .core import describe


def find_module(obj: Any, depth: int = 0) -> torch.nn.Module | None:
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
        found = find_module(c, depth + 1)
        if found is not None:
            return found
    return None


def device_of(denoiser: Any) -> torch.device:
    """The device of the first weight or buffer of the network behind ``denoiser`` (CPU for
    analytic models)."""
    module = describe(denoiser).network  # declared by samplerlab's denoisers
    if module is None:
        module = find_module(denoiser)  # a user's plain function: its closure or attributes
    if module is not None:
        for t in [*module.parameters(), *module.buffers()]:
            return t.device
    return torch.device("cpu")


def hash_tensor(h: Any, name: str, t: Tensor) -> None:
    """Feed ``name``, dtype, shape and the bytes of ``t`` into the hash ``h``."""
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
        hash_tensor(h, name, t)
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
    module = describe(denoiser).network  # declared by samplerlab's denoisers
    if module is None:
        module = find_module(denoiser)  # a user's plain function: its closure or attributes
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
                hash_tensor(h, name, tensors[name])
        else:
            h.update(repr(denoiser).encode())
    return h.hexdigest()[:16]
