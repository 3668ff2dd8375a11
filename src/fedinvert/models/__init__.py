"""Victim classifiers (DESIGN §2, §12 "Victims") and helpers that work on any classifier.

Importing this package registers the built-in victims in ``MODELS``: ``lenet-dlg``, ``lenet5``, ``convnet``,
``resnet18``, ``resnet18-imagenet``, ``resnet34``, ``mlp`` and ``vit`` (with optional LoRA adapters). Any
``nn.Module`` that ends in an ``nn.Linear`` works through the Python API without registration.
"""

from fedinvert.models.base import MODELS, build_model, last_linear, model_options, penultimate_features
from fedinvert.models.convnet import ConvNet
from fedinvert.models.imprint import ImprintBlock, ImprintedModel
from fedinvert.models.layers import MIN_IMAGE_SIZE
from fedinvert.models.lenet import LeNet5, LeNetDLG
from fedinvert.models.mlp import MLP
from fedinvert.models.resnet import BasicBlock, ResNet
from fedinvert.models.vit import ViT

__all__ = [
    "MIN_IMAGE_SIZE",
    "MODELS",
    "BasicBlock",
    "ConvNet",
    "ImprintBlock",
    "ImprintedModel",
    "LeNet5",
    "LeNetDLG",
    "MLP",
    "ResNet",
    "ViT",
    "build_model",
    "last_linear",
    "model_options",
    "penultimate_features",
]
