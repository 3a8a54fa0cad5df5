"""Inline-attention families through their adapters (core/adapters.py): DeBERTa-v2 (v2 and v3
settings) and MPNet.

The reference is deliberately plain and independent of the adapters: the family's own eager
forward runs, and `torch.nn.functional.softmax` (which the family calls once per layer) is patched
so that one layer's probabilities A become alpha * A as a leaf; one full forward per example,
layer and integration node, no prefix reuse."""

from __future__ import annotations

import contextlib
import json
from unittest import mock

import pytest
import torch
import transformers as tf

import attattr
from attattr.core import adapters
from attattr.core.encoding import model_inputs, predict
from attattr.core.errors import UnsupportedModelError
from attattr.core.hooks import AttentionHook, ConnectionGate, layer_modules
from attattr.core.quadrature import rule as quadrature_rule

from ..tiny import tiny_tokenizer

FAMILIES = ("deberta-v2", "deberta-v3", "mpnet")
LAYERS, HEADS = 3, 4


def tiny_inline(family: str, *, seed: int = 0, init: float = 0.02, **options) -> tf.PreTrainedModel:
    """A seeded random sequence classifier over the tiny tokenizer's vocabulary, hidden 32, no
    dropout, eval mode.
    deberta-v2: relative attention with c2p and p2c, separate position projections, no buckets.
    deberta-v3: shared position keys, 4 log buckets (8 relative-position embeddings, layer-normed),
                no absolute positions.
    mpnet:      relative-position bias (32 buckets)."""
    vocab = tiny_tokenizer().vocab_size
    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=init,
    )
    torch.manual_seed(seed)
    if family == "mpnet":
        config = tf.MPNetConfig(**common, max_position_embeddings=66, **options)
        model = tf.MPNetForSequenceClassification(config)
    else:
        deberta = dict(
            max_position_embeddings=64,
            relative_attention=True,
            pos_att_type=["c2p", "p2c"],
            type_vocab_size=2,
            pad_token_id=0,
            pooler_dropout=0.0,
        )
        if family == "deberta-v3":
            deberta.update(
                position_buckets=4,
                max_relative_positions=16,
                share_att_key=True,
                norm_rel_ebd="layer_norm",
                position_biased_input=False,
            )
        deberta.update(options)
        model = tf.DebertaV2ForSequenceClassification(tf.DebertaV2Config(**common, **deberta))
    return model.eval()


# ---- the plain reference ----------------------------------------------------------------------
class SoftmaxPatch:
    """Stands in for torch.nn.functional.softmax during a forward: counts the calls (one per
    layer) and lets `edit(layer, probs)` change what each returns."""

    def __init__(self):
        self.softmax = torch.nn.functional.softmax
        self.calls = 0
        self.edit = None

    def __call__(self, x, dim=None, **kwargs):
        probs = self.softmax(x, dim=dim, **kwargs)
        layer, self.calls = self.calls, self.calls + 1
        return probs if self.edit is None else self.edit(layer, probs)

    @contextlib.contextmanager
    def on(self, edit=None):
        self.calls, self.edit = 0, edit
        with mock.patch.object(torch.nn.functional, "softmax", self):
            yield self
        assert self.calls % LAYERS == 0  # the family's own softmax, once per layer: nothing else


def reference_attribution(model, tok, text, pair, rule, steps):
    """[layers, heads, n, n] scores of the predicted class's probability and the per-layer F(0*A),
    for one example alone: one full forward per (layer, node)."""
    inputs = model_inputs(tok(text, pair, return_tensors="pt"), model)
    patch = SoftmaxPatch()
    with torch.no_grad(), patch.on():
        logits = model(**inputs).logits[0]
    target = int(logits.argmax())
    alphas, weights = quadrature_rule(rule, steps)
    scores, baselines = [], []
    for layer in range(LAYERS):
        total = 0
        for alpha, weight in zip(alphas, weights, strict=True):
            scale = ScaleAt(layer, float(alpha))
            with patch.on(scale):
                f = torch.softmax(model(**inputs).logits[0], -1)[target]
            (grad,) = torch.autograd.grad(f, scale.leaf)
            total = total + weight * grad[0]
        scores.append(scale.A[0] * total)
        with torch.no_grad(), patch.on(ScaleAt(layer, 0.0)):
            baselines.append(float(torch.softmax(model(**inputs).logits[0], -1)[target]))
    return torch.stack(scores), target, baselines


