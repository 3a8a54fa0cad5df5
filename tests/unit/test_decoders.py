"""Causal language models: next-token, continuation and contrastive objectives against a plain
reference, for every decoder family attattr supports, and the refusals of bad input.

The reference is written here and shares nothing with the engine: for each prompt alone (no
padding), each layer and each integration node, one full forward pass of the model's own
`...ForCausalLM` (its own head, all logits) through an eager attention function of this file that
replaces that layer's probabilities by alpha * A; F from the full logits; the gradient with respect
to the scaled matrix, summed with the rule's weights and multiplied by A. Families: GPT-2, Llama,
Qwen2, Qwen3, Mistral (a window shorter than the input), Gemma-2 (attention and final logit
soft-capping, alternating windows), Gemma-3, Phi-3 and gpt-oss (learned attention sinks); each with
grouped-query attention where the family has it. Tiny random models: 2 layers, hidden 32.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

import attattr
from attattr.core.encoding import encode_prompts, predict_prompts
from attattr.core.errors import InputError, UnsupportedModelError
from attattr.core.hooks import AttentionHook, group_by_key_value, key_value_heads
from attattr.core.objectives import lm_logits, make_objective
from attattr.core.quadrature import rule as quadrature_rule
from attattr.prompts import PromptExample

WORDS = (
    "When Mary and John went to the store , John gave a drink to cat dog sat on mat . the a "
    "book Paris is capital of France film was good plot not bad but this movie very dull"
).split()


def decoder_tokenizer(*, bos: bool = False, side: str = "right") -> tf.PreTrainedTokenizerFast:
    """A byte-level word tokenizer like GPT-2's (" Mary" is one token, "Mary" another); bos=True
    puts <s> before every input, as Llama's tokenizers do."""
    vocab = {"<|endoftext|>": 0, "<unk>": 1, "<s>": 2}
    for word in dict.fromkeys(WORDS):
        for form in (word, "Ġ" + word):
            vocab.setdefault(form, len(vocab))
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    if bos:
        raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tok = tf.PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        bos_token="<s>",
        pad_token="<|endoftext|>",
    )
    tok.padding_side = side
    return tok


VOCAB = len(decoder_tokenizer())


def tiny_lm(family: str, seed: int = 0):
    """A seeded random causal LM of `family`: 2 layers, 4 query heads (2 key/value heads where the
    family has grouped-query attention), hidden 32, eager attention, eval mode."""
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        initializer_range=0.3,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=0,
    )
    gqa = dict(common, num_key_value_heads=2)
    builders = {
        "gpt2": lambda: tf.GPT2LMHeadModel(
            tf.GPT2Config(
                vocab_size=VOCAB,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=64,
                initializer_range=0.3,
                bos_token_id=2,
                eos_token_id=0,
                pad_token_id=0,
            )
        ),
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**gqa)),
        "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**gqa)),
        "qwen3": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**gqa, head_dim=8)),
        "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(**gqa, sliding_window=3)),
        "gemma2": lambda: tf.Gemma2ForCausalLM(
            tf.Gemma2Config(
                **gqa, head_dim=8, sliding_window=3, attn_logit_softcapping=1.5, final_logit_softcapping=2.0
            )
        ),
        "gemma3": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**gqa, head_dim=8, sliding_window=3)),
        "phi3": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(**gqa)),
        "gpt-oss": lambda: tf.GptOssForCausalLM(
            tf.GptOssConfig(**gqa, head_dim=8, sliding_window=3, num_local_experts=2, num_experts_per_tok=1)
        ),
    }
    torch.manual_seed(seed)
    model = builders[family]()
    if family == "gpt-oss":  # random sinks: zero-initialised ones would test nothing
        for layer in model.model.layers:
            layer.self_attn.sinks.data.normal_(0.0, 1.0)
    model.set_attn_implementation("eager")
    return model.eval()


FAMILIES = ("gpt2", "llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "gpt-oss")

# ---- the plain reference --------------------------------------------------------------------------
_REF = {"layer": None, "alpha": 1.0, "calls": 0, "A": None, "leaf": None, "gates": None}


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = query @ key.transpose(2, 3) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if kwargs.get("softcap") is not None:
        scores = kwargs["softcap"] * torch.tanh(scores / kwargs["softcap"])
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]
        scores = scores.masked_fill(~mask, -1e30) if mask.dtype == torch.bool else scores + mask
    sinks = kwargs.get("s_aux")
    if sinks is not None:
        column = sinks.view(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1)
        probs = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    layer = _REF["calls"]
    _REF["calls"] += 1
    if _REF["gates"] is not None:
        probs = probs * _REF["gates"][layer].view(1, -1, 1, 1)
    if layer == _REF["layer"]:
        _REF["A"] = probs.detach()
        probs = (_REF["alpha"] * probs.detach()).requires_grad_(True)
        _REF["leaf"] = probs
    return (probs @ value).transpose(1, 2).contiguous(), probs


