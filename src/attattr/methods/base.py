"""The registry of head-importance methods, and what their per-batch computations share.

A method is registered by name with two functions:
  records(model, tokenizer, examples, settings) -> one record per example (a dict with "id" and the
      example's own `[layers, heads]` table or whatever the method needs), computed on one batch;
  merge(records, num_layers=, num_heads=, settings=) -> `Importance` over the dataset.
A method without `records` (random) needs no examples. The dataset runner calls `records` once per
shard and appends what it returns to the run file, so a method's records must be plain JSON values.

Causal LMs (docs/decoders.md) run over prompts with their own targets and foils, scored by a metric
(`settings["metric"]`: "logit-diff", "prob-diff", "logprob"; default by the prompts' targets) in place
of the gold label's probability: attattr attributes the metric, taylor differentiates it, accuracy
means the metric above 0 (or, for logprob, the first target token predicted).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..core.encoding import encode_batch, model_max_length
from ..core.errors import InputError

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

    from .importance import Importance

Record = dict[str, Any]


class Example(Protocol):
    """What a method reads of an example (`attattr.analyses.runs.RunExample` has it)."""

    id: str
    text: str
    text_pair: str | None
    label: int | None


RecordsFn = Callable[
    ["PreTrainedModel", "PreTrainedTokenizerBase", Sequence[Example], Mapping[str, Any]], list[Record]
]
MergeFn = Callable[..., "Importance"]


@dataclass(frozen=True)
class Method:
    """A head-importance method. `needs_labels`: every example needs its gold label;
    `integration`: the method computes attributions (the settings steps, rule and dtype apply)."""

    name: str
    records: RecordsFn | None
    merge: MergeFn
    needs_labels: bool = True
    integration: bool = False
    summary: str = ""

    @property
    def needs_examples(self) -> bool:
        return self.records is not None


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if _METHODS.get(method.name, method) is not method:
        raise ValueError(f"head-importance method {method.name!r} is registered twice")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise InputError(f"unknown importance method {name!r}; choose one of: {', '.join(_METHODS)}")
    return _METHODS[name]


def method_names() -> tuple[str, ...]:
    """Registered names, in registration order."""
    return tuple(_METHODS)


def encode_examples(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]
) -> BatchEncoding:
    """The batch of examples, padded, on the model's device (pairs when any example has one)."""
    device = next(model.parameters()).device
    pairs = [x.text_pair for x in examples]
    enc, _ = encode_batch(
        tokenizer,
        [x.text for x in examples],
        pairs if any(p is not None for p in pairs) else None,
        max_length=model_max_length(model, tokenizer),
        device=device,
    )
    return enc


def is_decoder(model: PreTrainedModel) -> bool:
    """A causal LM (its examples are prompts with targets, scored by a metric)."""
    from ..core.objectives import is_causal_lm

    return is_causal_lm(model)


def prompt_metric(examples: Sequence[Example], metric: str | None) -> str:
    """The metric of a causal LM's run: `metric`, or the default for the first prompt's target and
    foil (logit-diff with a foil, prob-diff with alternatives, logprob otherwise)."""
    from ..core.objectives import TOKEN_OUTPUTS, default_output

    if metric is not None:
        if metric not in TOKEN_OUTPUTS:
            raise InputError(f"unknown metric {metric!r}; choose one of: {', '.join(TOKEN_OUTPUTS)}")
        return metric
    first = examples[0] if examples else None
    if first is None or getattr(first, "target", None) is None:
        return "logprob"
    return default_output(first.target, getattr(first, "foil", None))


def check_prompts(examples: Sequence[Example]) -> None:
    """Every prompt of a causal LM's run has its target (InputError naming the first without)."""
    missing = [x.id for x in examples if getattr(x, "target", None) is None]
    if missing:
        raise InputError(
            f"a causal language model's analysis needs each prompt's target; missing for {', '.join(missing[:3])} "
            "(use a prompt set such as ioi, or a prompt file with a target column)"
        )


def encode_prompt_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    metric: str | None,
):
    """(objective, encoding) of a batch of prompts: each prompt's own target (objective target
    "gold"), on the model's device; the objective reads the batch it encoded."""
    from ..core.objectives import make_objective

    device = next(model.parameters()).device
    objective = make_objective(metric, "gold", model=model)
    objective.check(model)
    items = objective.expand(examples, tokenizer)
    enc, _ = objective.encode(
        tokenizer, items, max_length=model_max_length(model, tokenizer), truncate=False, device=device
    )
    return objective, enc


def pairs_or_none(examples: Sequence[Example]) -> list[str | None] | None:
    pairs = [x.text_pair for x in examples]
    return pairs if any(p is not None for p in pairs) else None


def table(values: torch.Tensor) -> list[list[float]]:
    """A `[layers, heads]` tensor as nested float lists (float64: what the run file keeps)."""
    return values.double().tolist()


def per_example_tables(records: Sequence[Record], key: str) -> torch.Tensor:
    """`[examples, layers, heads]` float64 from the records' `key` tables."""
    return torch.tensor([r[key] for r in records], dtype=torch.float64)


def mean_importance(records: Sequence[Record], key: str, method: str, settings: dict[str, Any]) -> Importance:
    """The mean over examples of the records' `key` tables, with the per-example tables kept."""
    from .importance import Importance

    per_example = per_example_tables(records, key)  # [examples, layers, heads]
    ids = [r["id"] for r in records]
    return Importance(per_example.mean(dim=0), method, ids, settings, per_example=per_example)
