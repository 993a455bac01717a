"""Decoding-pathway augmentation (Zhang, Lee & Lee, ICML 2016): SAE and SWWAE decoders.

``settings`` (the ``decoding:`` section of a suite), ``decoders`` (unpooling and
mirrored decoders), ``method`` (the six registered variants), ``report`` (the
reconstruction table and grids), ``invert`` (``python -m methods.decoding.invert``:
network-inversion pictures). This file imports nothing, so the report can load
``report`` without torch.
"""
