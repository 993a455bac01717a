"""Ladder networks (Rasmus, Valpola, Honkala, Berglund & Raiko, NIPS 2015).

``settings`` (the ``ladder:``, ``ladder_gamma:`` and ``ladder_supervised:`` sections
of a suite), ``model`` (the registered ``ladder_mlp`` encoder, batch-normalized,
with clean and corrupted passes), ``method`` (the full Ladder, the Γ-model and the
supervised baseline of the same encoder, with the decoder and its combinator).
This file imports nothing.
"""
