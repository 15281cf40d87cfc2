"""Collectives of the evaluation: the rank, world size, sums, maxima, gathers and broadcasts
of a Lightning strategy, or of a single process (no communication).

Samples use per-sample seeds sharded over the ranks (rank ``r`` holds seeds ``r, r + world,
...``); :func:`gather_rows` puts every rank's rows back in global seed order, so what is
gathered does not depend on the world size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Dist:
    """Rank, world size and collectives of a Lightning strategy (or a single process)."""

    def __init__(self, strategy: Any | None = None) -> None:
        self.strategy = strategy
        self.rank = strategy.global_rank if strategy is not None else 0
        self.world = strategy.world_size if strategy is not None else 1

    def sum(self, t: Tensor) -> Tensor:
        return self.strategy.reduce(t, reduce_op="sum") if self.world > 1 else t

    def max(self, t: Tensor) -> Tensor:
        return self.strategy.reduce(t, reduce_op="max") if self.world > 1 else t

    def gather(self, t: Tensor) -> Tensor:  # [world, ...]
        return self.strategy.all_gather(t) if self.world > 1 else t[None]

    def broadcast(self, obj: Any) -> Any:  # rank 0's object on every rank
        return self.strategy.broadcast(obj, src=0) if self.world > 1 else obj

    def barrier(self) -> None:
        if self.world > 1:
            self.strategy.barrier()


def gather_rows(dist: Dist, local: Tensor, k: int, num_samples: int) -> Tensor:
    """Every rank's rows in global seed order (rank r holds seeds r, r + world, ... of
    ``num_samples``); ``k``: the most rows a rank holds."""
    if local.shape[0] < k:  # pad to gather evenly; padding lands after the real rows
        local = torch.cat([local, local.new_zeros(k - local.shape[0], *local.shape[1:])])
    gathered = dist.gather(local)  # [world, k, ...]: seed j*world + r
    n_real = [len(range(r, num_samples, dist.world)) for r in range(dist.world)]
    out = gathered.transpose(0, 1).reshape(-1, *local.shape[1:])
    # Drop the padding rows (rank r's rows beyond n_real[r]).
    keep = [j * dist.world + r for j in range(k) for r in range(dist.world) if j < n_real[r]]
    return out[torch.tensor(keep, device=out.device)]
