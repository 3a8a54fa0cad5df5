"""Short names for the tiny in-memory builders, which live in conftest.py."""

from .conftest import TINY_ARCHITECTURES as ARCHITECTURES
from .conftest import build_tiny_model as tiny_model
from .conftest import build_tiny_tokenizer as tiny_tokenizer

__all__ = ["ARCHITECTURES", "tiny_model", "tiny_tokenizer"]
