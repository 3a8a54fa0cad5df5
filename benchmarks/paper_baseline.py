"""Baseline (a): the paper's algorithm the way its authors ran it, written plainly.

For each target layer l: one forward pass to read A^l, then one batch holding the m scaled copies
alpha_k * A^l run through the *whole* model (the layers below l included, once per copy), fp32,
and the gradient of the summed target-class outputs with respect to the scaled copies.
Independent of attattr's hook and engine on purpose: it is what the engine is compared against.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

NAME = "paper-baseline"
_STATE: dict = {"layer": None, "calls": 0, "record": None, "inject": None, "leaf": None}


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query/key/value: [batch, heads, n, head_dim]; eager attention, with one layer replaced on request
    if key.shape[1] != query.shape[1]:  # grouped-query attention: each key/value head serves a group
        group = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling or query.size(-1) ** -0.5)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1)
    layer = _STATE["calls"]
    _STATE["calls"] += 1
    if layer == _STATE["layer"]:
        if _STATE["inject"] is None:
            _STATE["record"] = probs.detach()
        else:
            probs = _STATE["inject"]  # [m, heads, n, n] = alpha_k * A^l, a leaf
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


AttentionInterface.register(NAME, _attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)


def right_riemann(m: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(1, m + 1) / m, np.full(m, 1.0 / m)


def paper_attribution(
    model,
    inputs: dict,
    *,
    target: int | None = None,
    alphas=None,
    weights=None,
    steps: int = 20,
    objective=None,
) -> torch.Tensor:
    """Scores [layers, heads, n, n] of one example (`inputs`: tokenizer output, batch of 1)
    for F = the probability of class `target` (default: the predicted class), or for
    F = `objective(logits)` (logits of the m copies -> [m]; e.g. a decoder's logit difference at the
    last position). Right Riemann sum with `steps` unless alphas/weights are given."""
    if alphas is None:
        alphas, weights = right_riemann(steps)
    m = len(alphas)
    previous = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        _STATE.update(layer=None, calls=0, inject=None)
        if target is None and objective is None:
            with torch.no_grad():
                target = int(model(**inputs).logits[0].argmax())
        batch = {k: v.repeat(m, *([1] * (v.dim() - 1))) for k, v in inputs.items()}
        alpha = torch.tensor(alphas, dtype=torch.float32).view(m, 1, 1, 1)
        weight = torch.tensor(weights, dtype=torch.float32).view(m, 1, 1, 1)
        layers = []
        for layer in range(model.config.num_hidden_layers):
            _STATE.update(layer=layer, calls=0, inject=None)
            with torch.no_grad():  # the authors read A^l with one forward pass per layer
                model(**inputs)
            att = _STATE["record"]  # [1, heads, n, n]
            leaf = (alpha * att).requires_grad_(True)  # [m, heads, n, n]
            _STATE.update(calls=0, inject=leaf)
            logits = model(**batch).logits
            values = objective(logits) if objective else torch.softmax(logits, dim=-1)[:, target]  # [m]
            (grad,) = torch.autograd.grad(values.sum(), leaf)
            layers.append(att[0] * (grad * weight).sum(0))
        return torch.stack(layers)
    finally:
        _STATE.update(layer=None, inject=None, record=None)
        model.set_attn_implementation(previous or "eager")
