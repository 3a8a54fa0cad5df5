"""attention: the mean over examples of each head's largest attention weight (real tokens only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..core.encoding import model_inputs
from ..core.hooks import AttentionHook
from .base import Example, Method, Record, encode_examples, mean_importance, register_method, table
from .importance import Importance


@torch.no_grad()
def attention_records(
    model, tokenizer, examples: Sequence[Example], settings: Mapping[str, Any]
) -> list[Record]:
    """Per example: each head's largest attention weight over real (non-padding) tokens."""
    enc = encode_examples(model, tokenizer, examples)
    mask = enc["attention_mask"].bool()  # [batch, n]
    with AttentionHook(model, record=True) as hook:
        model(**model_inputs(enc, model))
        layers = [hook.attentions[i] for i in sorted(hook.attentions)]
    att = torch.stack(layers, dim=1).float()  # [batch, layers, heads, query, key]
    valid = (mask[:, :, None] & mask[:, None, :])[:, None, None]  # [batch, 1, 1, query, key]
    best = att.masked_fill(~valid, float("-inf")).flatten(3).amax(dim=3)  # [batch, layers, heads]
    return [{"id": x.id, "attention": table(best[b])} for b, x in enumerate(examples)]


def _merge(
    records: Sequence[Record], *, num_layers: int, num_heads: int, settings: dict[str, Any]
) -> Importance:
    return mean_importance(records, "attention", "attention", settings)


register_method(
    Method(
        "attention",
        attention_records,
        _merge,
        needs_labels=False,
        summary="mean over examples of the head's largest attention weight",
    )
)
