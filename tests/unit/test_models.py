"""Loading models (recipe names, local directories, hub ids), recipes and the cache layout."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from attattr import models
from attattr.core.errors import ModelError, UnsupportedModelError
from attattr.models import RECIPES, attattr_home, is_built, list_recipes, load
from tests.conftest import TINY_ARCHITECTURES, build_tiny_model, build_tiny_tokenizer


def test_home_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTATTR_HOME", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert attattr_home() == tmp_path / "a"
    monkeypatch.delenv("ATTATTR_HOME")
    assert attattr_home() == tmp_path / "xdg" / "attattr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert attattr_home() == tmp_path / "h" / ".cache" / "attattr"


def test_recipes():
    from attattr.data import DATASETS

    assert list(RECIPES)[:3] == ["minilm-rt", "minilm-imdb", "minilm-bbc"] and "mpnet-rt" in RECIPES
    assert models.DEFAULT_RECIPE == "minilm-rt"
    assert {r.dataset for r in RECIPES.values()} == set(DATASETS)
    for r in RECIPES.values():
        # the 12-layer MPNet recipe is a one-time build of about half an hour on 2 cores
        assert r.expected_minutes <= (30 if r.base == "mpnet" else 10) and 16 <= r.max_length <= 512
    rt = RECIPES["minilm-rt"]
    assert rt.num_steps(6530) == -(-6530 // rt.batch_size) * rt.epochs
    imdb = RECIPES["minilm-imdb"]
    assert imdb.num_steps(23000) == -(-imdb.train_examples // imdb.batch_size) * imdb.epochs
    with pytest.raises(
        ModelError, match="unknown recipe 'bert'; recipes: minilm-rt, minilm-imdb, minilm-bbc"
    ):
        models.get_recipe("bert")


def test_base_encoder_is_the_shipped_minilm():
    config = json.loads((models.base_encoder_dir() / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]
    assert (config["num_hidden_layers"], config["num_attention_heads"]) == (6, 12)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_load_local_directory_round_trip(arch, tmp_path, save_tiny_model, make_tiny_model):
    path = save_tiny_model(tmp_path / arch, arch, label_names=["neg", "neu", "pos"])
    loaded = load(path)
    assert loaded.model_id == str(path.resolve()) and loaded.path == path
    assert loaded.label_names == ["neg", "neu", "pos"] and loaded.num_labels == 3
    assert loaded.recipe is None and loaded.manifest is None
    assert not loaded.model.training
    # the same weights as the model that was saved: identical logits
    original = make_tiny_model(arch, num_labels=3)
    enc = build_tiny_tokenizer()(["the cat sat on the mat", "a dog"], padding=True, return_tensors="pt")
    if arch in ("distilbert", "modernbert"):  # neither takes token_type_ids
        enc.pop("token_type_ids")
    with torch.no_grad():
        expected = original(**enc).logits
        got = loaded.model(**enc).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # the tiny models' position embeddings (RoBERTa and XLM-R spend 2 on their position offset)
    assert loaded.max_length == (62 if arch in ("roberta", "xlm-roberta") else 64)
    assert loaded.tokenizer.convert_tokens_to_ids("cat") == build_tiny_tokenizer().convert_tokens_to_ids(
        "cat"
    )


def test_raw_encoder_without_head_is_refused():
    with pytest.raises(UnsupportedModelError, match="BertModel without a sequence-classification head"):
        load(models.base_encoder_dir())


def test_directory_without_weights(tmp_path, save_tiny_model):
    path = save_tiny_model(tmp_path / "m")
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weights"):
        load(path)


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load(tmp_path / "empty")


def test_a_file_is_not_a_model(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")
    with pytest.raises(ModelError, match="not a file"):
        load(path)


def test_missing_classifier_weights(tmp_path, save_tiny_model):
    path = save_tiny_model(tmp_path / "m")
    weights = load_file(path / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("classifier")}, path / "model.safetensors"
    )
    with pytest.raises(UnsupportedModelError, match="no trained sequence-classification head"):
        load(path)


def test_architecture_off_the_attention_interface(tmp_path):
    path = tmp_path / "deberta"
    path.mkdir()
    config = {"model_type": "deberta", "architectures": ["DebertaForSequenceClassification"]}
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"not read: refused before loading")
    with pytest.raises(UnsupportedModelError, match="unsupported architecture 'deberta'"):
        load(path)


def test_hub_id_fails_fast_without_network(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    started = time.perf_counter()
    with pytest.raises(ModelError) as info:
        load("textattack/no-such-model-for-attattr-tests")
    assert time.perf_counter() - started < 15
    message = str(info.value)
    assert "cannot load 'textattack/no-such-model-for-attattr-tests'" in message
    assert "not a recipe" in message and "not a local directory" in message and "not reachable" in message


def test_path_like_name_that_does_not_exist(tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        load(str(tmp_path / "a" / "b"))
    with pytest.raises(ModelError, match="no such directory"):
        load("./not-here")


def _fake_build(directory: Path, accuracy: float = 0.8, complete: bool = True, steps: int = 100) -> None:
    """A tiny classifier standing in for a built recipe (with a manifest like train_recipe writes)."""
    model = build_tiny_model("bert")
    model.config.id2label = {0: "negative", 1: "positive"}
    model.save_pretrained(directory)
    build_tiny_tokenizer().save_pretrained(directory)
    manifest = {"recipe": directory.name, "dev_accuracy": accuracy, "training_seconds": 61.0, "steps": steps}
    if complete:
        manifest["complete"] = True
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_recipe_built_state_needs_weights_and_a_complete_manifest(attattr_home):
    directory = attattr_home / "models" / "minilm-rt"
    assert not is_built("minilm-rt")
    _fake_build(directory, complete=False)
    assert not is_built("minilm-rt")  # e.g. copied by hand, or an old format
    _fake_build(directory)
    assert is_built("minilm-rt")
    (directory / "model.safetensors").unlink()
    assert not is_built("minilm-rt")


def test_load_built_recipe(attattr_home):
    _fake_build(attattr_home / "models" / "minilm-bbc", accuracy=0.97)
    loaded = load("minilm-bbc")
    assert loaded.model_id == "minilm-bbc" and loaded.recipe is RECIPES["minilm-bbc"]
    assert loaded.max_length == RECIPES["minilm-bbc"].max_length
    assert loaded.manifest["dev_accuracy"] == 0.97 and not loaded.model.training
    rows = {r["name"]: r for r in list_recipes()}
    assert rows["minilm-bbc"]["built"] and rows["minilm-bbc"]["dev_accuracy"] == 0.97
    assert not rows["minilm-rt"]["built"] and rows["minilm-rt"]["dev_accuracy"] is None


def test_recipe_directory_loaded_by_path_keeps_its_input_length(attattr_home):
    directory = attattr_home / "models" / "minilm-bbc"
    _fake_build(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["settings"] = {"max_length": 40}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    loaded = load(directory)
    assert loaded.model_id == str(directory.resolve()) and loaded.recipe is None
    assert loaded.max_length == 40 and loaded.manifest["settings"]["max_length"] == 40


def test_unbuilt_recipe_without_build():
    with pytest.raises(
        ModelError, match="recipe 'minilm-imdb' is not built; build it with: attattr train minilm-imdb"
    ):
        load("minilm-imdb", build=False)


def test_unbuilt_recipe_is_built_first_and_says_so(attattr_home, monkeypatch, capsys):
    from attattr import training

    calls = []

    def fake_train(recipe, *, home=None, progress=True, **kw):
        calls.append(recipe.name)
        _fake_build((home or attattr_home) / "models" / recipe.name)
        return {}

    monkeypatch.setattr(training, "train_recipe", fake_train)
    loaded = load("minilm-rt")
    assert calls == ["minilm-rt"] and loaded.model_id == "minilm-rt"
    err = capsys.readouterr().err
    assert "recipe 'minilm-rt' is not built yet: fine-tuning it now" in err
    assert f"about {RECIPES['minilm-rt'].expected_minutes:g} minutes" in err
    load("minilm-rt")  # now built: no second build
    assert calls == ["minilm-rt"]


def test_cli_models_lists_built_state(run_cli, attattr_home):
    _fake_build(attattr_home / "models" / "minilm-rt", accuracy=0.812, steps=30)
    code, out, _ = run_cli("models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)["recipes"]}
    assert rows["minilm-rt"]["built"] and rows["minilm-rt"]["dev_accuracy"] == 0.812
    assert not rows["minilm-imdb"]["built"]
    code, out, _ = run_cli("models")
    assert code == 0 and "81.2%" in out and "minilm-imdb" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "nope"], "unknown recipe 'nope'; recipes: minilm-rt, minilm-imdb, minilm-bbc"),
        (["train", "minilm-rt", "--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    ],
)
def test_cli_train_errors_are_one_line(run_cli, args, message):
    code, out, err = run_cli(*args)
    assert code == 2
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err
    assert message in " ".join(err.split())


def test_cli_train_keeps_a_built_recipe(run_cli, attattr_home):
    _fake_build(attattr_home / "models" / "minilm-bbc", accuracy=0.96)
    code, out, _ = run_cli("train", "minilm-bbc", "--json")
    result = json.loads(out)
    assert code == 0 and result["trained"] is False and result["manifest"]["dev_accuracy"] == 0.96


# ---- a model directory must carry a tokenizer that fits it; broken files end in one ModelError ----
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _strip_tokenizer(path: Path) -> Path:
    for name in TOKENIZER_FILES:
        (path / name).unlink(missing_ok=True)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    return path


def test_directory_without_tokenizer_files_is_refused(tmp_path, save_tiny_model):
    # transformers builds a stub tokenizer of 5 specials from config.json alone: every word is [UNK]
    path = _strip_tokenizer(save_tiny_model(tmp_path / "m"))
    rows = build_tiny_tokenizer().vocab_size
    with pytest.raises(ModelError) as info:
        load(path)
    message = str(info.value)
    assert f"has 5 tokens but the model's embeddings have {rows}" in message
    assert "no tokenizer files" in message and "--tokenizer" in message


def test_a_named_tokenizer_stands_in_for_missing_files(tmp_path, save_tiny_model):
    path = _strip_tokenizer(save_tiny_model(tmp_path / "m"))
    own = save_tiny_model(tmp_path / "with-tokenizer")
    loaded = load(path, tokenizer=own)
    assert len(loaded.tokenizer) == build_tiny_tokenizer().vocab_size
    assert loaded.tokenizer("the cat")["input_ids"] == build_tiny_tokenizer()("the cat")["input_ids"]
    with pytest.raises(ModelError, match="tokenizer .*: no such directory"):
        load(path, tokenizer=tmp_path / "nowhere")


def test_a_tokenizer_that_makes_ordinary_words_unknown_is_refused(tmp_path, save_tiny_model):
    import transformers as tf

    path = save_tiny_model(tmp_path / "m")
    # as many tokens as the model's embeddings, none of them English words or letters
    size = build_tiny_tokenizer().vocab_size
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"x{i}" for i in range(size - 5)]
    foreign = tmp_path / "foreign"
    tf.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(foreign)
    with pytest.raises(ModelError, match=r"turns ordinary words into unknown tokens \(\d+ of \d+ tokens"):
        load(path, tokenizer=foreign)


def test_truncated_weights_are_a_model_error(tmp_path, save_tiny_model):
    path = save_tiny_model(tmp_path / "m")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load(path)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('["a list"]', "is not a model configuration (a JSON list)"),
        ("{not json", "is not valid JSON"),
        (
            '{"model_type": "bert", "architectures": ["BertForSequenceClassification"], "hidden_size": "big"}',
            "corrupt",
        ),
    ],
)
def test_garbage_config_is_a_model_error(tmp_path, save_tiny_model, config, message):
    path = save_tiny_model(tmp_path / "m")
    (path / "config.json").write_text(config)
    with pytest.raises(ModelError, match=re.escape(message)):
        load(path)


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path, save_tiny_model, recwarn):
    path = save_tiny_model(tmp_path / "m")
    (path / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    write_malicious_pickle(path / "pytorch_model.bin", marker)
    with pytest.raises(ModelError, match="never runs code from a pickle"):
        load(path)
    assert not marker.exists()
    assert not [w for w in recwarn if "pickle" in str(w.message)]  # one line, no warning before it


def write_malicious_pickle(path: Path, marker: Path) -> None:
    """A pickle that would create `marker` if anything unpickled it with the full unpickler."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path.write_bytes(pickle.dumps({"bert.embeddings.word_embeddings.weight": Payload()}))