AttentionInterface.register("decoder-reference", _reference_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register("decoder-reference", eager_mask)


def _ids(tok, prompt: str, text: str | None = None) -> list[int]:
    ids = tok(prompt)["input_ids"]
    if text is None:
        return ids
    return (
        ids
        + tok(prompt + text, add_special_tokens=False)["input_ids"][
            len(tok(prompt, add_special_tokens=False)["input_ids"]) :
        ]
    )


def _f_reference(logits, kind, n_prompt, target_ids, foil_ids=None):
    """F from a prompt's full logits [seq, vocab]."""
    last = n_prompt - 1
    if kind == "prob":
        return torch.softmax(logits[last], -1)[target_ids[0]]
    if kind == "logit":
        return logits[last, target_ids[0]]
    if kind == "logit-diff":
        return logits[last, target_ids[0]] - logits[last, foil_ids[0]]
    if kind == "prob-diff":
        p = torch.softmax(logits[last], -1)
        return p[list(target_ids)].sum() - p[list(foil_ids)].sum()
    # logprob of a continuation, teacher-forced: position last + t predicts token t
    lp = torch.log_softmax(logits, -1)
    return sum(lp[last + t, y] for t, y in enumerate(target_ids))


def reference(model, ids, kind, n_prompt, target_ids, foil_ids=None, steps=2, rule="gauss-legendre"):
    """[layers, heads, n, n] scores, F(A) and F(0 * A^l) per layer, one input alone."""
    inputs = torch.tensor([ids])
    model.set_attn_implementation("decoder-reference")
    try:

        def f():
            _REF["calls"] = 0
            return _f_reference(
                model(input_ids=inputs).logits[0].float(), kind, n_prompt, target_ids, foil_ids
            )

        _REF.update(layer=None)
        with torch.no_grad():
            full = float(f())
        alphas, weights = quadrature_rule(rule, steps)
        scores, baselines = [], []
        for layer in range(model.config.num_hidden_layers):
            total = 0
            for a, w in zip(alphas, weights, strict=True):
                _REF.update(layer=layer, alpha=float(a))
                (grad,) = torch.autograd.grad(f(), _REF["leaf"])
                total = total + w * grad
            scores.append(_REF["A"][0] * total[0])
            _REF.update(layer=layer, alpha=0.0)
            with torch.no_grad():
                baselines.append(float(f()))
        return torch.stack(scores), full, baselines
    finally:
        _REF.update(layer=None, gates=None)
        model.set_attn_implementation("eager")


def check_against_reference(model, tok, got, prompt, kind, target=None, foil=None, *, alternatives=None):
    n_prompt = len(_ids(tok, prompt))
    if alternatives is not None:
        target_ids = [_ids(tok, prompt, t)[n_prompt] for t in alternatives[0]]
        foil_ids = [_ids(tok, prompt, f)[n_prompt] for f in alternatives[1]]
        ids = _ids(tok, prompt)
    elif target is None:
        target_ids, foil_ids, ids = [got.target], None, _ids(tok, prompt)
    else:
        full = _ids(tok, prompt, target)
        target_ids = full[n_prompt:]
        foil_ids = _ids(tok, prompt, foil)[n_prompt:] if foil is not None else None
        ids = full if kind == "logprob" else _ids(tok, prompt)
        if kind == "logprob":
            ids = full[:-1]  # the last target token is predicted, never read
    ref, full_f, baselines = reference(model, ids, kind, n_prompt, target_ids, foil_ids)
    assert got.tokens == tok.convert_ids_to_tokens(ids)
    assert got.scores.shape == ref.shape
    torch.testing.assert_close(got.scores, ref, atol=2e-5, rtol=1e-4)
    assert got.output_value == pytest.approx(full_f, abs=2e-5, rel=1e-5)
    assert got.baseline_values == pytest.approx(baselines, abs=2e-5, rel=1e-5)
    # causal: a token never attends to a later one; those entries are exactly 0
    assert torch.equal(got.scores.triu(1), torch.zeros_like(got.scores))
    assert torch.equal(got.attentions.triu(1), torch.zeros_like(got.attentions))


PROMPT = "When Mary and John went to the store , John gave a drink to"
PROMPTS = ["When Mary and John went to the store , John gave a drink to", "the cat sat on", "a dog"]
FIXED = dict(steps=2, rule="gauss-legendre")


@pytest.mark.parametrize("family", FAMILIES)
def test_single_prompts_match_the_reference(family):
    model, tok = tiny_lm(family), decoder_tokenizer(bos=family in ("llama", "gemma2"))
    got = attattr.attribute(model, tok, PROMPT, target=" Mary", foil=" John", **FIXED)
    assert got.output == "logit-diff" and got.decoder["objective"] == "contrastive"
    check_against_reference(model, tok, got, PROMPT, "logit-diff", " Mary", " John")
    got = attattr.attribute(model, tok, "the cat sat on", **FIXED)  # the top next token's probability
    assert got.output == "prob" and got.target == got.predicted == got.decoder["top"][0]["id"]
    check_against_reference(model, tok, got, "the cat sat on", "prob")


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batches_match_each_prompt_alone(family, side):
    model, tok = tiny_lm(family), decoder_tokenizer(side=side)
    examples = [
        PromptExample("a", PROMPTS[0], " Mary", " John"),
        PromptExample("b", PROMPTS[1], " the", " a"),
        PromptExample("c", PROMPTS[2], " sat", " dog"),
    ]
    got = list(attattr.attribute_many(model, tok, examples, target="gold", batch_size=3, **FIXED))
    assert [g.example_id for g in got] == ["a", "b", "c"]
    for ex, g in zip(examples, got, strict=True):
        check_against_reference(model, tok, g, ex.prompt, "logit-diff", ex.target, ex.foil)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_forced_continuation_matches_the_reference(family):
    """F = sum_t log p(y_t | prompt, y_<t), teacher-forced, in a left-padded batch."""
    model, tok = tiny_lm(family), decoder_tokenizer(side="left")
    examples = [
        PromptExample("long", "When Mary", " and John went to"),
        PromptExample("short", "the cat", " sat"),
    ]
    got = list(attattr.attribute_many(model, tok, examples, target="gold", batch_size=2, **FIXED))
    assert got[0].output == "logprob" and got[0].decoder["objective"] == "continuation"
    assert got[0].decoder["positions"] == [1, 2, 3, 4] and got[0].decoder["prompt_tokens"] == 2
    assert got[0].segment_ids == [0, 0, 1, 1, 1]  # prompt, then the forced target tokens
    for ex, g in zip(examples, got, strict=True):
        check_against_reference(model, tok, g, ex.prompt, "logprob", ex.target)


def test_other_outputs_and_alternatives_match_the_reference():
    model, tok = tiny_lm("llama", seed=1), decoder_tokenizer(bos=True)
    got = attattr.attribute(model, tok, PROMPT, target=" Mary", output="logit", **FIXED)
    check_against_reference(model, tok, got, PROMPT, "logit", " Mary")
    got = attattr.attribute(model, tok, PROMPT, target=" Mary", output="prob", **FIXED)
    check_against_reference(model, tok, got, PROMPT, "prob", " Mary")
    targets, foils = (" Mary", " cat"), (" John", " dog", " a")
    got = attattr.attribute(model, tok, PROMPT, target=targets, foil=foils, **FIXED)
    assert got.output == "prob-diff"
    check_against_reference(model, tok, got, PROMPT, "prob-diff", alternatives=(targets, foils))


def test_per_token_attributions_add_up_to_the_continuation():
    model, tok = tiny_lm("qwen2"), decoder_tokenizer()
    whole = attattr.attribute(model, tok, "When Mary", target=" and John went", **FIXED)
    parts = list(
        attattr.attribute_many(model, tok, ["When Mary"], target=" and John went", per_token=True, **FIXED)
    )
    assert [p.decoder["token_index"] for p in parts] == [0, 1, 2]
    assert [len(p.tokens) for p in parts] == [2, 3, 4]  # prompt + the target tokens before y_t
    assert sum(p.output_value for p in parts) == pytest.approx(whole.output_value, abs=1e-5)
    # each part is the next-token log-probability of its token given the tokens before it
    check_against_reference(model, tok, parts[2], "When Mary and John", "logprob", " went")


def test_multi_token_contrast_forces_the_common_prefix():
    """Target ' Paris is' vs foil ' Paris of': ' Paris' is forced, F compares ' is' with ' of'."""
    model, tok = tiny_lm("llama"), decoder_tokenizer()
    got = attattr.attribute(model, tok, "the capital", target=" Paris is", foil=" Paris of", **FIXED)
    assert got.decoder["forced"]["text"] == " Paris" and got.tokens[-1] == "ĠParis"
    assert got.decoder["target"]["text"] == " is" and got.decoder["foil"]["text"] == " of"
    check_against_reference(model, tok, got, "the capital Paris", "logit-diff", " is", " of")


def test_logits_are_computed_only_where_f_reads_them():
    """The LM head never sees all positions: logit-diff multiplies in only two vocabulary columns
    (the head module is not called while integrating); the top predictions read one position."""
    model, tok = tiny_lm("llama"), decoder_tokenizer()
    shapes = []
    handle = model.lm_head.register_forward_hook(lambda m, a, out: shapes.append(tuple(a[0].shape)))
    try:
        attattr.attribute(model, tok, PROMPT, target=" Mary", foil=" John", **FIXED)
    finally:
        handle.remove()
    # [examples, hidden] for the top predictions; [1, 3, hidden]: the once-per-model probes
    assert (1, 32) in shapes and all(s in ((1, 32), (1, 3, 32)) for s in shapes)
    hidden = torch.randn(3, 5, 32)
    columns = torch.randint(0, VOCAB, (3, 5, 2))
    torch.testing.assert_close(lm_logits(model, hidden, columns), lm_logits(model, hidden).gather(2, columns))


def test_gemma2_final_soft_capping_is_applied_to_the_columns_read():
    model = tiny_lm("gemma2")
    hidden = torch.randn(2, 4, 32)
    with torch.no_grad():
        own = model.lm_head(hidden).float()
    capped = lm_logits(model, hidden).detach()
    torch.testing.assert_close(capped, 2.0 * torch.tanh(own / 2.0))
    assert float(capped.abs().max()) <= 2.0


def test_grouped_query_heads_group_by_key_value_head():
    model, tok = tiny_lm("llama"), decoder_tokenizer()
    assert key_value_heads(model) == 2
    got = attattr.attribute(model, tok, "the cat sat on", target=" the", **FIXED)
    grouped = group_by_key_value(got.scores, 2)  # [layers, kv heads, n, n]: query heads 0+1, 2+3
    torch.testing.assert_close(grouped[:, 1], got.scores[:, 2] + got.scores[:, 3])
    with pytest.raises(InputError, match="4 query heads into 3"):
        group_by_key_value(got.scores, 3)


@pytest.mark.parametrize("family", ["llama", "gpt-oss"])
def test_head_gates_act_on_query_heads(family):
    """Pruning query head 1 of layer 0 (which shares its key/value head with head 0) changes the
    metric exactly as the reference with that head's probabilities zeroed."""
    model, tok = tiny_lm(family), decoder_tokenizer(side="left")
    examples = [
        PromptExample("a", PROMPTS[0], " Mary", " John"),
        PromptExample("b", PROMPTS[1], " the", " a"),
    ]
    gates = torch.ones(2, 4)
    gates[0, 1] = 0.0
    values, correct = predict_prompts(model, tok, examples, head_gates=gates)
    model.set_attn_implementation("decoder-reference")
    try:
        for ex, value, ok in zip(examples, values, correct, strict=True):
            _REF.update(layer=None, gates=gates, calls=0)
            n = len(_ids(tok, ex.prompt))
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([_ids(tok, ex.prompt)])).logits[0]
            t, f = _ids(tok, ex.prompt, ex.target)[n], _ids(tok, ex.prompt, ex.foil)[n]
            expected = float(logits[n - 1, t] - logits[n - 1, f])
            assert float(value) == pytest.approx(expected, abs=1e-5)
            assert bool(ok) == (expected > 0)
    finally:
        _REF.update(gates=None)
        model.set_attn_implementation("eager")
    ungated, _ = predict_prompts(model, tok, examples)
    assert not torch.allclose(values, ungated)