class ScaleAt:
    """A softmax edit: at `layer`, keep A and return alpha * A as a leaf."""

    def __init__(self, layer: int, alpha: float):
        self.layer, self.alpha = layer, alpha
        self.A = self.leaf = None

    def __call__(self, layer, probs):
        if layer != self.layer:
            return probs
        self.A = probs.detach()
        self.leaf = (self.alpha * self.A).requires_grad_(True)
        return self.leaf


# ---- nothing injected: the adapted model is the model ---------------------------------------
BATCH = [
    ("the cat sat on a mat with a dog", None),
    ("a dog", None),
    ("dog", "the mat and the cat"),
    ("not a good film", "it was awful"),
    ("this movie was very good", None),
    ("bad", None),
    ("so dull and too long", "but fun"),
    ("the plot was great", None),
]


def _batch(tok, model, examples=BATCH):
    texts, pairs = [t for t, _ in examples], [p or "" for _, p in examples]
    enc = tok(texts, pairs if any(p for _, p in examples) else None, padding=True, return_tensors="pt")
    return model_inputs(enc, model)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_the_eager_model_with_nothing_injected(family):
    """A padded batch of singles and pairs; then the same with the rows reversed and doubled at
    layer 1 (rows re-selected by origin). The deberta-v3 batch has as many rows (8) as the relative-position
    table: that table must reach every layer untouched, never re-selected like a batch tensor."""
    model, tok = tiny_inline(family, init=0.2), tiny_tokenizer()
    inputs = _batch(tok, model)
    with torch.no_grad():
        eager = model(**inputs).logits
        with AttentionHook(model) as hook:
            plain = model(**inputs).logits
            hook.row_selections[1] = torch.arange(len(BATCH)).flip(0).repeat(2)
            forked = model(**inputs).logits
        again = model(**inputs).logits
    torch.testing.assert_close(plain, eager, atol=1e-5, rtol=0)
    torch.testing.assert_close(forked, eager.flip(0).repeat(2, 1), atol=1e-5, rtol=0)
    assert torch.equal(again, eager)
    # the modules have their own forward back
    assert not [m for m in model.modules() if "forward" in m.__dict__]


@pytest.mark.parametrize("family", FAMILIES)
def test_layers_and_records_go_through_the_adapter(family):
    model, tok = tiny_inline(family), tiny_tokenizer()
    layers = layer_modules(model)
    assert len(layers) == LAYERS and all(type(x).__name__.endswith("Layer") for x in layers)
    inputs = _batch(tok, model, BATCH[:2])
    with torch.no_grad():
        own = model(**inputs, output_attentions=True).attentions
        with AttentionHook(model, record=True) as hook:
            model(**inputs)
    assert sorted(hook.attentions) == list(range(LAYERS))
    for layer in range(LAYERS):
        torch.testing.assert_close(hook.attentions[layer], own[layer], atol=1e-6, rtol=0)


