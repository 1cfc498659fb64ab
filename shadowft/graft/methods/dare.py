"""`dare`: DARE (Drop And REscale, Yu et al. 2023, arXiv:2311.03099) on the one update grafted.

    W = W_instruct + alpha * (m * update / density),  m[i] ~ Bernoulli(density), seeded

mergekit's `dare_linear` applied to a single update (its `sparsify.bernoulli` mask: each element
of the update is kept with probability `density`, so a fraction 1 - density is dropped on
average), with the DARE paper's rescale: the kept entries are divided by `density`, so the
expected result is the update itself (mergekit <= 0.0.5 did this; mergekit 0.1 instead scales the
kept entries so that the tensor's L1 norm is unchanged, which is not offered here).

Seeding: mergekit draws its mask with `torch.bernoulli` from the global RNG, once per tensor. A
graft streams each tensor in chunks whose layout depends on the update source (a LoRA adapter's
row blocks, a delta's flat chunks), so the mask is drawn per fixed block of `BLOCK` elements from
a generator seeded with (seed, tensor name, block index): the result depends on the seed and the
update alone, never on the chunking or the source, and is the same on every run. It cannot equal
mergekit's bit for bit (another draw), only in distribution; at density 1 both are the update.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from pydantic import Field

from shadowft.graft.methods.base import GraftMethod, MethodParams

if TYPE_CHECKING:
    import torch

#: Elements drawn from one generator: the mask of a block is fixed whatever chunk it falls in.
BLOCK = 1 << 16


class DareParams(MethodParams):
    density: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Fraction of each tensor's update kept (each element with this probability); the kept "
        "entries are divided by it. 1 = the whole update (linear).",
    )
    seed: int = Field(
        default=0, ge=0, le=2**64 - 1, description="Seed of the random drop: the same seed gives the same graft."
    )


def block_seed(seed: int, name: str, block: int) -> int:
    """The generator seed of block `block` of tensor `name`: a keyed hash, so tensors and blocks
    get unrelated streams."""
    digest = hashlib.blake2b(f"{name}\0{block}".encode(), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def uniforms(seed: int, name: str, start: int, n: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 uniforms in [0, 1) of elements [start, start + n) of tensor `name`'s mask draw."""
    import torch

    out = torch.empty(n, dtype=torch.float32) if out is None else out[:n]
    block_buf: torch.Tensor | None = None
    pos, end = start, start + n
    while pos < end:
        b = pos // BLOCK
        hi = min(end, (b + 1) * BLOCK)
        gen = torch.Generator().manual_seed(block_seed(seed, name, b))
        if pos == b * BLOCK and hi == (b + 1) * BLOCK:
            torch.rand(BLOCK, generator=gen, out=out[pos - start : hi - start])
        else:  # a chunk boundary inside the block: draw the whole block, keep the part in the chunk
            block_buf = torch.rand(BLOCK, generator=gen, out=block_buf)
            out[pos - start : hi - start] = block_buf[pos - b * BLOCK : hi - b * BLOCK]
        pos = hi
    return out


def keep_mask(seed: int, name: str, start: int, n: int, density: float) -> torch.Tensor:
    """Which of elements [start, start + n) of tensor `name`'s update DARE keeps (bool)."""
    return uniforms(seed, name, start, n) < density


class Dare(GraftMethod):
    name = "dare"
    summary = "W_instruct + alpha * DARE(update): keep each element with probability density, rescale by 1/density"
    Params = DareParams

    def __init__(self, params: DareParams, alpha: float = 1.0) -> None:
        super().__init__(params, alpha)
        self.density = params.density
        self.seed = params.seed
        self._u: torch.Tensor | None = None

    def combine(
        self, name: str, inst: torch.Tensor, update: torch.Tensor, scale: float, out: torch.Tensor, start: int
    ) -> torch.Tensor:
        import torch

        if self.density < 1:
            n = update.numel()
            if self._u is None or self._u.numel() < n:
                self._u = torch.empty(n, dtype=torch.float32)
            u = uniforms(self.seed, name, start, n, self._u)
            update.mul_(u.lt_(self.density).view(update.shape))  # drop (u is 1.0 where kept, else 0.0)
            update.div_(self.density)  # rescale the kept entries
        return torch.add(inst, update, alpha=self.alpha * scale, out=out)
