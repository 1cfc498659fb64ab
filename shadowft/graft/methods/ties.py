"""`ties`: TIES-merging's trim step (Yadav et al. 2023, arXiv:2306.01708) on the one update grafted.

    W = W_instruct + alpha * (m * update),  m keeps the top `density` fraction of |update| per tensor

mergekit's `ties` applied to a single update: its `sparsify.magnitude` keeps the
k = max(1, int(density * n)) elements of largest magnitude of each tensor's update and zeroes the
rest (density >= 1 keeps all). TIES' other steps are trivial with one update: the elected sign of
each element is the update's own sign, so the disjoint mean keeps every trimmed entry as it is
(mergekit's `ties` with one model and normalize gives base + trim(delta)); nothing is rescaled.

Magnitudes are ranked exactly as float32 values. Where several elements have the k-th largest
magnitude, those first in the tensor's element order are kept (mergekit's `argsort` leaves this
order unspecified), so exactly k are kept. The tensor is not held in memory: `prepare` streams the
update twice to find the k-th magnitude (a radix select on the float32 bit pattern, whose order is
that of the magnitudes: a histogram of the upper 16 bits, then of the lower 16 within the bin that
holds the k-th), and `combine` keeps what is above it, and the first ties, as the chunks come.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from shadowft.graft.methods.base import GraftMethod, MethodParams, UpdateStream

if TYPE_CHECKING:
    import torch


class TiesParams(MethodParams):
    density: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Fraction of each tensor's update kept: the entries of largest magnitude (at least one); "
        "the rest is zeroed. 1 = the whole update (linear).",
    )


def keep_count(density: float, n: int) -> int:
    """How many of a tensor's `n` update entries TIES keeps (mergekit's `magnitude`)."""
    if density >= 1 or n == 0:
        return n
    return max(1, int(density * n))


class Ties(GraftMethod):
    name = "ties"
    summary = (
        "W_instruct + alpha * TIES-trim(update): keep the top density fraction of each tensor's update by magnitude"
    )
    Params = TiesParams

    def __init__(self, params: TiesParams, alpha: float = 1.0) -> None:
        super().__init__(params, alpha)
        self.density = params.density
        self._threshold: int | None = None  # bit pattern of the k-th largest |update|; None: keep all
        self._ties_kept = 0  # entries equal to the threshold to keep (the first ones)
        self._ties_seen = 0
        self._abs: torch.Tensor | None = None

    def _bits(self, update: torch.Tensor) -> torch.Tensor:
        """|update| as int32 bit patterns (ordered as the magnitudes), in a reused buffer."""
        import torch

        n = update.numel()
        if self._abs is None or self._abs.numel() < n:
            self._abs = torch.empty(n, dtype=torch.float32)
        return torch.abs(update.reshape(-1), out=self._abs[:n]).view(torch.int32)

    def prepare(self, name: str, n: int, update: UpdateStream) -> None:
        import torch

        self._threshold, self._ties_seen = None, 0
        k = keep_count(self.density, n)
        if k >= n:
            return
        high = torch.zeros(1 << 15, dtype=torch.int64)  # sign bit cleared: 15 upper bits
        for _, _, w in update():
            high += torch.bincount((self._bits(w) >> 16).long(), minlength=1 << 15)
        top, above = _kth_from_top(high, k)
        low = torch.zeros(1 << 16, dtype=torch.int64)
        for _, _, w in update():
            bits = self._bits(w)
            low += torch.bincount((bits[(bits >> 16) == top] & 0xFFFF).long(), minlength=1 << 16)
        bottom, above_low = _kth_from_top(low, k - above)
        self._threshold = (top << 16) | bottom
        self._ties_kept = k - above - above_low

    def combine(
        self, name: str, inst: torch.Tensor, update: torch.Tensor, scale: float, out: torch.Tensor, start: int
    ) -> torch.Tensor:
        import torch

        if self._threshold is not None:
            bits = self._bits(update)
            keep = bits > self._threshold
            tie = bits == self._threshold
            if self._ties_seen < self._ties_kept:
                rank = torch.cumsum(tie, 0) + self._ties_seen
                keep |= tie & (rank <= self._ties_kept)
            self._ties_seen += int(tie.sum())
            update.mul_(keep.view(update.shape))
        return torch.add(inst, update, alpha=self.alpha * scale, out=out)


def _kth_from_top(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest value (k >= 1) of a histogram, and how many values lie in
    bins above it."""
    import torch

    from_top = hist.flip(0).cumsum(0)
    j = int(torch.searchsorted(from_top, torch.tensor([k]))[0])
    b = hist.numel() - 1 - j
    return b, int(from_top[j] - hist[b])
