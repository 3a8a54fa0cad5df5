"""The engine against a deliberately plain reference: for each example alone, each layer and each
integration step, one full forward pass with that layer's attention replaced by alpha * A.

Encoders (the seven tiny architectures; ModernBERT with rotary positions, a local sliding-window layer
between global ones and mean pooling) and decoder classifiers (Llama and Qwen2 with grouped-query
attention, whose head pools the last non-padding token of each input)."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

import attattr
from attattr.core.encoding import model_inputs, predict
from attattr.core.quadrature import rule as quadrature_rule

from ..conftest import MODERNBERT_WINDOW
from ..tiny import ARCHITECTURES, tiny_model, tiny_tokenizer

_REF = {"layer": None, "alpha": 1.0, "calls": 0, "A": None, "leaf": None}


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    if key.shape[1] != query.shape[1]:  # grouped-query attention: each kv head serves a group of query heads
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling or query.size(-1) ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    layer = _REF["calls"]
    _REF["calls"] += 1
    if layer == _REF["layer"]:
        _REF["A"] = probs.detach()
        leaf = (_REF["alpha"] * probs.detach()).requires_grad_(True)
        _REF["leaf"] = leaf
        probs = leaf
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


AttentionInterface.register("plain-reference", _reference_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register("plain-reference", eager_mask)


def reference_attribution(model, tokenizer, text, pair, rule, steps, output="prob", target=None):
    """[layers, heads, n, n] scores and per-layer F(0*A), one example, one pass per (layer, step)."""
    enc = tokenizer(text, pair, return_tensors="pt")  # alone: no padding
    inputs = model_inputs(enc, model)
    model.set_attn_implementation("plain-reference")
    try:
        with torch.no_grad():
            _REF.update(layer=None, calls=0)
            logits = model(**inputs).logits[0]
        target = int(logits.argmax()) if target is None else target

        def f(lg):
            if output == "logit":
                return lg[target]
            if output == "logprob":
                return torch.log_softmax(lg, -1)[target]
            return torch.softmax(lg, -1)[target]

        alphas, weights = quadrature_rule(rule, steps)
        layers = []
        baselines = []
        for layer in range(
            model.config.num_hidden_layers
            if hasattr(model.config, "num_hidden_layers")
            else model.config.n_layers
        ):
            total = None
            for a, w in zip(alphas, weights, strict=True):
                _REF.update(layer=layer, alpha=float(a), calls=0)
                out = f(model(**inputs).logits[0])
                (grad,) = torch.autograd.grad(out, _REF["leaf"])
                total = w * grad if total is None else total + w * grad
            layers.append(_REF["A"][0] * total[0])
            _REF.update(layer=layer, alpha=0.0, calls=0)
            with torch.no_grad():
                baselines.append(float(f(model(**inputs).logits[0])))
        return torch.stack(layers), target, baselines, float(f(logits))
    finally:
        model.set_attn_implementation("eager")


def assert_matches(scores: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal to the reference to 1e-5, and to 1e-4 of its largest entry: at the default init the
    scores of a tiny model are ~1e-5, where an absolute tolerance alone would accept zeros."""
    torch.testing.assert_close(scores, ref, atol=1e-5, rtol=0)
    assert float((scores - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_matches_plain_reference_single_and_pair(arch):
    model, tok = tiny_model(arch), tiny_tokenizer()
    for text, pair in [("the cat sat on a mat", None), ("a dog ran", "the cat sat down again")]:
        ref, target, baselines, f_full = reference_attribution(model, tok, text, pair, "riemann-right", 5)
        got = attattr.attribute(model, tok, text, pair, steps=5)
        assert got.target == target
        assert got.scores.shape == ref.shape
        assert_matches(got.scores, ref)
        assert got.output_value == pytest.approx(f_full, abs=1e-6)
        assert got.baseline_values == pytest.approx(baselines, abs=1e-6)


@pytest.mark.parametrize("arch", ["bert", "distilbert", "albert", "xlm-roberta", "modernbert"])
def test_batched_examples_of_different_lengths_match(arch):
    model, tok = tiny_model(arch), tiny_tokenizer()
    examples = [("a b c", None), ("the cat sat on a mat with a dog", None), ("dog", "the mat and the cat")]
    got = list(attattr.attribute_many(model, tok, examples, steps=4, rule="gauss-legendre", batch_size=3))
    assert [g.text for g in got] == [e[0] for e in examples]  # input order kept
    for (text, pair), g in zip(examples, got, strict=True):
        ref, target, _, _ = reference_attribution(model, tok, text, pair, "gauss-legendre", 4)
        assert_matches(g.scores, ref)


def test_small_memory_budget_splits_passes_without_changing_numbers():
    model, tok = tiny_model("bert"), tiny_tokenizer()
    big = attattr.attribute(model, tok, "the cat sat on a mat", steps=6, memory_budget=1 << 34)
    small = attattr.attribute(model, tok, "the cat sat on a mat", steps=6, memory_budget=1)
    torch.testing.assert_close(big.scores, small.scores, atol=1e-6, rtol=0)


@pytest.mark.parametrize("output", ["logit", "logprob"])
def test_other_outputs_match_reference(output):
    model, tok = tiny_model("bert"), tiny_tokenizer()
    ref, _, _, _ = reference_attribution(model, tok, "the cat sat", None, "trapezoid", 3, output=output)
    got = attattr.attribute(model, tok, "the cat sat", output=output, rule="trapezoid", steps=3)
    torch.testing.assert_close(got.scores, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta", "modernbert"])
def test_gauss_legendre_32_nodes_closes_completeness(arch):
    model, tok = tiny_model(arch, init=0.2), tiny_tokenizer()
    got = attattr.attribute(model, tok, "the cat sat on the mat", rule="gauss-legendre", steps=32)
    assert got.completeness_gaps().abs().max() < 1e-4
    # a coarse rule leaves a visible gap: the check above is not vacuous
    coarse = attattr.attribute(model, tok, "the cat sat on the mat", rule="riemann-left", steps=2)
    assert coarse.completeness_gaps().abs().max() > 1e-4


# ---- ModernBERT: local and global layers, its two pooling heads ----------------------------------
def modernbert_variant(model, **changes):
    """The same weights under a changed config (window, pooling)."""
    config = copy.deepcopy(model.config)
    for name, value in changes.items():
        setattr(config, name, value)
    other = tf.ModernBertForSequenceClassification(config)
    other.load_state_dict(model.state_dict())
    other.set_attn_implementation("eager")
    return other.eval()


def test_modernbert_local_layer_sees_only_its_window():
    model, tok = tiny_model("modernbert", init=0.2), tiny_tokenizer()
    assert model.config.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    got = attattr.attribute(model, tok, "the cat sat on a mat with a dog", steps=3)
    n = len(got.tokens)
    distance = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs()  # [query, key]
    far = distance > MODERNBERT_WINDOW // 2
    assert n > MODERNBERT_WINDOW and bool(far.any())
    assert torch.equal(got.scores[1][:, far], torch.zeros_like(got.scores[1][:, far]))
    for layer in (0, 2):  # the global layers attend, and are attributed, across the whole input
        assert bool((got.scores[layer][:, far] != 0).all())


@pytest.mark.parametrize("changes", [{"classifier_pooling": "cls"}, {"local_attention": 128}])
def test_modernbert_cls_pooling_and_a_window_wider_than_the_input_match_reference(changes):
    """CLS pooling goes through the model's own head; a window wider than the input makes
    transformers build no mask at all for the local layer, so the window is never applied."""
    base = tiny_model("modernbert", init=0.2)
    model, tok = modernbert_variant(base, **changes), tiny_tokenizer()
    examples = [("the cat sat on a mat with a dog", None), ("a dog ran", "the cat sat down again")]
    for text, pair in examples:
        ref, target, baselines, f_full = reference_attribution(model, tok, text, pair, "riemann-right", 4)
        got = attattr.attribute(model, tok, text, pair, steps=4)
        assert got.target == target
        assert_matches(got.scores, ref)
        assert got.output_value == pytest.approx(f_full, abs=1e-6)
        assert got.baseline_values == pytest.approx(baselines, abs=1e-6)
    batch = list(attattr.attribute_many(model, tok, [*examples, ("dog", None)], steps=3, batch_size=3))
    for (text, pair), g in zip(examples, batch[:2], strict=True):
        ref, _, _, _ = reference_attribution(model, tok, text, pair, "riemann-right", 3)
        assert_matches(g.scores, ref)
    # the change made a difference: not the same numbers as the tiny model itself
    assert not torch.allclose(batch[0].scores, attattr.attribute(base, tok, examples[0][0], steps=3).scores)


def test_layer_subset_and_hook_restores_eager():
    model, tok = tiny_model("bert"), tiny_tokenizer()
    full = attattr.attribute(model, tok, "the cat sat", steps=3)
    part = attattr.attribute(model, tok, "the cat sat", steps=3, layers=[1])
    assert part.layers == [1]
    torch.testing.assert_close(part.scores[0], full.scores[1], atol=1e-6, rtol=0)
    assert model.config._attn_implementation == "eager"


# ---- decoder classifiers --------------------------------------------------------------------
DECODERS = {
    "llama": (tf.LlamaConfig, tf.LlamaForSequenceClassification),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForSequenceClassification),
}
DECODER_EXAMPLES = [
    ("a b c", None),
    ("the cat sat on a mat with a dog", None),
    ("dog", "the mat and the cat"),
    ("not a good film", None),
]


def tiny_decoder(arch: str, *, seed: int = 0, num_labels: int = 3):
    """A seeded random decoder classifier over the tiny tokenizer's vocabulary: 4 query heads
    sharing 2 key-value heads, the tokenizer's [PAD] as padding token, eager attention."""
    config_cls, model_cls = DECODERS[arch]
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    config = config_cls(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.2,
    )
    model = model_cls(config)
    model.set_attn_implementation("eager")
    return model.eval()


def padded_tokenizer(side: str):
    tok = copy.deepcopy(tiny_tokenizer())
    tok.padding_side = side
    return tok


@pytest.mark.parametrize("arch", sorted(DECODERS))
def test_decoder_classifier_matches_plain_reference_single_and_pair(arch):
    model, tok = tiny_decoder(arch), tiny_tokenizer()
    for text, pair in [("the cat sat on a mat", None), ("a dog ran", "the cat sat down again")]:
        ref, target, baselines, f_full = reference_attribution(model, tok, text, pair, "riemann-right", 4)
        got = attattr.attribute(model, tok, text, pair, steps=4)
        assert got.target == target
        assert got.scores.shape == ref.shape == (3, 4, len(got.tokens), len(got.tokens))
        torch.testing.assert_close(got.scores, ref, atol=1e-5, rtol=0)
        assert got.output_value == pytest.approx(f_full, abs=1e-6)
        assert got.baseline_values == pytest.approx(baselines, abs=1e-6)
        # causal: a token never attends to a later one, so those scores are exactly 0
        assert torch.equal(got.scores.triu(1), torch.zeros_like(got.scores))


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", sorted(DECODERS))
def test_decoder_batches_with_padding_match_each_example_alone(arch, side):
    """A batch pads its shorter inputs; the forked rows must still be classified from their own
    example's last real token (transformers' own pooling would drop them)."""
    model, tok = tiny_decoder(arch), padded_tokenizer(side)
    got = list(
        attattr.attribute_many(model, tok, DECODER_EXAMPLES, steps=3, rule="gauss-legendre", batch_size=4)
    )
    assert [g.text for g in got] == [e[0] for e in DECODER_EXAMPLES]
    for (text, pair), g in zip(DECODER_EXAMPLES, got, strict=True):
        ref, target, baselines, f_full = reference_attribution(model, tok, text, pair, "gauss-legendre", 3)
        assert g.target == target
        torch.testing.assert_close(g.scores, ref, atol=1e-5, rtol=0)
        assert g.output_value == pytest.approx(f_full, abs=1e-6)
        assert g.baseline_values == pytest.approx(baselines, abs=1e-6)


def test_decoder_logprob_gold_target_and_split_passes_match_reference():
    model, tok = tiny_decoder("llama", seed=1), padded_tokenizer("left")
    text = "the film is very good"
    ref, _, _, _ = reference_attribution(model, tok, text, None, "trapezoid", 3, output="logprob", target=2)
    examples = [
        attattr.data.Example(id="x", text=text, label=2),
        attattr.data.Example(id="y", text="a", label=0),
    ]
    for budget in (1 << 34, 1):  # one pass, or one pass per (layer, node)
        got = list(
            attattr.attribute_many(
                model,
                tok,
                examples,
                output="logprob",
                target="gold",
                rule="trapezoid",
                steps=3,
                memory_budget=budget,
            )
        )
        assert got[0].target == 2
        torch.testing.assert_close(got[0].scores, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_decoder_predict_in_batches_equals_each_input_alone(side):
    model, tok = tiny_decoder("qwen2"), padded_tokenizer(side)
    texts = [e[0] for e in DECODER_EXAMPLES]
    pairs = [e[1] for e in DECODER_EXAMPLES]
    batched = predict(model, tok, texts, pairs, batch_size=4)
    for i, (text, pair) in enumerate(DECODER_EXAMPLES):
        with torch.no_grad():
            alone = torch.softmax(
                model(**model_inputs(tok(text, pair, return_tensors="pt"), model)).logits, -1
            )
        torch.testing.assert_close(batched[i], alone[0], atol=1e-6, rtol=0)
