"""The engine's public surface: errors, result files, hook installation, truncation."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

import attattr
from attattr import Attribution
from attattr.core.errors import InputError, ResultFileError, UnsupportedModelError
from attattr.core.hooks import AttentionHook
from attattr.core.quadrature import rule

from ..tiny import ARCHITECTURES, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def bert():
    return tiny_model("bert", init=0.2), tiny_tokenizer()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_hook_without_injection_matches_eager_logits(arch):
    model, tok = tiny_model(arch, init=0.2), tiny_tokenizer()
    enc = tok(["the cat sat on a mat", "a dog"], padding=True, return_tensors="pt")
    untyped = arch in ("distilbert", "modernbert")  # neither takes token_type_ids
    inputs = {k: v for k, v in enc.items() if not (untyped and k == "token_type_ids")}
    with torch.no_grad():
        eager = model(**inputs).logits
        with AttentionHook(model, record=True) as hook:
            hooked = model(**inputs).logits
            assert len(hook.attentions) == 3
        torch.testing.assert_close(hooked, eager, atol=1e-5, rtol=0)
    assert model.config._attn_implementation == "eager"  # restored


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"rule": "simpson"}, "unknown integration rule 'simpson'"),
        ({"target": 7}, "target class 7 out of range"),
        ({"target": "gold"}, "needs a label"),
        ({"output": "energy"}, "unknown output 'energy'"),
        ({"layers": [9]}, "layers must be within 0..2"),
        ({"dtype": "int8"}, "unknown dtype"),
        ({"steps": "fast"}, "steps must be an integer >= 1 or 'auto'"),
        ({"tol": 0}, "tol must be a number between 0 and 1"),
        ({"preset": "paper", "steps": 8}, "preset 'paper' fixes steps=20"),
    ],
)
def test_bad_arguments_raise_typed_errors(bert, kwargs, message):
    model, tok = bert
    with pytest.raises(InputError, match=message):
        attattr.attribute(model, tok, "the cat", **kwargs)


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_is_refused(bert, text):
    with pytest.raises(InputError, match="text is empty"):
        attattr.attribute(*bert, text)


def test_too_long_input_truncates_with_flag_or_refuses(bert):
    model, tok = bert
    long_text = " ".join(["cat"] * 100)  # the tiny model takes 64 positions
    attr = attattr.attribute(model, tok, long_text, steps=1)
    assert attr.truncated and len(attr.tokens) == 64
    with pytest.raises(InputError, match="more than the model's maximum 64"):
        attattr.attribute(model, tok, long_text, steps=1, truncate=False)


def test_unsupported_architectures_are_named():
    cfg = tf.DebertaConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    model = tf.DebertaForSequenceClassification(cfg).eval()  # DeBERTa v1: no adapter
    with pytest.raises(UnsupportedModelError, match="'deberta'.*not through AttentionInterface"):
        attattr.attribute(model, tiny_tokenizer(), "the cat")


def test_gold_target_and_class_index(bert):
    model, tok = bert
    gold = attattr.attribute(model, tok, "the cat sat", label=0, target="gold", steps=2)
    index = attattr.attribute(model, tok, "the cat sat", target=0, steps=2)
    assert gold.target == index.target == 0 and gold.target_mode == "gold" and index.target_mode == "index"
    torch.testing.assert_close(gold.scores, index.scores)


def test_save_load_round_trip_exactly(bert, tmp_path):
    attr = attattr.attribute(*bert, "the cat sat", "on a mat", steps=3)
    attr.save(tmp_path / "a")
    back = Attribution.load(tmp_path / "a")
    assert torch.equal(back.scores, attr.scores) and torch.equal(back.attentions, attr.attentions)
    assert back.meta() == attr.meta()
    assert back.segment_ids == attr.segment_ids and 1 in attr.segment_ids
    # a single-file path works too
    attr.save(tmp_path / "b.safetensors")
    assert torch.equal(Attribution.load(tmp_path / "b.safetensors").scores, attr.scores)


def test_corrupt_or_truncated_files_raise_result_file_error(bert, tmp_path):
    attr = attattr.attribute(*bert, "the cat sat", steps=2)
    attr.save(tmp_path)
    tensors = tmp_path / "attributions.safetensors"
    data = tensors.read_bytes()
    tensors.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResultFileError, match="corrupt or truncated"):
        Attribution.load(tmp_path)
    attr.save(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(ResultFileError, match="not valid JSON"):
        Attribution.load(tmp_path)
    attr.save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["tokens"] = meta["tokens"][:-1]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ResultFileError, match="does not match"):
        Attribution.load(tmp_path)
    with pytest.raises(ResultFileError, match="not found"):
        Attribution.load(tmp_path / "nowhere")


def test_head_importance_and_top_edges_agree_with_scores(bert):
    attr = attattr.attribute(*bert, "the cat sat on the mat", steps=2)
    imp = attr.head_importance()
    assert imp.shape == (3, 4)
    assert torch.equal(imp[1, 2], attr.scores[1, 2].max())
    edges = attr.top_edges(3)
    assert edges[0].score == pytest.approx(float(attr.scores.max()))
    e = edges[1]
    assert attr.scores[e.layer, e.head, e.query, e.key] == pytest.approx(e.score)
    assert edges[0].score >= edges[1].score >= edges[2].score


@pytest.mark.parametrize(
    "name", ["riemann-right", "riemann-left", "riemann-mid", "trapezoid", "gauss-legendre"]
)
def test_quadrature_rules_integrate_polynomials(name):
    alphas, weights = rule(name, 8)
    exact = {0: 1.0, 1: 0.5}
    for power, value in exact.items():
        assert (weights * alphas**power).sum() == pytest.approx(value, abs=1e-12 if power == 0 else 0.07)
    if name == "gauss-legendre":  # exact up to degree 2m - 1
        assert (weights * alphas**15).sum() == pytest.approx(1 / 16, abs=1e-12)
