"""SINF: Semantic Inference for trained CNN classifiers.

A shared stem runs on every input, a route predictor picks the input's semantic cluster, and only
that cluster's physically pruned subgraph runs after it. The library knows nothing of Streamlit.
"""

__version__ = "0.1.0"

from .errors import SinfError  # noqa: F401
