"""A saved attribution is a unit: meta.json is written last and carries the tensors' SHA-256, and
`Attribution.load` refuses a mixed pair, flipped bytes and metadata of the wrong types in one line."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields

import pytest
import torch

from attattr.core import files, result
from attattr.core.errors import ResultFileError
from attattr.core.result import Attribution
from tests.unit.test_report import make_attribution


def test_meta_is_written_last_and_carries_the_checksum(tmp_path, monkeypatch):
    order = []
    for name in ("write_bytes", "write_json", "write_text"):
        original = getattr(files, name)

        def spy(path, *args, _original=original, **kwargs):
            order.append(path.name)
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(files, name, spy)
    make_attribution().save(tmp_path)
    assert list(dict.fromkeys(order)) == ["attributions.safetensors", "meta.json"]
    meta = json.loads((tmp_path / "meta.json").read_text())
    digest = hashlib.sha256((tmp_path / "attributions.safetensors").read_bytes()).hexdigest()
    assert meta["tensors_sha256"] == digest


def test_a_save_killed_between_the_two_files_is_refused(tmp_path, monkeypatch):
    first, second = make_attribution(seed=1), make_attribution(seed=2)  # same shapes, other numbers
    first.save(tmp_path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        second.save(tmp_path)  # the new tensors are in place, the old meta.json is not replaced
    monkeypatch.undo()
    with pytest.raises(ResultFileError, match="does not match the checksum in meta.json"):
        Attribution.load(tmp_path)
    second.save(tmp_path)  # saving again repairs the pair
    assert torch.equal(Attribution.load(tmp_path).scores, second.scores)


def test_flipped_bytes_are_refused(tmp_path):
    make_attribution().save(tmp_path)
    tensors = tmp_path / "attributions.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-5] ^= 0x01  # the lowest bit of one float: the file still parses
    tensors.write_bytes(bytes(data))
    with pytest.raises(ResultFileError, match="changed after saving"):
        Attribution.load(tmp_path)


def test_files_saved_without_a_checksum_still_load(tmp_path):
    a = make_attribution()
    a.save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    del meta["tensors_sha256"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    back = Attribution.load(tmp_path)
    assert torch.equal(back.scores, a.scores) and back.meta() == a.meta()


def test_every_metadata_field_has_a_type_check():
    assert set(result._META_TYPES) == {f.name for f in fields(Attribution)} - {"scores", "attentions"}


WRONG_TYPES = [
    ("steps", "20", "an integer"),
    ("steps", 2.5, "an integer"),
    ("target", True, "an integer"),
    ("tokens", "[CLS] the [SEP]", "a list of strings"),
    ("tokens", [1, 2], "a list of strings"),
    ("token_ids", ["1"], "a list of integers"),
    ("special_mask", [0, 1], "a list of true/false"),
    ("layers", None, "a list of integers"),
    ("output_value", "0.9", "a number"),
    ("baseline_values", [None], "a list of numbers"),
    ("probabilities", {"a": 1}, "a list of numbers"),
    ("rule", 3, "a string"),
    ("text_pair", 5, "a string or null"),
    ("label", "1", "an integer or null"),
    ("label_names", "negative,positive", "a list of strings or null"),
    ("example_id", [1], "a string, an integer or null"),
    ("truncated", "no", "true or false"),
    ("versions", ["0.1"], "an object of strings"),
]


@pytest.mark.parametrize(("field", "value", "expected"), WRONG_TYPES)
def test_metadata_of_the_wrong_type_is_one_result_file_error(tmp_path, field, value, expected):
    make_attribution().save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta[field] = value
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ResultFileError) as info:
        Attribution.load(tmp_path)
    message = str(info.value)
    assert f"field {field!r} must be {expected}, got {json.dumps(value)}" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m.update(token_ids=m["token_ids"][:-1]), "token_ids has 11 entries for 12 tokens"),
        (lambda m: m.update(score_sums=m["score_sums"][:1]), "score_sums has 1 entries for 3 layers"),
    ],
)
def test_per_token_and_per_layer_lists_must_fit(tmp_path, edit, expected):
    make_attribution().save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    edit(meta)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ResultFileError, match=expected):
        Attribution.load(tmp_path)


def test_meta_that_is_not_an_object(tmp_path):
    make_attribution().save(tmp_path)
    (tmp_path / "meta.json").write_text("[1, 2, 3]")
    with pytest.raises(ResultFileError, match=r"not an attattr attribution \(a JSON list\)"):
        Attribution.load(tmp_path)
