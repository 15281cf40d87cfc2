"""Data modules: ``digits`` (scikit-learn's bundled 8x8 digits), ``gmm`` (samples of an analytic
Gaussian mixture), ``image_folder`` (any folder of images) and ``cifar10`` (torchvision, local
root). Nothing is downloaded. Every item is ``(x, y)`` with ``x`` in ``[-1, 1]`` (images) and
``y`` the class label (``-1`` where there is none).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from ..errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MIN_IMAGES = 4  # a train and a validation split, and two halves for the FID floor


def digits_tensor(image_size: int = 8) -> tuple[Tensor, Tensor]:
    """All 1797 digits as ``[N, 1, S, S]`` in ``[-1, 1]`` (bilinear upsampling if S != 8)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 16.0 * 2 - 1
    if image_size != 8:
        x = torch.nn.functional.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False
        ).clamp(-1, 1)
    return x, torch.as_tensor(d.target, dtype=torch.long)


class ImageFolderDataset(Dataset):
    """Every image under ``root`` (recursively); the label is the index of its top folder."""

    def __init__(self, root: str | Path, image_size: int, channels: int | None) -> None:
        import torchvision.transforms as T
        from PIL import Image

        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"data.root: image folder {self.root} does not exist")
        self.files = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.files:
            raise ConfigError(
                f"data.root: no images ({', '.join(IMAGE_SUFFIXES)}) found under {self.root}"
            )
        if len(self.files) < MIN_IMAGES:
            raise ConfigError(
                f"data.root: {self.root} holds {len(self.files)} image(s); training needs at "
                f"least {MIN_IMAGES} (a training and a validation split, FID statistics)"
            )
        # Every file is opened now (headers only: fast): a corrupt image fails here, before
        # training, naming the file, not in the middle of an epoch.
        modes = set()
        for f in self.files:
            try:
                with Image.open(f) as im:
                    modes.add(im.mode)
            except Exception as e:
                raise ConfigError(
                    f"data.root: {f} is not a readable image ({type(e).__name__}); "
                    "remove or replace it"
                ) from None
        if channels is None:  # the data's own: grayscale only if every image is
            channels = 1 if modes <= {"L", "1", "I", "I;16", "F"} else 3
        self.channels = channels
        tops = sorted(
            {p.relative_to(self.root).parts[0] for p in self.files if p.parent != self.root}
        )
        index = {t: i for i, t in enumerate(tops)}
        self.labels = [
            index.get(p.relative_to(self.root).parts[0], -1) if p.parent != self.root else -1
            for p in self.files
        ]
        self.mode = "L" if channels == 1 else "RGB"
        self.transform = T.Compose(
            [
                T.Resize(image_size),
                T.CenterCrop(image_size),
                T.ToTensor(),
                T.Normalize([0.5] * channels, [0.5] * channels),
            ]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                return self.transform(im.convert(self.mode)), self.labels[i]
        except OSError as e:  # truncated files pass the header check at construction
            raise ConfigError(f"data.root: cannot decode image {self.files[i]} ({e})") from None


class CIFAR10Dataset(Dataset):
    """torchvision's CIFAR-10 training set from a local root, in ``[-1, 1]``."""

    def __init__(self, root: str | None) -> None:
        import torchvision
        import torchvision.transforms as T

        where = "data.root: CIFAR-10 not found"
        hint = "put cifar-10-batches-py/ (from cifar-10-python.tar.gz) there; nothing is downloaded"
        if root is None:
            raise ConfigError(f"{where}: set data.root to the folder that holds it; {hint}")
        try:
            self.ds = torchvision.datasets.CIFAR10(
                root,
                train=True,
                download=False,
                transform=T.Compose([T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]),
            )
        except RuntimeError:
            raise ConfigError(f"{where} at {root}; {hint}") from None

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.ds[i]


def build_dataset(cfg: Any) -> tuple[Dataset, tuple[int, ...], int]:
    """The full dataset, the shape of one item and the number of classes (0: none)."""
    name = cfg.name
    if name == "digits":
        x, y = digits_tensor(cfg.image_size)
        return TensorDataset(x, y), tuple(x.shape[1:]), 10
    if name == "gmm":
        from ..analytic import GaussianMixture

        g = cfg.gmm
        mix = GaussianMixture.default(dim=g.dim, components=g.components, seed=g.seed)
        gen = torch.Generator().manual_seed(g.seed + 1)
        x = mix.sample(g.num_samples, gen).float()
        y = torch.full((x.shape[0],), -1, dtype=torch.long)
        return TensorDataset(x, y), (g.dim,), 0
    if name == "image_folder":
        if cfg.root is None:
            raise ConfigError("data.root: image_folder needs data.root=FOLDER")
        ds = ImageFolderDataset(cfg.root, cfg.image_size, cfg.channels)
        if cfg.channels is None:  # resolved from the images: recorded in the saved config
            cfg.channels = ds.channels
        k = max(ds.labels) + 1
        return ds, (ds.channels, cfg.image_size, cfg.image_size), k
    if name == "cifar10":
        return CIFAR10Dataset(cfg.root), (3, 32, 32), 10
    raise ConfigError(f"data.name: unknown dataset '{name}'")


class EpochShuffle(Sampler[int]):
    """A permutation that depends only on (seed, epoch): resuming reproduces the order exactly.

    Lightning calls ``set_epoch`` at every epoch; under DDP Lightning's own
    ``DistributedSampler`` (also epoch-seeded) is used instead.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class DiffusionDataModule(pl.LightningDataModule):
    """Train/val split of one dataset; ``real`` is the full set (FID reference)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.real: Dataset | None = None
        self.train: Dataset | None = None
        self.val: Dataset | None = None
        self.shape: tuple[int, ...] | None = None
        self.num_classes = 0

    def prepare(self) -> None:
        if self.real is not None:
            return
        self.real, self.shape, self.num_classes = build_dataset(self.cfg)
        n = len(self.real)
        g = torch.Generator().manual_seed(self.cfg.seed)
        perm = torch.randperm(n, generator=g).tolist()
        n_val = min(max(1, round(n * self.cfg.val_fraction)), n - 1) if n > 1 else 0
        self.val = Subset(self.real, perm[:n_val])
        self.train = Subset(self.real, perm[n_val:])

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        sampler = EpochShuffle(len(ds), self.cfg.seed) if shuffle and world == 1 else None
        return DataLoader(
            ds,
            batch_size=self.cfg.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.cfg.num_workers,
            drop_last=shuffle and len(ds) > self.cfg.batch_size,
            persistent_workers=self.cfg.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)
