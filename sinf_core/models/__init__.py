"""Architectures, a registry, model specs (torchvision:NAME, timm:NAME, module:callable), and weight loading."""

from .base import PrunableLayer, SinfModel  # noqa: F401
from .registry import (  # noqa: F401
    MODELS, ModelEntry, Weights, build_model, get_entry, load_model, load_state_dict_checked, model_for_classes, read_checkpoint,
    seed_hub_cache,
)
from .specs import ModelSpec, is_spec, parse_spec, same_model  # noqa: F401