# ---- encoding --------------------------------------------------------------------------------------
def test_prompts_keep_a_leading_bos_and_pad_on_the_tokenizers_side():
    for side in ("left", "right"):
        tok = decoder_tokenizer(bos=True, side=side)
        enc, cut = encode_prompts(tok, ["the cat", "a"], [[5], []], max_length=64)
        assert cut == [False, False] and enc["prompt_length"].tolist() == [3, 2]
        row = enc["input_ids"][1][enc["attention_mask"][1].bool()].tolist()
        assert row == tok("a")["input_ids"] and row[0] == 2
        assert enc["attention_mask"][1].tolist() == ([0, 0, 1, 1] if side == "left" else [1, 1, 0, 0])
        assert enc["segment_ids"][0][enc["attention_mask"][0].bool()].tolist() == [0, 0, 0, 1]


def test_over_long_prompts_are_refused_unless_truncation_is_asked():
    tok = decoder_tokenizer(bos=True)
    with pytest.raises(InputError, match="more than the model's context of 4 tokens.*cuts the beginning"):
        encode_prompts(tok, ["the cat sat on the mat"], max_length=4)
    enc, cut = encode_prompts(tok, ["the cat sat on the mat"], [[3]], max_length=4, truncate=True)
    # the BOS stays, the beginning of the text goes, the end (where the model predicts) stays
    assert cut == [True] and tok.convert_ids_to_tokens(enc["input_ids"][0]) == ["<s>", "Ġthe", "Ġmat", "When"]
    model = tiny_lm("llama")
    model.config.max_position_embeddings = 6
    with pytest.raises(InputError, match="has 14 tokens, more than the model's context of 6"):
        attattr.attribute(model, decoder_tokenizer(), PROMPT, target=" Mary", foil=" John", **FIXED)
    got = attattr.attribute(model, decoder_tokenizer(), PROMPT, target=" Mary", truncate=True, **FIXED)
    assert got.truncated and len(got.tokens) == 6 and got.tokens[-1] == "Ġto"


