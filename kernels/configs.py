"""Launch configurations of the head kernels: one baked default per GPU family, a small autotune set.

NOT YET TUNED ON HARDWARE: the baked values below were chosen from Hopper/Ampere first principles
(wgmma wants BLOCK_N >= 64 and 4/8 warps; 3-4 stages hide the K-loop's loads; a [128, 128] fp32 logits
tile is 64 registers per thread at 8 warps, leaving room for the [128, 64] dX/dW chunks). Run
``INPO_AUTOTUNE=1 python -m bench.head`` on the target GPU and bake the winners here.
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
    # Anything else with CUDA: conservative tiles that fit every recent GPU's shared memory.
    "fallback": (KernelConfig(64, 128, 32, num_warps=4, num_stages=2),
                 KernelConfig(64, 64, 32, num_warps=4, num_stages=2, group_n=8)),
    # Triton interpreter (CPU): large tiles so it runs few programs; warps/stages are ignored there.
    "interpreter": (KernelConfig(128, 512, 64, num_warps=4, num_stages=1),
                    KernelConfig(128, 512, 64, num_warps=4, num_stages=1, group_n=4)),
}

# The opt-in autotune set (INPO_AUTOTUNE=1): small on purpose, every entry sensible on sm80/sm90.
AUTOTUNE_FWD = [
    KernelConfig(128, 256, 64, num_warps=8, num_stages=3),
    KernelConfig(128, 128, 64, num_warps=8, num_stages=4),
    KernelConfig(64, 256, 64, num_warps=4, num_stages=4),
    KernelConfig(128, 256, 32, num_warps=8, num_stages=4),
    KernelConfig(64, 128, 64, num_warps=4, num_stages=3),
]
AUTOTUNE_BWD = [
    KernelConfig(128, 128, 64, num_warps=8, num_stages=3, group_n=8),
    KernelConfig(128, 128, 32, num_warps=8, num_stages=4, group_n=8),
    KernelConfig(64, 128, 64, num_warps=4, num_stages=3, group_n=8),
    KernelConfig(128, 64, 64, num_warps=4, num_stages=3, group_n=16),
    KernelConfig(64, 64, 64, num_warps=4, num_stages=3, group_n=8),
]


def device_family(capability: tuple[int, int] | None) -> str:
    """``interpreter`` for None (CPU), else ``sm90`` (Hopper), ``sm80`` (Ampere/Ada) or ``fallback``."""
    if capability is None:
        return "interpreter"
    major, _ = capability
    if major == 9:
        return "sm90"
    if major == 8:
        return "sm80"
    return "fallback"
