"""Learning-rate schedules shared by the Stage-1 and Stage-2 modules (and tools that train outside Lightning)."""

from __future__ import annotations

import math


class warmup_cosine:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total`` steps."""

    def __init__(self, total: int, warmup: int, min_ratio: float = 0.0) -> None:
        self.total, self.warmup, self.min_ratio = total, min(warmup, total), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