# ---- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(target=" Mary", foil=" Mary"), "the foil ' Mary' equals the target"),
        (dict(target=" Paris is", foil=" Paris"), "never differ at one position"),
        (
            dict(target=" Mary and John", output="logit"),
            "'logit' reads one token, and the target ' Mary and John' is 3",
        ),
        (dict(target=" Mary", output="logit-diff"), "'logit-diff' needs a foil"),
        (dict(target=" Mary", foil=" John", output="prob"), "a foil is compared by output 'logit-diff'"),
        (dict(target=(" Mary", " John and"), foil=(" cat",)), "alternative ' John and' is 2 tokens"),
        (dict(target=" Mary", foil=" John", per_token=True), "per-token attribution takes a continuation"),
        (dict(per_token=True), "per-token attribution needs a continuation target"),
        (dict(target=" Mary", output="energy"), "unknown output 'energy' for a causal language model"),
        (dict(target=""), "the target is empty"),
        (dict(target=10_000), "target token id 10000 out of range"),
    ],
)
def test_bad_targets_are_refused(options, message):
    model, tok = tiny_lm("llama"), decoder_tokenizer()
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        attattr.attribute(model, tok, PROMPT, **FIXED, **options)


def test_a_target_that_tokenises_to_nothing_is_refused(tiny_tok):
    objective = make_objective(None, " ", model=tiny_lm("llama"))
    item = PromptExample("q", "the cat", " ")
    with pytest.raises(InputError, match=r"the target ' ' tokenises to nothing \(example q\)"):
        objective.expand([type("It", (), {"id": "q", "text": item.prompt, "text_pair": None})()], tiny_tok)


