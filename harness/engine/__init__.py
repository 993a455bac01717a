"""The training engine: one run from its split to its record, for any registered method.

``context`` (what a run's steps share), ``batches`` (an epoch's seeded batch
stream), ``loop`` (stages, epochs, steps), ``evaluate`` (top-k error, single crop
and dense), ``checkpoint`` (torch's side of the store), ``provenance``,
``distributed`` (DDP helpers) and ``lifecycle`` (``train_run``: lock, resume,
stages, evaluation, record). It knows methods only through ``harness.method``.
"""
