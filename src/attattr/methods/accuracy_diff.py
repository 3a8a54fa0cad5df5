"""accuracy-diff: accuracy with every head minus accuracy with head h alone pruned (ties broken by
the drop in mean gold-label probability; for a causal LM, in the mean metric)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..core.encoding import predict, predict_prompts
from ..core.hooks import model_num_heads, model_num_layers
from .base import Example, Method, Record, check_prompts, is_decoder, pairs_or_none, register_method, table
from .importance import Importance


def accuracy_diff_records(
    model, tokenizer, examples: Sequence[Example], settings: Mapping[str, Any]
) -> list[Record]:
    """Per example: correctness and gold probability with all heads, and with each head alone pruned."""
    num_layers, num_heads = model_num_layers(model), model_num_heads(model)
    count = num_layers * num_heads
    single = torch.ones(count + 1, count)
    single[torch.arange(1, count + 1), torch.arange(count)] = 0.0  # row 0: nothing pruned
    single = single.view(count + 1, num_layers, num_heads)
    repeated = [x for x in examples for _ in range(count + 1)]
    if is_decoder(model):
        check_prompts(examples)
        values, correct = predict_prompts(
            model,
            tokenizer,
            repeated,
            output=settings.get("metric"),
            batch_size=settings.get("eval_batch_size", 64),
            head_gates=single.repeat(len(examples), 1, 1),
        )
        values, correct = values.view(len(examples), count + 1), correct.view(len(examples), count + 1)
        return [
            {
                "id": x.id,
                "correct_full": bool(correct[b, 0]),
                "prob_full": float(values[b, 0]),  # the metric, for a causal LM
                "correct_pruned": correct[b, 1:].view(num_layers, num_heads).tolist(),
                "prob_pruned": table(values[b, 1:].view(num_layers, num_heads)),
            }
            for b, x in enumerate(examples)
        ]
    probs = predict(
        model,
        tokenizer,
        [x.text for x in repeated],
        pairs_or_none(repeated),
        batch_size=settings.get("eval_batch_size", 64),
        head_gates=single.repeat(len(examples), 1, 1),
    ).view(len(examples), count + 1, -1)
    out = []
    for b, x in enumerate(examples):
        gold_p = probs[b, :, x.label]
        correct = probs[b].argmax(dim=-1) == x.label
        out.append(
            {
                "id": x.id,
                "correct_full": bool(correct[0]),
                "prob_full": float(gold_p[0]),
                "correct_pruned": correct[1:].view(num_layers, num_heads).tolist(),
                "prob_pruned": table(gold_p[1:].view(num_layers, num_heads)),
            }
        )
    return out


def _merge(
    records: Sequence[Record], *, num_layers: int, num_heads: int, settings: dict[str, Any]
) -> Importance:
    full_acc = float(np.mean([r["correct_full"] for r in records]))
    full_prob = float(np.mean([r["prob_full"] for r in records]))
    pruned_acc = torch.tensor([r["correct_pruned"] for r in records], dtype=torch.float64).mean(0)
    pruned_prob = torch.tensor([r["prob_pruned"] for r in records], dtype=torch.float64).mean(0)
    mean_name = "mean_metric" if settings.get("metric") else "mean_gold_probability"  # causal LMs: the metric
    info = {**settings, "accuracy": full_acc, mean_name: full_prob}
    ids = [r["id"] for r in records]
    return Importance(full_acc - pruned_acc, "accuracy-diff", ids, info, secondary=full_prob - pruned_prob)


register_method(
    Method(
        "accuracy-diff",
        accuracy_diff_records,
        _merge,
        needs_labels=True,
        summary="accuracy drop when the head alone is pruned",
    )
)