def test_the_top_prediction_as_foil_is_refused():
    model, tok = tiny_lm("llama"), decoder_tokenizer()
    top = attattr.attribute(model, tok, "the cat sat on", **FIXED).decoder["top"][0]["text"]
    with pytest.raises(InputError, match="is the model's top prediction"):
        attattr.attribute(model, tok, "the cat sat on", foil=top, **FIXED)


def test_empty_prompt_and_classifier_options_are_refused(tiny_tok, make_tiny_model):
    model, tok = tiny_lm("llama"), decoder_tokenizer()
    with pytest.raises(InputError, match="text is empty"):
        attattr.attribute(model, tok, "  ", target=" Mary", **FIXED)
    classifier = make_tiny_model("bert")
    with pytest.raises(
        InputError, match="a foil applies to causal language models only: BertForSequenceClassification"
    ):
        attattr.attribute(classifier, tiny_tok, "the cat", foil="dog", **FIXED)
    with pytest.raises(InputError, match="per-token attribution applies to causal language models only"):
        attattr.attribute(classifier, tiny_tok, "the cat", per_token=True, **FIXED)
    with pytest.raises(InputError, match="logit-diff and prob-diff are for causal language models"):
        attattr.attribute(classifier, tiny_tok, "the cat", output="logit-diff", **FIXED)


def test_an_unknown_lm_head_transform_is_refused():
    model, tok = tiny_lm("llama"), decoder_tokenizer()
    original = type(model).forward

    def scaled(self, *args, **kwargs):  # a head that does more than the linear layer
        out = original(self, *args, **kwargs)
        out.logits = out.logits * 2
        return out

    model.forward = scaled.__get__(model)
    with pytest.raises(UnsupportedModelError, match="language-model head computes more than a linear layer"):
        attattr.attribute(model, tok, PROMPT, target=" Mary", **FIXED)


def test_hook_is_removed_and_attention_unchanged_after_a_decoder_attribution():
    model, tok = tiny_lm("mistral"), decoder_tokenizer()
    inputs = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        before = model(**inputs).logits
    attattr.attribute(model, tok, PROMPT, target=" Mary", foil=" John", **FIXED)
    with torch.no_grad():
        after = model(**inputs).logits
    assert torch.equal(before, after) and model.config._attn_implementation == "eager"
    with AttentionHook(model, record=True) as hook, torch.no_grad():
        model(**inputs)
    assert hook.attentions[0].shape == (1, 4, 14, 14)


# ---- command line ---------------------------------------------------------------------------------
@pytest.fixture
def lm_dir(tmp_path):
    """A tiny Llama causal LM with its tokenizer, saved as a model directory."""
    path = tmp_path / "tiny-llama"
    model = tiny_lm("llama")
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(path)
    decoder_tokenizer().save_pretrained(path)
    return path


