"""Bad inputs through the real entry point: each ends in one line and exit 2 (or works, exit 0),
never a traceback, and a refused command writes nothing.

Each case is (argv, exit code, expected text): the text is a substring of the one error line for
exit 2, of stdout for exit 0. Placeholders in braces are paths made by the `paths` fixture.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import build_tiny_model, build_tiny_tokenizer

TEXT = "the film is very good"
NOT_UTF8 = "the film \udcff good"  # what Python makes of argv bytes b"the film \xff good"


def _save_model(path: Path) -> Path:
    model = build_tiny_model("bert", layers=2, heads=2, seed=5)
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    model.save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    return path


def _variant(good: Path, path: Path) -> Path:
    shutil.copytree(good, path)
    return path


def _write_malicious_pickle(path: Path, marker: Path) -> None:
    import pickle

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path.write_bytes(pickle.dumps({"bert.embeddings.word_embeddings.weight": Payload()}))


def _unwritable(root: Path) -> Path | None:
    """A folder where no file can be created: a read-only folder, or /sys when running as root."""
    folder = root / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            (candidate / ".probe").touch()
        except OSError:
            return candidate
        (candidate / ".probe").unlink()
    return None


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    import attattr

    root = tmp_path_factory.mktemp("bad-inputs")
    good = _save_model(root / "model")
    p: dict[str, Path] = {"model": good, "nowhere": root / "no-such-model"}

    p["no_tokenizer"] = _variant(good, root / "no-tokenizer")
    for f in p["no_tokenizer"].iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()
    p["foreign_tokenizer"] = _variant(good, root / "foreign-tokenizer")
    import transformers as tf

    size = build_tiny_tokenizer().vocab_size
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"x{i}" for i in range(size - 5)]
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (p["foreign_tokenizer"] / f).unlink(missing_ok=True)
    tf.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(p["foreign_tokenizer"])

    p["truncated"] = _variant(good, root / "truncated")
    weights = p["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    p["config_list"] = _variant(good, root / "config-list")
    (p["config_list"] / "config.json").write_text('["not", "a", "config"]')
    p["config_types"] = _variant(good, root / "config-types")
    config = json.loads((good / "config.json").read_text())
    (p["config_types"] / "config.json").write_text(json.dumps({**config, "num_attention_heads": "two"}))
    p["config_garbage"] = _variant(good, root / "config-garbage")
    (p["config_garbage"] / "config.json").write_bytes(b"\x00\x9f garbage {")
    p["pickle"] = _variant(good, root / "pickle")
    (p["pickle"] / "model.safetensors").unlink()
    p["pickle_ran"] = root / "pickle-ran"
    _write_malicious_pickle(p["pickle"] / "pytorch_model.bin", p["pickle_ran"])

    p["file"] = root / "a-file.txt"
    p["file"].write_text("not a folder")
    p["unwritable"] = _unwritable(root) or root / "unwritable-not-available"

    # saved attributions: intact, legacy (no checksum), flipped bytes, a mixed pair, wrong types
    loaded = attattr.models.load(good)
    first = attattr.attribute(loaded.model, loaded.tokenizer, "the cat sat", steps=2)
    second = attattr.attribute(loaded.model, loaded.tokenizer, "the dog ran", steps=2)
    for name in ("attr", "attr_legacy", "attr_flipped", "attr_mixed", "attr_types"):
        p[name] = root / name
        first.save(p[name])
    meta = json.loads((p["attr_legacy"] / "meta.json").read_text())
    meta.pop("tensors_sha256", None)
    (p["attr_legacy"] / "meta.json").write_text(json.dumps(meta))
    tensors = p["attr_flipped"] / "attributions.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-3] ^= 0x40  # one bit of the last value
    tensors.write_bytes(bytes(data))
    second.save(root / "second")  # the tensors of another save beside this meta.json: a kill between the two
    shutil.copy(root / "second" / "attributions.safetensors", p["attr_mixed"] / "attributions.safetensors")
    meta = json.loads((p["attr_types"] / "meta.json").read_text())
    meta["steps"] = "twenty"
    (p["attr_types"] / "meta.json").write_text(json.dumps(meta))
    return p


def _run_case(run_cli, paths, argv):
    args = [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]
    return run_cli(*args)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


MODEL = ["--model", "{model}", "--steps", "2"]
CASES = [
    # case 1: a model directory without tokenizer files; a tokenizer that is not the model's
    (["explain", TEXT, "--model", "{no_tokenizer}"], 2, "has 5 tokens but the model's embeddings have"),
    (["tree", TEXT, "--model", "{no_tokenizer}"], 2, "no tokenizer files"),
    (
        ["explain", TEXT, "--model", "{no_tokenizer}", "--tokenizer", "{model}", "--steps", "2"],
        0,
        "prediction:",
    ),
    (["tree", TEXT, "--model", "{no_tokenizer}", "--tokenizer", "{model}", "--steps", "2"], 0, "tree of"),
    (["explain", TEXT, "--model", "{foreign_tokenizer}"], 2, "turns ordinary words into unknown tokens"),
    (["explain", TEXT, "--model", "{model}", "--tokenizer", "{foreign_tokenizer}"], 2, "unknown tokens"),
    (["explain", TEXT, "--model", "{model}", "--tokenizer", "{nowhere}"], 2, "no such directory"),
    # case 5: broken model files, text that is not UTF-8
    (["explain", TEXT, "--model", "{truncated}"], 2, "corrupt or truncated"),
    (["explain", TEXT, "--model", "{config_list}"], 2, "is not a model configuration (a JSON list)"),
    (["explain", TEXT, "--model", "{config_types}"], 2, "num_attention_heads"),
    (["explain", TEXT, "--model", "{config_garbage}"], 2, "config.json is not valid JSON"),
    (["explain", TEXT, "--model", "{pickle}"], 2, "never runs code from a pickle"),
    (["tree", TEXT, "--model", "{pickle}"], 2, "never runs code from a pickle"),
    (["explain", NOT_UTF8, *MODEL], 2, "text is not valid UTF-8 (byte 0xff at position 9)"),
    (["explain", TEXT, "--pair", NOT_UTF8, *MODEL], 2, "--pair is not valid UTF-8"),
    (["tree", NOT_UTF8, *MODEL], 2, "text is not valid UTF-8"),
    (["tree", TEXT, "--pair", NOT_UTF8, *MODEL], 2, "--pair is not valid UTF-8"),
    # case 6: --out that cannot be written, refused before the model is even looked for
    (["explain", TEXT, "--model", "{nowhere}", "--out", "{file}"], 2, "is a file, not a folder"),
    (
        ["explain", TEXT, "--model", "{nowhere}", "--out", "{file}/sub"],
        2,
        "is a file, so no folder can be made",
    ),
    (["explain", TEXT, "--model", "{nowhere}", "--out", "{unwritable}"], 2, "is not writable"),
    (["explain", TEXT, "--model", "{nowhere}", "--out", "{unwritable}/new"], 2, "is not writable"),
    (["tree", TEXT, "--model", "{nowhere}", "--out", "{file}"], 2, "is a file, not a folder"),
    (["tree", TEXT, "--model", "{nowhere}", "--out", "{unwritable}/new"], 2, "is not writable"),
    (["tree", "--from", "{attr}", "--out", "{file}"], 2, "is a file, not a folder"),
    # case 7: a saved attribution is verified on load
    (["tree", "--from", "{attr}"], 0, "tree of"),
    (["tree", "--from", "{attr_legacy}"], 0, "tree of"),  # saved before the checksum existed
    (["tree", "--from", "{attr_flipped}"], 2, "does not match the checksum in meta.json"),
    (["tree", "--from", "{attr_mixed}"], 2, "does not match the checksum in meta.json"),
    (["tree", "--from", "{attr_types}"], 2, "field 'steps' must be an integer, got \"twenty\""),
    # options checked before the model is loaded
    (["explain", TEXT, "--model", "{nowhere}", "--steps", "0"], 2, "steps must be an integer >= 1"),
    (["explain", TEXT, "--model", "{nowhere}", "--rule", "simpson"], 2, "unknown integration rule 'simpson'"),
    (
        ["tree", TEXT, "--model", "{nowhere}", "--steps", "0"],
        2,
        "--steps must be an integer >= 1 or 'auto', got '0'",
    ),
]


@pytest.mark.parametrize(("argv", "code", "expected"), CASES, ids=[f"{a[0]}: {e}" for a, _, e in CASES])
def test_bad_input(run_cli, paths, argv, code, expected):
    if any("{unwritable}" in a for a in argv) and not paths["unwritable"].exists():
        pytest.skip("no folder here refuses new files (root without /sys)")
    before = _snapshot(paths["model"].parent)
    got, out, err = _run_case(run_cli, paths, argv)
    assert "Traceback" not in err and "Traceback" not in out
    if code == 0:
        assert got == 0, err
        assert expected in out
        return
    assert got == code, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert "warning" not in err.lower()
    assert _snapshot(paths["model"].parent) == before  # a refused command writes nothing


def test_the_refused_pickle_never_ran(run_cli, paths):
    code, _, err = _run_case(run_cli, paths, ["explain", TEXT, "--model", "{pickle}"])
    assert code == 2 and "pickle" in err and not paths["pickle_ran"].exists()


def test_a_refused_out_folder_is_not_created(run_cli, paths, tmp_path):
    out = tmp_path / "new" / "out"
    code, _, err = run_cli("explain", TEXT, "--model", paths["no_tokenizer"], "--out", out)
    assert code == 2 and "tokenizer" in err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["explain", "tree"])
def test_ctrl_c_says_what_is_kept(run_cli, paths, monkeypatch, command):
    from attattr.core import engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "attribute", interrupted)
    code, _, err = run_cli(command, TEXT, "--model", paths["model"], "--steps", "2")
    assert code == 130
    assert err.strip() == "interrupted; results written so far are kept"


def test_outputs_follow_the_umask(run_cli, paths, tmp_path):
    """Every file of explain --out and tree --out: written through one writer, mode 0666 & ~umask."""
    mask = os.umask(0o027)
    try:
        for command in ("explain", "tree"):
            out = tmp_path / command
            code, _, err = run_cli(command, TEXT, "--model", paths["model"], "--steps", "2", "--out", out)
            assert code == 0, err
            written = [p for p in out.rglob("*") if p.is_file()]
            assert len(written) >= 6
            assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {
                p.name: oct(0o640) for p in written
            }
            assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    finally:
        os.umask(mask)
