"""Learning-rate schedules as multipliers of the peak LR, per step."""

from __future__ import annotations

import math

from saes.config import Schedule


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: Schedule, final_ratio: float) -> float:
    """Linear warmup from 0 over ``warmup_steps``, then ``schedule`` down to ``final_ratio``."""
    schedule = Schedule(schedule)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == Schedule.constant:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == Schedule.linear:
        return 1.0 - (1.0 - final_ratio) * progress
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