def test_explain_prints_the_top_next_tokens_heads_and_connections(lm_dir, tmp_path, run_cli):
    out = tmp_path / "out"
    args = ["explain", PROMPT, "--model", lm_dir, "--target", " Mary", "--foil", " John"]
    code, stdout, err = run_cli(*args, "--steps", "2", "--rule", "gauss-legendre", "--out", out)
    assert code == 0, err
    assert "top next tokens after 'Ġto' (#13)" in stdout
    assert "F = logit(' Mary') - logit(' John') at position 13 ('Ġto')" in stdout
    assert "top heads" in stdout and "top connections" in stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["output"] == "logit-diff" and meta["decoder"]["target"]["text"] == " Mary"
    page = (out / "report.html").read_text()
    assert "Prompt and prediction" in page and "next token after <code>Ġto</code> (#13)" in page
    saved = attattr.Attribution.load(out)
    assert saved.decoder == meta["decoder"] and saved.tree().root == 13


def test_explain_per_token_writes_one_folder_per_target_token(lm_dir, tmp_path, run_cli):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        "explain",
        "When Mary",
        "--model",
        lm_dir,
        "--target",
        " and John",
        "--per-token",
        "--steps",
        "1",
        "--rule",
        "gauss-legendre",
        "--out",
        out,
        "--json",
    )
    assert code == 0, err
    parts = json.loads(stdout)["per_token"]
    assert [p["decoder"]["token_index"] for p in parts] == [0, 1]
    assert (out / "token-01" / "report.html").is_file() and (out / "token-02" / "meta.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", " Mary", "--foil", " Mary"], "the foil ' Mary' equals the target"),
        (["--target", " Mary", "--foil", ""], "the foil is empty"),
        (["--target", ""], "the target is empty"),
        (["--target", " Mary", "--label", "1"], "--label applies to classifiers"),
        (["--pair", "the cat"], "reads one prompt, not a text pair"),
    ],
)
def test_explain_refuses_bad_decoder_input_in_one_line(lm_dir, tmp_path, run_cli, args, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    code, stdout, err = run_cli("explain", PROMPT, "--model", lm_dir, *args, "--steps", "1", "--out", out)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_explain_refuses_decoder_options_on_a_classifier(save_tiny_model, tmp_path, run_cli):
    model = save_tiny_model(tmp_path / "clf")
    for option in (["--foil", "dog"], ["--per-token"]):
        code, _, err = run_cli("explain", "the cat", "--model", model, *option, "--steps", "1")
        assert code == 2 and "applies to causal language models" in err and "is a classifier" in err


def test_explain_refuses_an_over_long_prompt_and_cuts_its_beginning_when_asked(lm_dir, run_cli):
    config = json.loads((lm_dir / "config.json").read_text())
    config["max_position_embeddings"] = 8
    (lm_dir / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli("explain", PROMPT, "--model", lm_dir, "--target", " Mary", "--steps", "1")
    assert code == 2 and "more than the model's context of 8 tokens" in err
    code, stdout, err = run_cli(
        "explain", PROMPT, "--model", lm_dir, "--target", " Mary", "--steps", "1", "--truncate", "--json"
    )
    assert code == 0 and "beginning of the prompt was cut" in err
    assert json.loads(stdout)["tokens"][-1] == "Ġto"


def test_tree_of_a_decoder_is_rooted_at_the_predicting_position(lm_dir, run_cli):
    code, stdout, err = run_cli(
        "tree",
        PROMPT,
        "--model",
        lm_dir,
        "--target",
        " Mary",
        "--foil",
        " John",
        "--steps",
        "2",
        "--rule",
        "gauss-legendre",
        "--threshold",
        "0.3",
        "--json",
    )
    assert code == 0, err
    tree = json.loads(stdout)
    assert tree["root"] == 13 and tree["nodes"][0]["token"] == "Ġto"
    assert all(e["child"] <= e["parent"] for e in tree["edges"])  # information flows forward only


# ---- head analyses over prompts -------------------------------------------------------------------
HEAD_PROMPTS = [
    PromptExample("p0", PROMPT, " Mary", " John"),
    PromptExample("p1", "When John and Mary went to the store , Mary gave a drink to", " John", " Mary"),
    PromptExample("p2", "the cat sat on the", " mat", " dog"),
]


def test_head_importance_over_prompts_is_the_mean_of_each_prompts_attribution():
    from attattr.analyses.heads import head_importance

    model, tok = tiny_lm("qwen2"), decoder_tokenizer(side="left")
    imp = head_importance(model, tok, HEAD_PROMPTS, "attattr", batch_size=2, **FIXED)
    assert imp.settings["metric"] == "logit-diff" and imp.scores.shape == (2, 4)
    alone = [
        attattr.attribute(model, tok, ex.prompt, target=ex.target, foil=ex.foil, **FIXED)
        for ex in HEAD_PROMPTS
    ]
    expected = torch.stack([a.head_importance() for a in alone]).double().mean(0)
    torch.testing.assert_close(imp.scores, expected, atol=1e-6, rtol=1e-5)
    attention = head_importance(model, tok, HEAD_PROMPTS, "attention", batch_size=3)
    # the first token's row (always [1, 0, ...]) is left out: no head's largest weight is exactly 1
    assert float(attention.scores.max()) < 1.0


def test_taylor_importance_of_a_decoder_is_the_metrics_gate_gradient():
    from attattr.analyses.heads import head_importance

    model, tok = tiny_lm("llama"), decoder_tokenizer()
    imp = head_importance(model, tok, HEAD_PROMPTS[:1], "taylor", batch_size=1)
    raw = imp.per_example[0]  # [layers, heads], before the per-layer normalisation
    eps = 1e-3
    for layer, head in [(0, 1), (1, 3)]:
        gates = torch.ones(2, 4, dtype=torch.float64)
        up, down = gates.clone(), gates.clone()
        up[layer, head], down[layer, head] = 1 + eps, 1 - eps
        f_up, _ = predict_prompts(model, tok, HEAD_PROMPTS[:1], head_gates=up.float())
        f_down, _ = predict_prompts(model, tok, HEAD_PROMPTS[:1], head_gates=down.float())
        assert float(raw[layer, head]) == pytest.approx(
            abs(float(f_up - f_down)) / (2 * eps), rel=2e-2, abs=1e-4
        )


def test_pruning_and_effectiveness_score_prompts_by_their_metric():
    from attattr.analyses.heads import effectiveness, prune_experiment

    model, tok = tiny_lm("llama"), decoder_tokenizer(side="left")
    values, correct = predict_prompts(model, tok, HEAD_PROMPTS)
    result, _ = prune_experiment(
        model,
        tok,
        HEAD_PROMPTS,
        HEAD_PROMPTS,
        ["attattr", "taylor", "attention", "random"],
        seeds=2,
        fractions=(0.0, 0.5, 1.0),
        batch_size=3,
        **FIXED,
    )
    assert result["metric"] == "logit-diff" and set(result["methods"]) == {
        "attattr",
        "taylor",
        "attention",
        "random",
    }
    for curve in result["methods"].values():
        assert curve["metric"][0] == pytest.approx(float(values.mean()), abs=1e-6)
        assert curve["accuracy"][0] == pytest.approx(float(correct.double().mean()))
    everything = torch.zeros(2, 4)
    pruned, _ = predict_prompts(model, tok, HEAD_PROMPTS, head_gates=everything)
    assert result["methods"]["attattr"]["metric"][-1] == pytest.approx(float(pruned.mean()), abs=1e-6)
    eff = effectiveness(model, tok, HEAD_PROMPTS, step=4, batch_size=3, **FIXED)
    assert eff["settings"]["metric"] == "logit-diff" and eff["counts"] == [0, 4, 8]
    for curve in eff["curves"].values():
        assert curve["metric"][0] == pytest.approx(float(values.mean()), abs=1e-6)
        assert curve["metric"][-1] == pytest.approx(float(pruned.mean()), abs=1e-6)


def test_heads_commands_run_on_a_prompt_file(lm_dir, tmp_path, run_cli):
    data = tmp_path / "prompts.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": ex.id, "prompt": ex.prompt, "target": ex.target, "foil": ex.foil}) + "\n"
            for ex in HEAD_PROMPTS
        )
    )
    out = tmp_path / "imp"
    common = ["--model", lm_dir, "--data", data, "--steps", "1", "--rule", "gauss-legendre", "--json"]
    code, stdout, err = run_cli("heads", "importance", *common, "--examples", "3", "--out", out)
    assert code == 0, err
    assert (
        json.loads(stdout)["settings"]["metric"] == "logit-diff"
        and (out / "importance-attattr.png").is_file()
    )
    out = tmp_path / "prune"
    code, stdout, err = run_cli(
        "heads",
        "prune",
        *common,
        "--importance-split",
        "dev",
        "--methods",
        "attattr,random",
        "--seeds",
        "1",
        "--examples",
        "3",
        "--out",
        out,
    )
    assert code == 0, err
    result = json.loads(stdout)
    assert result["metric"] == "logit-diff" and len(result["methods"]["attattr"]["metric"]) == 11
    assert (out / "prune.png").is_file()
    out = tmp_path / "eff"
    code, stdout, err = run_cli(
        "heads", "effectiveness", *common, "--examples", "3", "--step", "4", "--out", out
    )
    assert code == 0, err
    assert (out / "effectiveness.png").is_file()


