"""The attention function and its edits: strict arguments, masks (causal, sliding window), the
edits' context, and the hook against eager attention on decoder architectures."""

from __future__ import annotations

import re

import pytest
import torch
import transformers as tf
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import attattr
from attattr.core.encoding import model_inputs, predict
from attattr.core.errors import UnsupportedModelError
from attattr.core.hooks import (
    ATTENTION_NAME,
    AttentionHook,
    ConnectionGate,
    HeadGate,
    Record,
    Scale,
    attention_probs,
)
from attattr.core.objectives import OwnHeadReadout

from ..tiny import tiny_model, tiny_tokenizer

TEXTS = ["the cat sat on a mat with a dog", "a dog"]


class _Module(torch.nn.Module):
    pass


def _call(**kwargs):
    """A fake attention call, as a model's attention module makes it, through the registered name."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    mask = kwargs.pop("attention_mask", None)
    return ALL_ATTENTION_FUNCTIONS[ATTENTION_NAME](
        _Module(), q, k, v, mask, scaling=0.3, dropout=0.0, **kwargs
    )


def _causal_mask(n: int, window: int | None = None) -> torch.Tensor:
    """[1, 1, n, n] additive mask, as transformers' eager mask builds it."""
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = j <= i if window is None else (j <= i) & (i - j < window)
    return torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"position_bias": torch.zeros(1, 4, 5, 5)}, "position_bias=<tensor [1, 4, 5, 5]>"),
        ({"window_size_left": 3}, "window_size_left=3"),
        ({"cu_seq_lens_q": torch.tensor([0, 5])}, "cu_seq_lens_q"),
    ],
)
def test_an_argument_we_do_not_implement_is_refused_by_name(kwargs, name):
    with pytest.raises(UnsupportedModelError, match=re.escape(f"unsupported attention argument {name}")):
        _call(**kwargs)


def test_harmless_arguments_are_accepted_and_change_nothing():
    out, probs = _call()
    same, same_probs = _call(
        position_ids=torch.arange(5)[None],
        use_cache=True,
        output_attentions=True,
        encoder_hidden_states=None,
        softcap=None,  # Gemma-2 without soft-capping
        s_aux=None,
        sliding_window=None,
        is_causal=False,
    )
    assert torch.equal(out, same) and torch.equal(probs, same_probs)
    assert probs.shape == (1, 4, 5, 5) and out.shape == (1, 5, 4, 8)


