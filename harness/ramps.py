"""Weight ramps of the consistency methods, as functions of training progress
(``Batch.progress``: the fraction of the stage done, in [0, 1)).

A ramp's length is a fraction of the stage, not a number of epochs, so that a
CPU-length suite keeps the shape of a paper's schedule.
"""

from __future__ import annotations

import math


def sigmoid_rampup(progress: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = progress / length, then 1 (Laine & Aila 2017, sec. 3.1
    and appendix; Tarvainen & Valpola 2017): 0.0067 at the start, 1 from ``length`` on."""
    if length <= 0:
        return 1.0
    t = min(max(progress / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def linear_rampup(progress: float, start: float, end: float) -> float:
    """0 until ``start``, linear to 1 at ``end``, then 1 (Lee 2013's α(t) shape, and
    MixMatch's λ_u ramp with ``start=0``)."""
    if progress >= end:
        return 1.0
    if progress <= start:
        return 0.0
    return (progress - start) / (end - start)