# ---- memory ---------------------------------------------------------------------------------------
def test_the_memory_plan_counts_key_value_heads_and_the_logits_f_reads():
    from attattr.core.planning import activation_bytes, plan_rows

    def llama(kv_heads):
        torch.manual_seed(0)
        config = tf.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=kv_heads,
        )
        return tf.LlamaForCausalLM(config)

    n = 10
    # without grouping: 14 hidden-sized vectors per token, FFN and the attention matrices
    assert activation_bytes(llama(4), n, None) == 4 * (n * (14 * 32 + 4 * 64) + 5 * 4 * n * n)
    # 2 key/value heads: smaller projections, plus the keys and values repeated per query head
    assert activation_bytes(llama(2), n, None) == 4 * (
        n * (11 * 32 + 32 + 2 * 16 + 2 * 32 + 4 * 64) + 5 * 4 * n * n
    )
    # what F needs per row: all columns at 3 positions for a 3-token log-probability, 2 columns for logit-diff
    model, tok = tiny_lm("llama"), decoder_tokenizer()
    continuation = make_objective(None, " and John went", model=model)
    continuation.encode(
        tok,
        continuation.expand([type("It", (), {"id": None, "text": "When Mary", "text_pair": None})()], tok),
        max_length=64,
        truncate=False,
        device="cpu",
    )
    assert continuation.row_bytes(model) == 3 * VOCAB * 16
    contrast = make_objective(None, " Mary", model=model, foil=" John")
    contrast.encode(
        tok,
        contrast.expand([type("It", (), {"id": None, "text": PROMPT, "text_pair": None})()], tok),
        max_length=64,
        truncate=False,
        device="cpu",
    )
    assert contrast.row_bytes(model) == 2 * (32 + 2) * 8
    # a per-row cost makes smaller passes under the same budget
    rows = [(0, 8), (1, 8)]
    plain = plan_rows(rows, num_layers=2, batch=1, per_row_layer=100, budget=1200)
    heavy = plan_rows(rows, num_layers=2, batch=1, per_row_layer=100, budget=1200, per_row=100)
    assert len(heavy) > len(plain)


