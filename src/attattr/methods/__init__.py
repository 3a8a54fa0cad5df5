"""Head-importance methods, registered by name (docs/method.md §2; docs/method.md).

Each gives an `Importance`, a `[layers, heads]` table (higher = more important):
  attattr        mean over examples of max_{i,j} Attr_h(x) (gold-label probability, max pooling)
  attention      mean over examples of the head's largest attention weight
  taylor         E_x |dL(x)/dxi_h| at gates xi = 1 (L: cross-entropy of the gold label), then each
                 layer's row divided by its l2 norm (Michel et al., 2019)
  accuracy-diff  accuracy with every head minus accuracy with head h alone pruned
                 (ties broken by the drop in mean gold-label probability)
  random         seeded uniform numbers (a baseline order)

A new method is one module that calls `register_method(Method(name, records, merge, ...))`.
"""

# isort: off
# registration order is the order in which commands list the methods
from . import attribution  # noqa: F401
from . import attention  # noqa: F401
from . import taylor  # noqa: F401
from . import accuracy_diff  # noqa: F401
from . import random_order  # noqa: F401

# isort: on
from .base import Method, get_method, method_names, register_method
from .gates import gates_pruning, mask_key, per_example_gates
from .importance import IMPORTANCE_FORMAT, Importance

METHODS = method_names()  # ("attattr", "attention", "taylor", "accuracy-diff", "random")

__all__ = [
    "IMPORTANCE_FORMAT",
    "METHODS",
    "Importance",
    "Method",
    "gates_pruning",
    "get_method",
    "mask_key",
    "method_names",
    "per_example_gates",
    "register_method",
]
