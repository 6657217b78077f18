"""Architectures, a registry, and pretrained-weight loading."""

from .base import PrunableLayer, SinfModel  # noqa: F401
from .registry import MODELS, build_model, get_entry, load_model, load_state_dict_checked, read_checkpoint, seed_hub_cache  # noqa: F401
