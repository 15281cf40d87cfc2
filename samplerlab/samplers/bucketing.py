"""Row bucketing for compiled networks: few input shapes, the rows asked for back.

A network compiled with ``torch.compile`` (and CUDA graphs, ``mode="reduce-overhead"``)
records one graph per input shape. Samplers call the network with varying row counts
(parallel samplers' windows, PMM's midpoints), so :class:`Bucketed` pads the rows of
every call up to a bucket size ``base * 2**k`` by repeating the last row, and drops the
padded rows from the output. Row ``j`` of the output depends only on row ``j`` of the
input, so the rows asked for are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .denoisers import _Wrapper


class Bucketed(_Wrapper):
    """Pads the rows of every call ``inner(x, s)`` to ``base * 2**k`` rows.

    ``inner`` is a network call ``(x, t)`` or a denoiser ``D(x, sigma)``; attribute look-ups
    (``sigma_min``, ``vp``, ...) go to it. With ``cuda_graphs``, each call marks a new
    CUDA-graph step and its output is copied out of the graph's memory pool (the next
    replay would overwrite it).
    """

    def __init__(
        self, inner: Callable[[Tensor, Tensor], Tensor], base: int, cuda_graphs: bool = False
    ) -> None:
        super().__init__(inner)
        self.base, self.cuda_graphs = base, cuda_graphs

    def __call__(self, x: Tensor, s: Tensor) -> Tensor:
        # The bucket: the smallest base * 2**k holding every row.
        rows, size = x.shape[0], self.base
        while size < rows:
            size *= 2
        # Pad with copies of the last row.
        if size > rows:
            x = torch.cat([x, x[-1:].expand(size - rows, *x.shape[1:])])
            s = torch.cat([s, s[-1:].expand(size - rows)])
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        # Evaluate, keep the rows asked for.
        out = self.inner(x, s)
        if size > rows:
            out = out[:rows]
        return out.clone() if self.cuda_graphs else out
