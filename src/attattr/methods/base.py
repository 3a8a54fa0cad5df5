"""The registry of head-importance methods, and what their per-batch computations share.

A method is registered by name with two functions:
  records(model, tokenizer, examples, settings) -> one record per example (a dict with "id" and the
      example's own `[layers, heads]` table or whatever the method needs), computed on one batch;
  merge(records, num_layers=, num_heads=, settings=) -> `Importance` over the dataset.
A method without `records` (random) needs no examples. The dataset runner calls `records` once per
shard and appends what it returns to the run file, so a method's records must be plain JSON values.
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
