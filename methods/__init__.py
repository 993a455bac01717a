"""The registered method families (see ``harness.plugins`` for the layout).

``baseline.py``: supervised cross-entropy on the labeled subset.
``decoding/``: decoding-pathway augmentation (Zhang, Lee & Lee, ICML 2016), six variants.

Add a family by adding a module or a package here; nothing else imports it by name.
This file imports nothing: the report finds ``methods/<family>/report.py`` through
it without loading torch.
"""
