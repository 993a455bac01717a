"""The registered method families (see ``harness.plugins`` for the layout).

``baseline.py``: supervised cross-entropy on the labeled subset.
``decoding/``: decoding-pathway augmentation (Zhang, Lee & Lee, ICML 2016), six variants.
``ladder/``: Ladder networks (Rasmus et al., NIPS 2015): the full Ladder, the Γ-model and
the supervised baseline of their encoder, on the family's own ``ladder_mlp``.

Add a family by adding a module or a package here; nothing else imports it by name.
This file imports nothing: the report finds ``methods/<family>/report.py`` through
it without loading torch.
"""