# ---- exactness of attributions --------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_plain_reference_single_and_pair(family):
    model, tok = tiny_inline(family), tiny_tokenizer()
    for text, pair in [("the cat sat on a mat", None), ("a dog ran", "the cat sat down again")]:
        ref, target, baselines = reference_attribution(model, tok, text, pair, "riemann-right", 3)
        got = attattr.attribute(model, tok, text, pair, steps=3)
        assert got.target == target
        assert got.scores.shape == ref.shape == (LAYERS, HEADS, len(got.tokens), len(got.tokens))
        torch.testing.assert_close(got.scores, ref, atol=1e-5, rtol=0)
        assert got.baseline_values == pytest.approx(baselines, abs=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_matches_plain_reference(family):
    model, tok = tiny_inline(family, seed=1), tiny_tokenizer()
    examples = [("a b c", None), ("the cat sat on a mat with a dog", None), ("dog", "the mat and the cat")]
    got = list(attattr.attribute_many(model, tok, examples, steps=3, rule="gauss-legendre", batch_size=3))
    assert [g.text for g in got] == [e[0] for e in examples]
    for (text, pair), g in zip(examples, got, strict=True):
        ref, target, _ = reference_attribution(model, tok, text, pair, "gauss-legendre", 3)
        assert g.target == target
        torch.testing.assert_close(g.scores, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["deberta-v3", "mpnet"])
def test_gauss_legendre_32_nodes_closes_completeness(family):
    model, tok = tiny_inline(family, init=0.2), tiny_tokenizer()
    got = attattr.attribute(model, tok, "the cat sat on the mat", rule="gauss-legendre", steps=32)
    assert got.completeness_gaps().abs().max() < 1e-4
    coarse = attattr.attribute(model, tok, "the cat sat on the mat", rule="riemann-left", steps=2)
    assert coarse.completeness_gaps().abs().max() > 1e-4  # the check above is not vacuous


# ---- gates through the adapter ----------------------------------------------------------------
def test_head_gate_prunes_a_deberta_head_like_the_reference():
    model, tok = tiny_inline("deberta-v2", init=0.2), tiny_tokenizer()
    singles = [(t, p) for t, p in BATCH if p is None][:4]
    texts = [t for t, _ in singles]
    gates = torch.ones(LAYERS, HEADS)
    gates[1, 2] = 0.0
    got = predict(model, tok, texts, head_gates=gates)

    def prune(layer, probs):
        return probs * gates[layer][None, :, None, None]

    with torch.no_grad(), SoftmaxPatch().on(prune):
        ref = torch.softmax(model(**_batch(tok, model, singles)).logits, -1)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert (got - predict(model, tok, texts)).abs().max() > 1e-4  # the gate did something


def test_connection_gate_cuts_one_mpnet_connection_like_the_reference():
    model, tok = tiny_inline("mpnet", init=0.2), tiny_tokenizer()
    inputs = _batch(tok, model, BATCH[:1])
    n = inputs["input_ids"].shape[1]
    cut = torch.ones(1, HEADS, n, n)
    cut[0, 3, 0, 1:] = 0.0  # head 3 of layer 1: the first token receives only from itself
    with torch.no_grad():
        with AttentionHook(model, edits=[ConnectionGate({1: cut})]):
            got = model(**inputs).logits
        with SoftmaxPatch().on(lambda layer, probs: probs * cut if layer == 1 else probs):
            ref = model(**inputs).logits
        plain = model(**inputs).logits
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert (got - plain).abs().max() > 1e-5


# ---- what is refused ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"conv_kernel_size": 3}, r"unsupported DeBERTa-v2 option conv_kernel_size=3: "),
        ({"pos_att_type": ["c2p", "p2p"]}, r"unsupported DeBERTa-v2 option pos_att_type=.*not 'p2p'"),
    ],
)
def test_an_option_the_adapter_does_not_cover_is_refused_by_name(options, message):
    model = tiny_inline("deberta-v2", **options)
    with pytest.raises(UnsupportedModelError, match=message) as caught:
        attattr.attribute(model, tiny_tokenizer(), "the cat")
    assert "\n" not in str(caught.value)


def test_a_family_without_an_adapter_is_still_refused_with_the_reason():
    config = tf.DebertaConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    model = tf.DebertaForSequenceClassification(config).eval()
    with pytest.raises(UnsupportedModelError, match="'deberta'.*not through AttentionInterface"):
        attattr.attribute(model, tiny_tokenizer(), "the cat")


def test_attention_code_that_changed_under_the_adapter_is_refused(monkeypatch):
    """If the family's own attention no longer computes what the adapter does (a new transformers
    release), the probe comparison refuses the model instead of explaining it wrongly."""
    from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention

    own = MPNetSelfAttention.forward

    def changed(self, *args, **kwargs):
        out = own(self, *args, **kwargs)
        return (out[0] * 1.5, *out[1:])

    model = tiny_inline("mpnet", init=0.2)
    monkeypatch.setattr(MPNetSelfAttention, "forward", changed)
    with pytest.raises(UnsupportedModelError, match="MPNet variant .*differs from the model's own"):
        attattr.attribute(model, tiny_tokenizer(), "the cat")


def test_nested_hooks_restore_each_others_forward():
    model, tok = tiny_inline("deberta-v3"), tiny_tokenizer()
    inputs = _batch(tok, model, BATCH[:2])
    with AttentionHook(model, record=True) as outer:
        with AttentionHook(model, record=True) as inner, torch.no_grad():
            model(**inputs)
        assert len(inner.attentions) == LAYERS and not outer.attentions
        with torch.no_grad():
            model(**inputs)
        assert len(outer.attentions) == LAYERS
    assert not [m for m in model.modules() if "forward" in m.__dict__]
    assert adapters.adapter_for(model).model_type == "deberta-v2"


@pytest.mark.parametrize("family", ["deberta-v3", "mpnet"])
def test_explain_runs_on_a_saved_model_directory(family, tmp_path, run_cli):
    path = tmp_path / family
    model = tiny_inline(family)
    model.config.id2label, model.config.label2id = (
        {0: "negative", 1: "positive"},
        {"negative": 0, "positive": 1},
    )
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    code, out, err = run_cli("explain", "--model", path, "the cat sat on a mat", "--steps", "2", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["layers"] == list(range(LAYERS)) and summary["label_names"] == ["negative", "positive"]
