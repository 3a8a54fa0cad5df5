"""attention: the mean over examples of each head's largest attention weight (real tokens only; for a
causal LM, query positions after the first, whose only key is itself)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..core.encoding import model_inputs
from ..core.hooks import AttentionHook
from .base import (
    Example,
    Method,
    Record,
    encode_examples,
    encode_prompt_examples,
    is_decoder,
    mean_importance,
    register_method,
    table,
)
from .importance import Importance


@torch.no_grad()
def attention_records(
    model, tokenizer, examples: Sequence[Example], settings: Mapping[str, Any]
) -> list[Record]:
    """Per example: each head's largest attention weight over real (non-padding) tokens."""
    decoder = is_decoder(model)
    if decoder:
        _, enc = encode_prompt_examples(model, tokenizer, examples, settings.get("metric"))
    else:
        enc = encode_examples(model, tokenizer, examples)
    mask = enc["attention_mask"].bool()  # [batch, n]
    with AttentionHook(model, record=True) as hook:
        model(**model_inputs(enc, model))
        layers = [hook.attentions[i] for i in sorted(hook.attentions)]
    att = torch.stack(layers, dim=1).float()  # [batch, layers, heads, query, key]
    queries = mask
    if decoder:  # each input's first real query attends only to itself (weight 1): left out
        first = mask.long().argmax(dim=1)  # [batch]
        queries = mask.clone()
        queries[torch.arange(mask.shape[0]), first] = mask.sum(dim=1) <= 1  # kept for 1-token prompts
    valid = (queries[:, :, None] & mask[:, None, :])[:, None, None]  # [batch, 1, 1, query, key]
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
