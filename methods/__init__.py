"""Registered methods: each module registers itself with ``@register_method``.

Add a method by writing one module here and importing it below; the order of
the imports is the order of ``methods=all`` (the baseline first).
"""

from methods import baseline, decoding  # noqa: F401
