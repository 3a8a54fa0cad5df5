"""Head importance, head pruning and cross-model correlation (docs/method.md §2; the paper's Figs. 2, 3, 4).

Pruning a head means multiplying its attention probabilities by 0 inside our attention function
(`AttentionHook.head_gates`), so its context vector is 0; nothing is re-trained. Gates are
`[layers, heads]` (the same for every example) or `[examples, layers, heads]` (one set per example).

  importance.py     dataset importance by a registered method (`attattr.methods`), resumable
  effectiveness.py  per-example orderings: prune each example's own least/most important heads
  pruning.py        pruning curves from dataset importance, and the whole Fig. 3 experiment
  correlation.py    correlation of importances across models
"""

from ...core.errors import InputError, ResultFileError
from ...methods import IMPORTANCE_FORMAT, METHODS, Importance, gates_pruning, per_example_gates
from .correlation import correlate
from .effectiveness import CURVES, effectiveness, effectiveness_summary, merge_effectiveness, prune_counts
from .importance import check_importance_options, head_importance, importance_job, select_examples
from .pruning import FRACTIONS, check_pruning_options, prune_experiment, pruning_curves

__all__ = [
    "CURVES",
    "FRACTIONS",
    "IMPORTANCE_FORMAT",
    "METHODS",
    "Importance",
    "InputError",
    "ResultFileError",
    "check_importance_options",
    "check_pruning_options",
    "correlate",
    "effectiveness",
    "effectiveness_summary",
    "gates_pruning",
    "head_importance",
    "importance_job",
    "merge_effectiveness",
    "per_example_gates",
    "prune_counts",
    "prune_experiment",
    "pruning_curves",
    "select_examples",
]
