"""Import torchvision even where its compiled operators cannot load.

PyPI's torchvision wheels are CUDA builds. Beside the CPU build of torch they
fail at import with ``operator torchvision::nms does not exist``:
``torchvision/_meta_registrations.py`` registers fake (meta) kernels for the
``nms``/``qnms`` operators, whose schemas live in the compiled ``_C`` library
that could not be loaded. The harness uses none of the compiled ops (no
detection ops; models, datasets and transforms are pure Python), so when that
exact failure happens we define the two schemas ourselves and import again.
Where the compiled ops do load (a CUDA cluster with matching builds), the first
import succeeds and nothing here changes anything.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

# Kept alive for the whole process: dropping the Library object unregisters its schemas.
_schema_library: torch.library.Library | None = None

_MISSING_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def import_torchvision() -> ModuleType:
    """Return the ``torchvision`` module, defining missing op schemas if needed."""
    global _schema_library
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    # Drop the half-imported package so the second import starts clean.
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    _schema_library = torch.library.Library("torchvision", "DEF")
    for schema in _MISSING_SCHEMAS:
        _schema_library.define(schema)
    return importlib.import_module("torchvision")
