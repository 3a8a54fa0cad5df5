"""Baseline (b): Captum's IntegratedGradients, with a forward function that injects the scaled
attention of one layer (one `attribute` call per layer, internal_batch_size = m)."""

from __future__ import annotations

import torch

from paper_baseline import _STATE, NAME

CAPTUM_METHODS = {"riemann-right": "riemann_right", "gauss-legendre": "gausslegendre"}


def captum_attribution(model, inputs: dict, *, steps: int = 20, rule: str = "riemann-right") -> torch.Tensor:
    """Scores [layers, heads, n, n] of one example, F = the predicted class's probability."""
    from captum.attr import IntegratedGradients

    previous = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        _STATE.update(layer=None, calls=0, inject=None)
        with torch.no_grad():
            target = int(model(**inputs).logits[0].argmax())
        layers = []
        for layer in range(model.config.num_hidden_layers):
            _STATE.update(layer=layer, calls=0, inject=None)
            with torch.no_grad():
                model(**inputs)
            att = _STATE["record"]  # [1, heads, n, n]

            def forward(scaled: torch.Tensor, layer=layer) -> torch.Tensor:
                # scaled: [rows, heads, n, n], Captum's interpolated attention; one model row each
                rows = scaled.shape[0]
                batch = {k: v.repeat(rows, *([1] * (v.dim() - 1))) for k, v in inputs.items()}
                _STATE.update(layer=layer, calls=0, inject=scaled)
                return torch.softmax(model(**batch).logits, dim=-1)

            ig = IntegratedGradients(forward)
            scores = ig.attribute(
                att,
                baselines=torch.zeros_like(att),
                target=target,
                n_steps=steps,
                method=CAPTUM_METHODS[rule],
                internal_batch_size=steps,
            )
            layers.append(scores[0].detach())
        return torch.stack(layers)
    finally:
        _STATE.update(layer=None, inject=None, record=None)
        model.set_attn_implementation(previous or "eager")
