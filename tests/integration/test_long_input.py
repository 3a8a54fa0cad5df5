"""A 512-token input on a BERT-base-shaped model completes under a memory budget that forces
the integration steps to be split over several passes."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import attattr
from attattr.core.engine import activation_bytes, plan_passes

from ..tiny import tiny_tokenizer


@pytest.mark.integration
def test_512_tokens_bert_base_under_budget():
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(
        tf.BertConfig(num_labels=2, vocab_size=tiny_tokenizer().vocab_size)
    )
    model.eval()
    budget = 3 << 30
    text = " ".join(["the cat sat on a mat"] * 100)
    passes = plan_passes(range(12), 2, 12, 1, 512, model, budget, None)
    assert len(passes) > 1  # the budget really splits the work
    for units in passes:  # and every pass respects it by the engine's own estimate
        cost = sum((k1 - k0) * (12 - layer) for layer, k0, k1 in units) + 12
        assert cost * activation_bytes(model, 512, None) <= budget
    attr = attattr.attribute(
        model, tiny_tokenizer(), text, steps=2, rule="gauss-legendre", memory_budget=budget
    )
    assert attr.scores.shape == (12, 12, 512, 512) and attr.truncated
    assert torch.isfinite(attr.scores).all()
    assert attr.completeness_gaps().abs().max() < 0.05
