"""taylor (Michel et al., 2019): E_x |dL(x)/dxi_h| at gates xi = 1, L the cross-entropy of the gold
label, then each layer's row divided by its l2 norm. For a causal LM, L is the prompts' metric
(logit difference, ...): the same F that attattr attributes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..core.encoding import model_inputs
from ..core.hooks import AttentionHook, model_num_heads, model_num_layers
from .base import (
    Example,
    Method,
    Record,
    check_prompts,
    encode_examples,
    encode_prompt_examples,
    is_decoder,
    per_example_tables,
    register_method,
    table,
)
from .importance import Importance


def taylor_records(
    model, tokenizer, examples: Sequence[Example], settings: Mapping[str, Any]
) -> list[Record]:
    """Per example: |dL/dxi_h| at xi = 1, `[layers, heads]`.

    Each example has its own gates `[examples, layers, heads]`; the summed loss's gradient w.r.t. an
    example's gates is that example's own gradient, so one pass serves the whole batch."""
    num_layers, num_heads = model_num_layers(model), model_num_heads(model)
    param = next(model.parameters())
    gates = torch.ones(len(examples), num_layers, num_heads, device=param.device, dtype=param.dtype)
    gates.requires_grad_(True)
    if is_decoder(model):
        check_prompts(examples)
        objective, enc = encode_prompt_examples(model, tokenizer, examples, settings.get("metric"))
        with torch.enable_grad(), AttentionHook(model, head_gates=gates) as hook:
            outputs = objective.readout(model)(model, model_inputs(enc, model), hook)
            values = objective(outputs, objective.resolve(outputs, [None] * len(examples)))
            (grad,) = torch.autograd.grad(values.sum(), gates)
        return [{"id": x.id, "taylor": table(grad[b].abs())} for b, x in enumerate(examples)]
    enc = encode_examples(model, tokenizer, examples)
    gold = torch.tensor([x.label for x in examples], device=gates.device)
    with torch.enable_grad(), AttentionHook(model, head_gates=gates):
        logits = model(**model_inputs(enc, model)).logits.float()
        loss = torch.nn.functional.cross_entropy(logits, gold, reduction="sum")
        (grad,) = torch.autograd.grad(loss, gates)
    return [{"id": x.id, "taylor": table(grad[b].abs())} for b, x in enumerate(examples)]


def _merge(
    records: Sequence[Record], *, num_layers: int, num_heads: int, settings: dict[str, Any]
) -> Importance:
    per_example = per_example_tables(records, "taylor")
    scores = per_example.mean(dim=0)
    norms = scores.norm(p=2, dim=1, keepdim=True)
    scores = scores / norms.clamp_min(1e-20)  # layer-wise l2 normalisation (Michel et al.)
    ids = [r["id"] for r in records]
    return Importance(scores, "taylor", ids, settings, per_example=per_example)


register_method(
    Method(
        "taylor",
        taylor_records,
        _merge,
        needs_labels=True,
        summary="E_x |dL/dxi_h| at xi = 1, each layer normalised by its l2 norm",
    )
)
