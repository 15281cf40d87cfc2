"""Latent diffusion pipelines from local diffusers folders: the denoiser on latents, the
conditioning it takes, and the decoder from latents to images.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models", Sec. 3) samples latents ``z`` of an autoencoder; an image is the
decoder's output ``D(z / s)`` with ``s`` the VAE config's ``scaling_factor`` (and, when
set, ``+ shift_factor``). Two folder layouts load:

- Stable-Diffusion-style (``unet/`` a ``UNet2DConditionModel``, ``vae/`` an
  ``AutoencoderKL``, ``text_encoder/`` and ``tokenizer/`` a CLIP text model, ``scheduler/``):
  text-conditional; a prompt's embedding is the text encoder's last hidden states over the
  tokens padded to the tokenizer's ``model_max_length`` (Rombach et al. 2022, Sec. 3.3:
  the cross-attention context), and the empty prompt's embedding is the unconditional
  value of classifier-free guidance (Ho & Salimans 2022, Sec. 3.2).
- DiT-style (``transformer/`` a DiT ``Transformer2DModel``, ``vae/``, ``scheduler/``):
  class-conditional (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers",
  Sec. 3.2); the null class (the label embedding's extra row, index ``num_classes``) is
  the unconditional value.

Nothing is downloaded: every part is read with ``local_files_only``. Sampling itself is
``samplerlab.sample(pipe.denoiser, ..., cond=, guidance=, uncond=)``; :func:`generate`
does it in batches for a list of prompts or labels and decodes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .denoisers import from_diffusers
from .samplers.core import describe
from .samplers.errors import SamplerError

__all__ = ["Generated", "LatentPipeline", "generate", "load", "read_prompts"]


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file, one per line (blank lines skipped; at least one)."""
    p = Path(path)
    if not p.is_file():
        raise SamplerError(f"prompts file {p} does not exist")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise SamplerError(f"prompts file {p} is not UTF-8 text ({e.reason})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise SamplerError(f"prompts file {p} holds no prompt (one per line)")
    return prompts


def _label_embedding(net: nn.Module) -> tuple[int, bool] | None:
    """``(num_classes, has_null_row)`` of a diffusers class-label embedding, if any."""
    from diffusers.models.embeddings import LabelEmbedding

    for m in net.modules():
        if isinstance(m, LabelEmbedding):
            return int(m.num_classes), m.embedding_table.num_embeddings > m.num_classes
    n = getattr(net.config, "num_class_embeds", None)  # UNet2DModel: no null row
    return (int(n), False) if n else None


@dataclass
class LatentPipeline:
    """A latent denoiser with its conditioning and decoder (see :func:`load`).

    Attributes:
        denoiser: ``D(z, sigma, cond)`` on latents (:func:`samplerlab.denoisers.from_diffusers`).
        vae: the ``AutoencoderKL`` whose decoder maps latents to images in ``[-1, 1]``.
        kind: ``text`` (prompts), ``class`` (integer labels) or ``none``.
        tokenizer, text_encoder: the text model (``kind == "text"``).
        num_classes: labels ``0 .. num_classes - 1`` (``kind == "class"``).
        null_label: the unconditional class (the null row of DiT's label embedding), if any.
    """

    denoiser: Any
    vae: nn.Module
    kind: str
    tokenizer: Any = None
    text_encoder: Any = None
    num_classes: int | None = None
    null_label: int | None = None
    folder: Path | None = None
    _uncond: Tensor | None = field(default=None, repr=False)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(describe(self.denoiser).data_shape)

    @property
    def scale_factor(self) -> int:
        """Image pixels per latent pixel: ``2 ** (decoder levels - 1)``."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, h, w = self.latent_shape
        f = self.scale_factor
        return (int(self.vae.config.out_channels), h * f, w * f)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], batch_size: int = 64) -> Tensor:
        """Text embeddings ``[n, L, E]`` (the text encoder's last hidden states, tokens padded
        to ``model_max_length``: each prompt's embedding is independent of its batch)."""
        if self.kind != "text":
            raise SamplerError(f"{self.folder}: a {self.kind}-conditional model takes no prompts")
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise SamplerError("prompts must be a list of strings")
        tok, enc = self.tokenizer, self.text_encoder
        out = []
        for i in range(0, len(prompts), batch_size):
            ids = tok(
                list(prompts[i : i + batch_size]),
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            out.append(enc(ids.to(self.device))[0])
        if not out:
            raise SamplerError("prompts: need at least one prompt")
        return torch.cat(out)

    def labels(self, labels: Sequence[int] | Tensor) -> Tensor:
        """Class labels as a ``[n]`` long tensor, each checked against ``num_classes``."""
        if self.kind != "class":
            raise SamplerError(f"{self.folder}: a {self.kind}-conditional model takes no labels")
        y = torch.as_tensor(labels).reshape(-1)
        if y.numel() == 0 or y.is_floating_point():
            raise SamplerError(f"class labels must be integers, got {labels!r}")
        bad = [int(v) for v in y if not 0 <= int(v) < self.num_classes]
        if bad:
            raise SamplerError(
                f"class labels {bad} are out of range: this model has {self.num_classes} "
                f"classes (0..{self.num_classes - 1})"
            )
        return y.long().to(self.device)

    def conditions(self, values: Sequence[Any] | Tensor) -> Tensor:
        """Prompts (``kind == "text"``) or labels as the model's ``cond`` rows."""
        return self.encode_prompts(values) if self.kind == "text" else self.labels(values)

    def uncond(self) -> Tensor:
        """The unconditional value for guidance: the empty prompt's embedding (``[1, L, E]``)
        or the null label (``[1]``)."""
        if self._uncond is None:
            if self.kind == "text":
                self._uncond = self.encode_prompts([""])
            elif self.kind == "class" and self.null_label is not None:
                self._uncond = torch.tensor([self.null_label], device=self.device)
            else:
                raise SamplerError(
                    f"{self.folder}: this model has no unconditional input, so it cannot be "
                    "guided (pass uncond= to samplerlab.sample yourself)"
                )
        return self._uncond

    @torch.no_grad()
    def decode(self, latents: Tensor, batch_size: int = 16, clamp: bool = True) -> Tensor:
        """Images ``[n, C, H, W]`` (float32, ``[-1, 1]`` when ``clamp``) from latents: the VAE
        decoder of ``z / scaling_factor (+ shift_factor)``, ``batch_size`` latents at a time."""
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise SamplerError(
                f"latents have shape {tuple(latents.shape)}; this model's are "
                f"(n, {', '.join(map(str, self.latent_shape))})"
            )
        cfg = self.vae.config
        w = next(self.vae.parameters())
        out = []
        for i in range(0, latents.shape[0], batch_size):
            z = latents[i : i + batch_size].to(w.device, w.dtype) / cfg.scaling_factor
            if getattr(cfg, "shift_factor", None) is not None:
                z = z + cfg.shift_factor
            out.append(self.vae.decode(z).sample.float())
        x = torch.cat(out)
        return x.clamp(-1, 1) if clamp else x


def _transformers_class(root: Path, part: str, default: str) -> Any:
    """The transformers class that ``model_index.json`` names for ``part`` (default one)."""
    try:
        import transformers
    except ModuleNotFoundError:
        raise SamplerError(
            f"{root}: a text-conditional pipeline needs the transformers package "
            "(pip install -e '.[latent]')"
        ) from None

    name = default
    index = root / "model_index.json"
    if index.is_file():
        try:
            entry = json.loads(index.read_text()).get(part)
        except json.JSONDecodeError as e:
            raise SamplerError(f"{index}: not valid JSON ({e.msg})") from None
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == "transformers":
            name = entry[1]
    cls = getattr(transformers, name, None)
    if cls is None:
        raise SamplerError(f"{index}: {part} class {name!r} is not in transformers")
    return cls


def _load_part(root: Path, part: str, load: Any) -> Any:
    if not (root / part).is_dir():
        raise SamplerError(f"{root}: no {part}/ folder (a latent pipeline needs one)")
    try:
        return load()
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SamplerError(f"cannot load {root / part}: {first}") from None


def load(
    folder: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LatentPipeline:
    """A :class:`LatentPipeline` from a local Stable-Diffusion- or DiT-style folder.

    Every network (denoiser, VAE, text encoder) is put on ``device`` in ``dtype`` (default:
    as saved). A folder without ``text_encoder/`` whose network takes no text is
    class-conditional when its network has a label embedding, else unconditional.
    """
    from diffusers import AutoencoderKL

    root = Path(folder)
    if not root.is_dir():
        raise SamplerError(f"pipeline folder {root} does not exist")
    den = from_diffusers(root, device=device, dtype=dtype)
    net = describe(den).network
    vae = _load_part(
        root, "vae", lambda: AutoencoderKL.from_pretrained(root / "vae", local_files_only=True)
    )
    vae = vae.eval().to(device=device, dtype=dtype or net.dtype)
    c = describe(den).data_shape[0]
    if vae.config.latent_channels != c:
        raise SamplerError(
            f"{root / 'vae' / 'config.json'}: latent_channels {vae.config.latent_channels} "
            f"but the denoiser's latents have {c} channels"
        )
    pipe = LatentPipeline(den, vae, "none", folder=root)
    if getattr(net.config, "addition_embed_type", None) is not None:
        raise SamplerError(
            f"{root / 'unet'}: addition_embed_type "
            f"{net.config.addition_embed_type!r} (SDXL-style extra conditioning) is not "
            "supported; SD 1.x/2.x-style and DiT folders are"
        )
    if "encoder_hidden_states" in den.model_fn.required:
        tok_cls = _transformers_class(root, "tokenizer", "CLIPTokenizer")
        enc_cls = _transformers_class(root, "text_encoder", "CLIPTextModel")
        pipe.tokenizer = _load_part(
            root,
            "tokenizer",
            lambda: tok_cls.from_pretrained(root / "tokenizer", local_files_only=True),
        )
        enc = _load_part(
            root,
            "text_encoder",
            lambda: enc_cls.from_pretrained(root / "text_encoder", local_files_only=True),
        )
        pipe.text_encoder = enc.eval().to(device=device, dtype=dtype or net.dtype)
        width, want = enc.config.hidden_size, net.config.cross_attention_dim
        if width != want:
            raise SamplerError(
                f"{root / 'text_encoder'}: hidden_size {width} but the UNet's "
                f"cross_attention_dim is {want}"
            )
        pipe.kind = "text"
    elif (labels := _label_embedding(net)) is not None:
        pipe.kind, pipe.num_classes = "class", labels[0]
        pipe.null_label = labels[0] if labels[1] else None
    return pipe


@dataclass
class Generated:
    """Samples of :func:`generate`: decoded ``images`` (None if not decoded), ``latents``,
    the mean NFE per sample, the most rounds of a batch and the seconds spent sampling."""

    images: Tensor | None
    latents: Tensor
    nfe: float
    rounds: int
    seconds: float


def generate(
    pipe: LatentPipeline,
    sampler: str,
    *,
    steps: int,
    seeds: Sequence[int],
    values: Sequence[Any] | Tensor | None = None,
    guidance: float | None = None,
    batch_size: int = 16,
    decode: bool = True,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> Generated:
    """Sample ``len(seeds)`` latents, sample ``k`` with seed ``seeds[k]`` and the prompt or
    label ``values[k mod len(values)]``; guidance ``w`` against :meth:`LatentPipeline.uncond`
    (``None`` or 1: conditional; ``guidance_interval=`` applies to guided runs only); then
    decode. ``kwargs`` go to ``samplerlab.sample``.
    Each sample depends only on its seed and condition, not on its batch."""
    from .sample import sample

    seeds = list(seeds)
    cond_all = None
    if values is not None:
        cond_all = pipe.conditions(values)
    elif pipe.kind == "text":
        raise SamplerError("this text-conditional model needs prompts")
    guided = guidance is not None and float(guidance) != 1.0
    uncond = pipe.uncond() if guided else None
    interval = kwargs.pop("guidance_interval", None)  # only meaningful when guided
    latents, rows, rounds, seconds = [], 0.0, 0, 0.0
    for start in range(0, len(seeds), batch_size):
        batch = seeds[start : start + batch_size]
        kw = dict(kwargs)
        if cond_all is not None:
            idx = torch.arange(start, start + len(batch)) % cond_all.shape[0]
            kw["cond"] = cond_all[idx.to(cond_all.device)]
            if guided:
                kw.update(guidance=float(guidance), uncond=uncond)
                if interval is not None:
                    kw["guidance_interval"] = interval
        res = sample(
            pipe.denoiser,
            sampler,
            steps=steps,
            shape=(len(batch), *pipe.latent_shape),
            seeds=batch,
            device=pipe.device,
            dtype=dtype,
            **kw,
        )
        seconds += res.seconds
        latents.append(res.x)
        rows += res.nfe * len(batch)
        rounds = max(rounds, res.rounds)
    z = torch.cat(latents)
    images = pipe.decode(z, batch_size=batch_size) if decode else None
    return Generated(images, z, rows / max(len(seeds), 1), rounds, seconds)
