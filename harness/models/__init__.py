"""The registered models (``model.name``) and the contract they share.

``base`` (the ``Encoder`` contract, its capabilities, the registry,
``build_encoder``, ``classifier_of``), ``macro`` (macro-layer specs, ``Encoding``
and the encoder pass a mirror network reads), ``dense`` (fc layers as convolutions),
``vgg`` (vgg16, vgg_small_2, vgg_small_3), ``alexnet`` (alexnet), ``mlp`` (mlp),
``conv_large`` (conv_large) and ``wrn`` (wrn_28_2, wrn_28_8, wrn_37_2), the consistency
methods' backbones, and ``resnet`` (resnet50), the ImageNet semi-supervised one.
Importing this package registers every model.
"""

from harness.models.alexnet import AlexNet
from harness.models.base import (
    CAPABILITIES,
    DENSE,
    MACRO_LAYERS,
    MODELS,
    SWITCHES,
    Encoder,
    available_models,
    build_encoder,
    classifier_of,
    register_model,
    require,
)
from harness.models.conv_large import ConvLarge
from harness.models.macro import (
    ConvSpec,
    Encoding,
    MacroEncoder,
    MacroSpec,
    PoolSpec,
    Tap,
)
from harness.models.mlp import MLP
from harness.models.resnet import ResNet50
from harness.models.vgg import ARCHITECTURES, VGG, Architecture, load_torchvision_vgg
from harness.models.wrn import WideResNet

__all__ = [
    "ARCHITECTURES",
    "CAPABILITIES",
    "DENSE",
    "MACRO_LAYERS",
    "MLP",
    "MODELS",
    "SWITCHES",
    "VGG",
    "WideResNet",
    "ResNet50",
    "AlexNet",
    "ConvLarge",
    "Architecture",
    "ConvSpec",
    "Encoder",
    "Encoding",
    "MacroEncoder",
    "MacroSpec",
    "PoolSpec",
    "Tap",
    "available_models",
    "build_encoder",
    "classifier_of",
    "load_torchvision_vgg",
    "register_model",
    "require",
]
