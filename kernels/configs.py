"""Launch configurations of the head kernels: one baked default per GPU family, a small autotune set.

NOT YET TUNED ON HARDWARE (no GPU was available when they were written). They were chosen from
Hopper/Ampere first principles and checked by compiling for sm90/sm80 without a GPU
(``python -m inpo.kernels.compile_check``: registers, spills, shared memory; bf16, no bias):

    kernel  family  BN  BV  BH warps stages   regs  spill  shared
    fwd     sm90   128 256  64   8    3        255    0    144 KiB   (128x128: 177 regs, but 64 FLOP/B of L2
    bwd     sm90   128 128  64   8    3        219    0    160 KiB    traffic is below what wgmma needs; filtered
                                                                  backward: 199 regs, 0 spill)
    dz      sm90   128 128  64   8    3        170    0     96 KiB
    fwd     sm80   128 128  32   8    3        217    0     32 KiB
    bwd     sm80   128 128  32   8    2        217    0     64 KiB   (filtered backward: 255 regs, 160 B spill;
                                                                  64x64x32/4w: none)
    fwd     fp32    64 128  16   8    2        178    0     12 KiB   (IEEE fp32 dots: FMA, see FP32)
    bwd     fp32    32  64  16   4    2        118    0     14 KiB   (with the opt-in filter: 147 regs, 0 spill;
                                                                  BH=32 spilled 8-16 B)

Forward tiles are wide in V because every vocabulary tile re-reads the token block from L2: a 128x256 tile
does 85 FLOP per loaded byte, 128x128 only 64. Run ``INPO_AUTOTUNE=1 python -m bench.head`` on the target
GPU and bake the winners here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch parameters of one head kernel (BLOCK_* must be powers of two >= 16)."""

    block_n: int
    block_v: int
    block_h: int
    num_warps: int = 4
    num_stages: int = 3
    group_n: int = 8  # backward only: token blocks that share one W tile in launch order

    def __post_init__(self):
        for name in ("block_n", "block_v", "block_h"):
            val = getattr(self, name)
            if val < 16 or val & (val - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of two >= 16, got {val}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"KernelConfig.num_warps must be one of 1, 2, 4, 8, 16, got {self.num_warps}")

    def meta(self, *, backward: bool) -> dict:
        kw = dict(BLOCK_N=self.block_n, BLOCK_V=self.block_v, BLOCK_H=self.block_h, num_warps=self.num_warps,
                  num_stages=self.num_stages)
        if backward:
            kw["GROUP_N"] = self.group_n
        return kw


# (forward, backward) per family; keys are the names `device_family` returns.
BAKED = {
    # H100 / H200 (sm90) -- not yet tuned on hardware.
    "sm90": (KernelConfig(128, 256, 64, num_warps=8, num_stages=3),
             KernelConfig(128, 128, 64, num_warps=8, num_stages=3, group_n=8)),
    # A100 (sm80) and Ada (sm89) -- not yet tuned on hardware.
    "sm80": (KernelConfig(128, 128, 32, num_warps=8, num_stages=3),
             KernelConfig(128, 128, 32, num_warps=8, num_stages=2, group_n=8)),
    # Anything else with CUDA (Volta/Turing, consumer Blackwell): small tiles that fit ~100 KiB of shared memory.
    "fallback": (KernelConfig(64, 64, 32, num_warps=4, num_stages=2),
                 KernelConfig(32, 64, 32, num_warps=4, num_stages=2, group_n=8)),
    # Triton interpreter (CPU): large tiles so it runs few programs; warps/stages are ignored there.
    "interpreter": (KernelConfig(128, 512, 64, num_warps=4, num_stages=1),
                    KernelConfig(128, 512, 64, num_warps=4, num_stages=1, group_n=4)),
}

# fp32 inputs on any GPU: exact (IEEE) dots run on FMA units, not tensor cores, and the tensor-core tiles above
# spill kilobytes there; these small tiles compile spill-free on sm90 (178 / 118 registers). fp32 is the
# accuracy path (training uses bf16), so it is not tuned for speed.
FP32 = (KernelConfig(64, 128, 16, num_warps=8, num_stages=2),
        KernelConfig(32, 64, 16, num_warps=4, num_stages=2, group_n=8))


# A model's tanh cap on the logits (SOFTCAP) keeps a few more fp32 temporaries per logit live: with the sm90 tiles
# above the forward spills 424 B and the backward 24 B (filtered: 320 B). These compile spill-free on sm90 (forward
# 209 registers, backward 197, filtered 216); not yet tuned on hardware either.
SOFTCAP_SM90 = (KernelConfig(128, 128, 64, num_warps=8, num_stages=3),
                KernelConfig(128, 64, 64, num_warps=8, num_stages=3, group_n=8))


def baked(family: str, fp32: bool = False, softcap: bool = False) -> tuple[KernelConfig, KernelConfig]:
    """(forward, backward) config for a device family; fp32 inputs on a GPU get the FP32 table, a softcapped
    head on sm90 the SOFTCAP_SM90 one."""
    if fp32 and family != "interpreter":
        return FP32
    if softcap and family == "sm90":
        return SOFTCAP_SM90
    return BAKED[family]


# The opt-in autotune set (INPO_AUTOTUNE=1): small on purpose, every entry sensible on sm80/sm90.
# Entries that compile without spills on sm90; configs that exceed a GPU's shared memory are skipped by Triton.
AUTOTUNE_FWD = [
    KernelConfig(128, 256, 64, num_warps=8, num_stages=3),
    KernelConfig(128, 256, 64, num_warps=8, num_stages=2),
    KernelConfig(128, 128, 64, num_warps=8, num_stages=4),
    KernelConfig(64, 256, 64, num_warps=4, num_stages=3),
    KernelConfig(128, 128, 32, num_warps=8, num_stages=3),
]
AUTOTUNE_BWD = [
    KernelConfig(128, 128, 64, num_warps=8, num_stages=3, group_n=8),
    KernelConfig(128, 128, 64, num_warps=8, num_stages=2, group_n=16),
    KernelConfig(128, 128, 32, num_warps=8, num_stages=3, group_n=8),
    KernelConfig(64, 128, 64, num_warps=4, num_stages=3, group_n=8),
    KernelConfig(128, 64, 64, num_warps=4, num_stages=3, group_n=8),
]


def device_family(capability: tuple[int, int] | None) -> str:
    """``interpreter`` for None (CPU), else ``sm90`` (Hopper, datacenter Blackwell), ``sm80`` (Ampere/Ada) or
    ``fallback``."""
    if capability is None:
        return "interpreter"
    major, _ = capability
    if major in (9, 10):
        return "sm90"
    if major == 8:
        return "sm80"
    return "fallback"
