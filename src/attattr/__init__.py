"""attattr: self-attention attribution for Hugging Face Transformers.

import attattr
loaded = attattr.models.load("minilm-rt")
attr = attattr.attribute(loaded.model, loaded.tokenizer, "a gorgeous, witty and deeply moving film")
attr.head_importance()      # [layers, heads]
attr.top_edges(5)           # strongest token -> token connections
"""

from . import data, models  # noqa: E402
from .analyses.tree import build as _tree_build  # noqa: E402, F401  (registers Attribution.tree)
from .core.engine import attribute, attribute_many  # noqa: E402
from .core.result import Attribution, Edge  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["Attribution", "Edge", "attribute", "attribute_many", "data", "models", "__version__"]
