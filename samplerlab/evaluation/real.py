"""The real set's side of FID: which data (a key of their identity and content), their
feature statistics and range, computed once (sharded over the ranks, all-reduced) and
cached on disk.

The cache file is keyed by the dataset's identity (:func:`dataset_id`), the feature
extractor, N and the data's content (:func:`data_content_key`: file names, sizes and
modification times, or the bytes of an in-memory set), so changed data never reuse stale
statistics. Beside the full-set statistics it holds those of the even and odd dataset
indices (the data-vs-data FID floor) and the data's range (for the divergence check).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..fileio import atomic_write
from .dist import Dist
from .fid import stats_of
from .plan import one_line


class RealData(Protocol):
    """What the evaluation reads of a data module: the full real set, its shape and config."""

    cfg: Any
    real: Dataset | None
    shape: tuple[int, ...] | None

    def prepare(self) -> None: ...


def dataset_id(cfg: Any) -> str:
    """A key for cached statistics: which data (the ``data`` config), at which size."""
    if cfg.name == "gmm":
        g = cfg.gmm
        return f"gmm-d{g.dim}-k{g.components}-s{g.seed}-n{g.num_samples}"
    if cfg.name == "image_folder":
        root = Path(cfg.root).resolve()
        tag = hashlib.sha1(str(root).encode()).hexdigest()[:8]
        return f"folder-{root.name}-{tag}-{cfg.channels}x{cfg.image_size}"
    return f"{cfg.name}-{cfg.image_size if cfg.name == 'digits' else 32}"


def data_content_key(dm: RealData) -> str:
    """A hash of the real set's content: its files' names, sizes and modification times
    (image folders, CIFAR-10) or the bytes of an in-memory set (digits, the mixture)."""
    h = hashlib.sha256()
    ds = dm.real
    if isinstance(ds, TensorDataset):
        for t in ds.tensors:
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]
    files = getattr(ds, "files", None)
    root = getattr(ds, "root", None) or dm.cfg.get("root")
    if files is None and root is not None:
        files = sorted(p for p in Path(root).rglob("*") if p.is_file())
    for p in files or []:
        st = Path(p).stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns};".encode())
    h.update(f"n={len(ds)}".encode())
    return h.hexdigest()[:16]


class RealStatistics:
    """The real set's feature statistics (``all``, ``even``, ``odd``: feature sums of
    :func:`samplerlab.evaluation.fid.stats_of`) and ``range`` (``[lo, hi]``), cached.

    ``ev``: the ``eval`` config (``cache_dir``, ``batch_size``); ``data_cfg``: the ``data``
    config; ``note``: where a note for the report goes (a corrupt or unwritable cache)."""

    def __init__(
        self,
        ev: Any,
        data_cfg: Any,
        dm: RealData,
        features: nn.Module,
        feature_id: str,
        out_dir: Path,
        note: Callable[[str], None],
    ) -> None:
        self.ev, self.data_cfg, self.dm = ev, data_cfg, dm
        self.features, self.feature_id = features, feature_id
        self.out_dir = out_dir
        self.note = note
        self._path: Path | None = None
        self._stats: dict[str, Any] | None = None

    def path(self) -> Path:
        """The cache file: keyed by the data's content, features and N (the content is read
        once)."""
        if self._path is None:
            n = len(self.dm.real)
            content = data_content_key(self.dm)
            key = f"{dataset_id(self.data_cfg)}-{self.feature_id}-n{n}-{content}"
            cache_dir = Path(self.ev.cache_dir or (self.out_dir.parent / "fid_cache"))
            self._path = cache_dir / f"real-{key}.pt"
        return self._path

    def _features_of(self, ds: Any, device: torch.device) -> tuple[Tensor, Tensor]:
        feats = []
        lo, hi = torch.tensor(math.inf), torch.tensor(-math.inf)
        loader = DataLoader(ds, batch_size=max(self.ev.batch_size, 1), shuffle=False)
        for x, _ in loader:
            feats.append(self.features(x.to(device)).cpu())
            lo, hi = torch.minimum(lo, x.double().min()), torch.maximum(hi, x.double().max())
        n = self.features.num_features
        f = torch.cat(feats) if feats else torch.zeros(0, n, dtype=torch.float64)
        return f, torch.stack([lo, hi]).double()

    def _check(self, blob: Any) -> None:
        nf = self.features.num_features
        if not isinstance(blob, dict) or not {"all", "even", "odd", "range"} <= set(blob):
            raise ValueError("missing entries")
        for part in ("all", "even", "odd"):
            s = blob[part]
            if tuple(s["sum"].shape) != (nf,) or tuple(s["cov_sum"].shape) != (nf, nf):
                raise ValueError(f"'{part}' statistics have the wrong shape")
        if tuple(blob["range"].shape) != (2,):
            raise ValueError("'range' has the wrong shape")

    def get(self, device: torch.device, dist: Dist) -> dict[str, Any]:
        """The statistics, from the cache or computed sharded over ranks; a corrupt cache
        file is rebuilt with a note naming it."""
        if self._stats is not None:
            return self._stats
        path = self.path()
        if path.is_file():
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                self._check(blob)
                self._stats = blob
                return blob
            except Exception as e:
                self.note(f"FID cache {path} is corrupt ({one_line(e)}); rebuilding it")
        n = len(self.dm.real)
        idx = list(range(n))[dist.rank :: dist.world]
        f, rng = self._features_of(Subset(self.dm.real, idx), device)
        # Halves: even and odd dataset indices (for the data-vs-data floor).
        even = torch.tensor([i % 2 == 0 for i in idx], dtype=torch.bool)
        out: dict[str, Any] = {
            "all": stats_of(f),
            "even": stats_of(f[even]),
            "odd": stats_of(f[~even]),
        }
        for part in out.values():
            for k in part:
                part[k] = dist.sum(part[k].to(device)).cpu()
        lo = -dist.max((-rng[0]).to(device)).cpu()
        hi = dist.max(rng[1].to(device)).cpu()
        out["range"] = torch.stack([lo, hi])
        if dist.rank == 0:
            try:
                atomic_write(path, lambda tmp: torch.save(out, tmp))
            except OSError as e:  # a read-only shared cache: compute each time, say so
                self.note(f"FID cache {path} not written ({e.strerror or one_line(e)})")
        dist.barrier()
        self._stats = out
        return out