def test_passes_split_by_a_tiny_budget_give_the_same_numbers():
    model, tok = tiny_lm("qwen3"), decoder_tokenizer()
    whole = attattr.attribute(model, tok, "When Mary", target=" and John went", **FIXED)
    split = attattr.attribute(model, tok, "When Mary", target=" and John went", memory_budget=1, **FIXED)
    torch.testing.assert_close(split.scores, whole.scores, atol=1e-6, rtol=1e-5)


def test_sparse_results_keep_head_importance_and_top_edges_exactly(tmp_path):
    from attattr.core.sparse import SparseAttribution

    model, tok = tiny_lm("llama"), decoder_tokenizer()
    dense = attattr.attribute(model, tok, PROMPT, target=" Mary", foil=" John", **FIXED)
    sparse = SparseAttribution.from_attribution(dense, k=3)
    torch.testing.assert_close(sparse.head_importance(), dense.head_importance())
    assert sparse.top_edges(3) == dense.top_edges(3)
    assert sparse.nbytes() < dense.scores.numel() * 4
    sparse.save(tmp_path)
    again = SparseAttribution.load(tmp_path)
    assert torch.equal(again.scores, sparse.scores) and again.meta["decoder"] == dense.decoder
    some = SparseAttribution.from_attribution(dense, k=2, layers=[1], heads=[0, 3])
    torch.testing.assert_close(some.head_importance()[0], dense.head_importance()[1, [0, 3]])
    assert some.top_edges(1)[0].layer == 1 and some.top_edges(1)[0].head in (0, 3)
    (tmp_path / "attributions-sparse.safetensors").write_bytes(b"broken")
    with pytest.raises(attattr.core.errors.ResultFileError, match="does not match the checksum|cannot read"):
        SparseAttribution.load(tmp_path)
    with pytest.raises(InputError, match="k must be an integer >= 1"):
        SparseAttribution.from_attribution(dense, k=0)


def test_triggers_refuse_a_causal_lm(lm_dir, tmp_path, run_cli):
    code, _, err = run_cli(
        "triggers", "mine", "--model", lm_dir, "--data", "rotten-tomatoes", "--out", tmp_path / "t"
    )
    assert code == 2 and "triggers apply to classifiers" in err and "causal language model" in err


def test_a_family_computing_attention_inline_is_refused_with_the_reason():
    model = tf.BloomForCausalLM(tf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4))
    with pytest.raises(UnsupportedModelError, match="does not run through transformers' AttentionInterface"):
        attattr.attribute(model, decoder_tokenizer(), PROMPT, target=" Mary", **FIXED)