def test_grouped_query_heads_share_their_key_value_head():
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8)
    probs = attention_probs(q, k, None, 0.3)
    for head in range(4):
        expected = torch.softmax(q[0, head] @ k[0, head // 2].T * 0.3, dim=-1)
        torch.testing.assert_close(probs[0, head], expected)


def test_is_causal_without_a_mask_is_applied():
    _, by_flag = _call(is_causal=True)
    _, by_mask = _call(attention_mask=_causal_mask(5))
    torch.testing.assert_close(by_flag, by_mask, atol=0, rtol=0)
    assert torch.equal(by_flag[0, 0].triu(1), torch.zeros(5, 5))


def test_sliding_window_must_be_applied_by_the_mask():
    _, probs = _call(attention_mask=_causal_mask(5, window=2), sliding_window=2)
    assert torch.equal(probs[0, :, 4, :3], torch.zeros(4, 3))  # token 4 sees tokens 3 and 4 only
    with pytest.raises(UnsupportedModelError, match="sliding_window=2 is not applied by the attention mask"):
        _call(attention_mask=_causal_mask(5), sliding_window=2)
    with pytest.raises(UnsupportedModelError, match="sliding_window=2 without an attention mask"):
        _call(sliding_window=2)
    _call(attention_mask=_causal_mask(5), sliding_window=8)  # wider than the input: nothing to apply


def _tiny(arch: str):
    tok = tiny_tokenizer()
    common = dict(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.2,
    )
    gqa = dict(common, num_key_value_heads=2)
    builders = {
        "llama": lambda: tf.LlamaForSequenceClassification(tf.LlamaConfig(**gqa)),
        "qwen2": lambda: tf.Qwen2ForSequenceClassification(tf.Qwen2Config(**gqa)),
        "qwen3": lambda: tf.Qwen3ForSequenceClassification(tf.Qwen3Config(**gqa, head_dim=8)),
        "mistral": lambda: tf.MistralForSequenceClassification(tf.MistralConfig(**gqa, sliding_window=3)),
        "mistral-no-window": lambda: tf.MistralForSequenceClassification(
            tf.MistralConfig(**gqa, sliding_window=None)
        ),
        "gpt2": lambda: tf.GPT2ForSequenceClassification(
            tf.GPT2Config(
                vocab_size=tok.vocab_size,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=64,
                num_labels=2,
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.cls_token_id,
                eos_token_id=tok.sep_token_id,
                initializer_range=0.2,
            )
        ),
        "gemma": lambda: tf.GemmaForSequenceClassification(tf.GemmaConfig(**gqa, head_dim=8)),
        "gemma2": lambda: tf.Gemma2ForSequenceClassification(
            tf.Gemma2Config(**gqa, head_dim=8, sliding_window=3)
        ),
        "gemma2-no-softcap": lambda: tf.Gemma2ForSequenceClassification(
            tf.Gemma2Config(**gqa, head_dim=8, sliding_window=3, attn_logit_softcapping=None)
        ),
        "gemma3": lambda: tf.Gemma3TextForSequenceClassification(
            tf.Gemma3TextConfig(**gqa, head_dim=8, sliding_window=3)
        ),
        "phi3": lambda: tf.Phi3ForSequenceClassification(tf.Phi3Config(**gqa)),
    }
    torch.manual_seed(0)
    model = builders[arch]()
    model.set_attn_implementation("eager")
    return model.eval(), tok


def _alone(model, tok, text):
    with torch.no_grad():
        return torch.softmax(model(**model_inputs(tok(text, return_tensors="pt"), model)).logits[0], -1)


@pytest.mark.parametrize(
    "arch", ["llama", "qwen2", "qwen3", "mistral", "gpt2", "gemma", "gemma2-no-softcap", "gemma3", "phi3"]
)
def test_decoder_architectures_match_eager_attention(arch):
    """Every argument these models pass is either implemented or harmless: batched predictions
    through our attention equal eager attention on each input alone, and attribution runs."""
    model, tok = _tiny(arch)
    hooked = predict(model, tok, TEXTS)
    for i, text in enumerate(TEXTS):
        torch.testing.assert_close(hooked[i], _alone(model, tok, text), atol=1e-6, rtol=0)
    attr = attattr.attribute(model, tok, TEXTS[0], steps=2)
    assert attr.scores.shape == (2, 4, len(attr.tokens), len(attr.tokens))


def test_sliding_window_is_honoured():
    """Mistral with a window of 3 over 11 tokens: equal to eager, and different from no window."""
    windowed, tok = _tiny("mistral")
    full, _ = _tiny("mistral-no-window")  # the same weights (same seed)
    hooked = predict(windowed, tok, TEXTS[:1])[0]
    torch.testing.assert_close(hooked, _alone(windowed, tok, TEXTS[0]), atol=1e-6, rtol=0)
    assert (hooked - _alone(full, tok, TEXTS[0])).abs().max() > 1e-4


def test_soft_capping_and_sinks_follow_the_eager_formulas():
    """Gemma-2's softcap and gpt-oss's sinks, against the formulas of transformers' eager code."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 5, 8) * 4, torch.randn(1, 4, 5, 8)
    mask = _causal_mask(5)
    raw = q @ k.transpose(2, 3) * 0.3
    capped = attention_probs(q, k, mask, 0.3, softcap=2.0)
    torch.testing.assert_close(capped, torch.softmax(torch.tanh(raw / 2.0) * 2.0 + mask, -1))
    sinks = torch.tensor([0.0, 1.0, -2.0, 3.0])
    sunk = attention_probs(q, k, mask, 0.3, sinks=sinks)
    full = torch.cat([raw + mask, sinks.view(1, 4, 1, 1).expand(1, 4, 5, 1)], dim=-1).softmax(-1)
    torch.testing.assert_close(sunk, full[..., :-1])
    assert bool((sunk.sum(-1) < 1).all()) and torch.equal(sunk[0, 0].triu(1), torch.zeros(5, 5))


def test_gemma2_soft_capping_matches_eager():
    model, tok = _tiny("gemma2")
    assert model.config.attn_logit_softcapping == 50.0
    hooked = predict(model, tok, TEXTS)
    for i, text in enumerate(TEXTS):
        torch.testing.assert_close(hooked[i], _alone(model, tok, text), atol=1e-6, rtol=0)


def test_a_head_that_drops_forked_rows_is_refused():
    """GPT-2's own head pools by the input batch; read as if it classified row by row, the
    row count check refuses it instead of returning numbers for the wrong rows."""
    model, tok = _tiny("gpt2")
    inputs = model_inputs(tok(["the cat sat"], return_tensors="pt"), model)
    with AttentionHook(model) as hook, torch.no_grad():
        hook.row_selections[1] = torch.tensor([0, 0, 0])
        with pytest.raises(UnsupportedModelError, match="returned 1 rows for 3 rows"):
            OwnHeadReadout()(model, inputs, hook)


# ---- edits --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert():
    return tiny_model("bert", init=0.2), tiny_tokenizer()


def _inputs(model, tok, texts):
    return model_inputs(tok(texts, padding=True, return_tensors="pt"), model)


def test_edits_receive_layer_origins_and_module(bert):
    model, tok = bert
    seen = []

    def spy(probs, context):
        seen.append((context.layer, context.origins.tolist(), type(context.module).__name__, probs.shape[0]))
        return probs

    with AttentionHook(model, edits=[spy]) as hook, torch.no_grad():
        hook.row_selections[1] = torch.tensor([1, 0, 1])  # fork example 1 twice at layer 1
        model(**_inputs(model, tok, TEXTS))
        assert hook.row_origin.tolist() == [1, 0, 1]
    assert seen == [
        (0, [0, 1], "BertSelfAttention", 2),
        (1, [1, 0, 1], "BertSelfAttention", 3),
        (2, [1, 0, 1], "BertSelfAttention", 3),
    ]


def test_per_example_head_gates_follow_row_origins(bert):
    """Rows forked at layer 1 take their origin example's gates: the copy of example 1 is gated
    like example 1 alone."""
    model, tok = bert
    inputs = _inputs(model, tok, TEXTS)
    gates = torch.ones(2, 3, 4)
    gates[1, 2, :3] = 0.0  # example 1: three heads of layer 2 pruned
    with AttentionHook(model, head_gates=gates) as hook, torch.no_grad():
        plain = model(**inputs).logits
        hook.row_selections[1] = torch.tensor([1, 0])  # swap the rows at layer 1
        swapped = model(**inputs).logits
    torch.testing.assert_close(swapped, plain.flip(0), atol=1e-6, rtol=0)
    with AttentionHook(model, head_gates=gates[0]), torch.no_grad():
        ungated = model(**inputs).logits
    assert (ungated[1] - plain[1]).abs().max() > 1e-4


def test_edits_compose_in_order(bert):
    """Record after a head gate sees the gated probabilities; a connection gate after Record
    changes the output but not what was recorded."""
    model, tok = bert
    inputs = _inputs(model, tok, TEXTS[:1])
    gates = torch.ones(3, 4)
    gates[0, 1] = 0.0
    n = inputs["input_ids"].shape[1]
    connections = torch.ones(1, 4, n, n)
    connections[0, 2, 0, :] = 0.0
    record = Record()
    with (
        AttentionHook(model, edits=[HeadGate(gates), record, ConnectionGate({0: connections})]),
        torch.no_grad(),
    ):
        out = model(**inputs).logits
    assert torch.equal(record.attentions[0][0, 1], torch.zeros(n, n))
    assert torch.allclose(record.attentions[0][0, 2].sum(-1), torch.ones(n))
    with AttentionHook(model, head_gates=gates), torch.no_grad():
        without_connections = model(**inputs).logits
    assert (out - without_connections).abs().max() > 1e-5


def test_scale_makes_a_leaf_whose_gradient_is_the_integrand(bert):
    """The leaf's gradient equals a finite difference of F along one attention entry."""
    model, tok = bert
    inputs = _inputs(model, tok, TEXTS[:1])
    scale = Scale(layer=1, start=0, alphas=torch.tensor([0.5]))
    with AttentionHook(model, edits=[scale]) as hook:
        logit = model(**inputs).logits[0, 1]
        (grad,) = torch.autograd.grad(logit, hook.leaves[1])
    assert hook.leaves[1] is scale.leaf and scale.leaf.shape == grad.shape

    def f(delta: float) -> float:
        def bump(probs, context):
            if context.layer == 1:
                probs = probs.clone()
                probs[0, 3, 2, 1] += delta
            return probs

        with AttentionHook(model, edits=[scale, bump]), torch.no_grad():
            return float(model(**inputs).logits[0, 1].double())

    eps = 1e-2
    assert (f(eps) - f(-eps)) / (2 * eps) == pytest.approx(float(grad[0, 3, 2, 1]), rel=1e-2, abs=1e-5)


def test_record_rows_keeps_only_the_first_rows(bert):
    model, tok = bert
    record = Record(rows=1)
    with AttentionHook(model, edits=[record]) as hook, torch.no_grad():
        hook.row_selections[0] = torch.tensor([0, 1, 1])
        model(**_inputs(model, tok, TEXTS))
    assert [a.shape[0] for a in record.attentions.values()] == [1, 1, 1]
    assert model.config._attn_implementation == "eager"
