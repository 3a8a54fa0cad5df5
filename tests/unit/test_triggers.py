"""Trigger mining and the attack (docs/method.md §4) on a tiny in-memory model and tokenizer."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest
import torch
import transformers as tf

from attattr.analyses import triggers as T
from attattr.core.errors import InputError, ResultFileError
from attattr.core.result import Attribution

WORDS = "the a cat dog sat ran on mat with and down again of film good bad very not is it".split()
VOCAB = list(
    dict.fromkeys(
        [
            "[PAD]",
            "[UNK]",
            "[CLS]",
            "[SEP]",
            "[MASK]",
            "[unused0]",
            "[unused1]",
            *WORDS,
            *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"],
            *"abcdefghijklmnopqrstuvwxyz",
            *".,!?'",
        ]
    )
)
MAX_POS = 64


@pytest.fixture(scope="module")
def tok():
    return tf.BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = tf.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=MAX_POS,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    m = tf.BertForSequenceClassification(cfg).eval()
    m.set_attn_implementation("eager")
    return m


@dataclass
class Ex:
    id: str
    text: str
    text_pair: str | None = None
    label: int | None = None


class DS(list):
    name = "tiny"
    split = "train"
    label_names = ["neg", "pos"]


def make_attribution(tok, text, pair=None, *, layers=(0, 1, 2), heads=4, predicted=1, seed=0):
    enc = tok(text, pair)
    ids = list(enc["input_ids"])
    n = len(ids)
    tokens = tok.convert_ids_to_tokens(ids)
    seq = enc.sequence_ids()
    special = [i in set(tok.all_special_ids) for i in ids]  # as the engine: [UNK] counts as special
    segs = [0 if (s is None and i <= tokens.index("[SEP]")) or s == 0 else 1 for i, s in enumerate(seq)]
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(len(layers), heads, n, n, generator=g) - 0.5) * 0.02  # |x| <= 0.01
    return Attribution(
        scores=scores,
        attentions=torch.full((len(layers), heads, n, n), 1.0 / n),
        tokens=tokens,
        token_ids=ids,
        segment_ids=segs,
        special_mask=special,
        layers=list(layers),
        target=predicted,
        target_mode="predicted",
        output="prob",
        output_value=0.9,
        baseline_values=[0.5] * len(layers),
        score_sums=[0.0] * len(layers),
        probabilities=[0.1, 0.9],
        predicted=predicted,
        rule="riemann-right",
        steps=20,
        model_id="tiny",
        text=text,
        text_pair=pair,
        label=0,
        label_names=["neg", "pos"],
        example_id="ex7",
    )


def pattern_with(tok, text, pair, entries, *, predicted=1):
    """A pattern whose head (layer index 1, head 2) holds `entries` [(i, j, score)], largest first."""
    attr = make_attribution(tok, text, pair, predicted=predicted)
    for i, j, s in entries:
        attr.scores[1, 2, i, j] = s
    return T.mine_pattern(attr, tok)


def place(words, placed):
    """Independent insertion: `placed` = [(gap, word)] into the word list `words`."""
    out = []
    for gap in range(len(words) + 1):
        out += [w for g, w in placed if g == gap]
        if gap < len(words):
            out.append(words[gap])
    return out


def tokens_after(tok, inserted):
    return tok.convert_ids_to_tokens(tok(inserted.text, inserted.text_pair)["input_ids"])


# ---- mining ------------------------------------------------------------------------------
@pytest.mark.parametrize("use_tokenizer", [True, False])
def test_mine_pattern_finds_planted_maximum(tok, use_tokenizer):
    text = "the cats sat on the mat with a dog"
    attr = make_attribution(tok, text, layers=(0, 2, 5))
    toks = attr.tokens
    assert toks[2:4] == ["cat", "##s"]
    attr.scores[1, 3, 3, 7] = 0.9  # global maximum: layer 2 (index 1), head 3, ##s -> mat
    attr.scores[1, 3, 9, 0] = 0.5  # second in that head: a -> [CLS]
    attr.scores[0, 0, 4, 4] = 0.7  # larger than 0.5 but in another head: must not be picked
    p = T.mine_pattern(attr, tok if use_tokenizer else None)
    assert (p.layer, p.head) == (2, 3)
    assert [(q.query, q.key) for q in p.pairs] == [(3, 7), (9, 0)]
    assert [q.score for q in p.pairs] == pytest.approx([0.9, 0.5])
    assert p.score == pytest.approx(1.4)
    assert p.segment_boundary == toks.index("[SEP]") == len(toks) - 1
    assert (p.predicted, p.predicted_name, p.label, p.example_id) == (1, "pos", 0, "ex7")
    s = p.token(3)
    assert (s.piece, s.word, s.special, s.segment) == ("##s", "cats", False, 0)
    # words of the segment: the cats sat on the mat with a dog -> "cats" is word 1 of 9
    assert (s.word_index, s.segment_words) == (1, 9)
    assert p.token(7).word == "mat" and p.token(7).word_index == 5
    assert p.token(0).special and p.token(0).piece == "[CLS]"
    assert p.token(3).relative == pytest.approx(1 / 8)


def test_mine_pattern_pairs_segments(tok):
    attr = make_attribution(tok, "the dog ran", "a cat sat down")
    sep = attr.tokens.index("[SEP]")
    attr.scores[2, 1, sep + 2, 2] = 0.3  # cat (segment B) -> dog (segment A)
    p = T.mine_pattern(attr, tok)
    assert p.segment_boundary == sep == 4
    cat, dog = p.token(sep + 2), p.token(2)
    assert (cat.word, cat.segment, cat.word_index, cat.segment_words) == ("cat", 1, 1, 4)
    assert (dog.word, dog.segment, dog.word_index, dog.segment_words) == ("dog", 0, 1, 3)


def test_unknown_word_is_not_a_separator_nor_inserted(tok):
    attr = make_attribution(tok, "the dog % sat", "a cat")
    assert attr.tokens[3] == "[UNK]" and attr.special_mask[3]
    attr.scores[0, 1, 3, 2] = 0.8  # [UNK] -> dog
    attr.scores[0, 1, 4, 3] = 0.7  # sat -> [UNK]
    p = T.mine_pattern(attr, tok)
    assert p.segment_boundary == 5 == attr.tokens.index("[SEP]")
    assert [w.word for w in T.trigger_tokens(p)] == ["dog", "sat"]
    assert p.token(4).word_index == 3 and p.token(4).segment_words == 4  # "%" is a word of segment A
    attr_plain = make_attribution(tok, "the dog % sat", "a cat")
    attr_plain.scores.copy_(attr.scores)
    q = T.mine_pattern(attr_plain, None)  # rebuilt from pieces: same boundary and words
    assert q.segment_boundary == 5 and [w.word for w in T.trigger_tokens(q)] == ["dog", "sat"]
    assert (q.token(4).word_index, q.token(4).segment_words) == (3, 4)


def test_mine_pattern_nothing_to_mine(tok):
    attr = make_attribution(tok, "the dog")
    attr.scores[0, 0, 0, 0] = float("nan")
    assert T.mine_pattern(attr, tok) is None


# ---- trigger words: the top-2 rule, special tokens -----------------------------------------
def test_top2_rule_boundary(tok):
    text = "the dog sat on the mat with a cat"
    both = pattern_with(tok, text, None, [(2, 3, 1.0), (6, 9, 0.2)])  # 0.2 >= 0.2 * 1.0
    one = pattern_with(tok, text, None, [(2, 3, 1.0), (6, 9, 0.19)])
    assert [w.word for w in T.trigger_tokens(both)] == ["dog", "sat", "mat", "cat"]
    assert [w.word for w in T.trigger_tokens(one)] == ["dog", "sat"]
    # a different ratio moves the boundary
    assert [w.word for w in T.trigger_tokens(one, ratio=0.1)] == ["dog", "sat", "mat", "cat"]


def test_special_tokens_never_inserted(tok):
    text = "the dog sat on the mat"
    sep = len(tok(text)["input_ids"]) - 1
    p = pattern_with(tok, text, None, [(0, 2, 1.0), (2, sep, 0.9)])  # [CLS] -> dog, dog -> [SEP]
    words = T.trigger_tokens(p)
    assert [w.word for w in words] == ["dog"]  # specials dropped, dog once
    ins = T.insert_trigger(tok, "a cat ran down", p, MAX_POS)
    assert tokens_after(tok, ins).count("[SEP]") == 1 and tokens_after(tok, ins).count("[CLS]") == 1
    only_special = pattern_with(tok, text, None, [(0, sep, 1.0), (sep, 0, 0.9)])
    assert T.trigger_tokens(only_special) == []
    with pytest.raises(InputError, match="nothing to insert"):
        T.insert_trigger(tok, "a cat", only_special, MAX_POS)
    with pytest.raises(InputError, match="special token"):
        T.insert_words(tok, "a cat", None, [T.TriggerWord("[SEP]", 0, 0.0, 1, 1)], MAX_POS)
    # the control vocabulary has no specials, unused slots or continuation pieces
    vocab = T.control_vocabulary(tok)
    assert vocab and not {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]"} & set(vocab)
    assert not any(w.startswith("##") for w in vocab)
    assert set(vocab) == set(WORDS) | set("abcdefghijklmnopqrstuvwxyz") | set(".,!?'")


def test_word_pieces_become_whole_words(tok):
    text = "the cats sat"
    # both picked positions are pieces of "cats": it is inserted once, as the whole word
    p = pattern_with(tok, text, None, [(2, 3, 1.0), (3, 2, 0.5)])
    words = T.trigger_tokens(p, tokenizer=tok)
    assert [(w.word, w.pieces) for w in words] == [("cats", 2)]
    ins = T.insert_trigger(tok, "a dog ran on the mat", p, MAX_POS)
    assert tokens_after(tok, ins)[1:-1] == ["a", "dog", "ran", "cat", "##s", "on", "the", "mat"]


# ---- insertion positions -------------------------------------------------------------------
TARGET = "a dog ran down the mat again"  # 7 words


@pytest.mark.parametrize(
    "source_pos, expected",
    [
        # source "the film sat on the mat with a cat": 9 words; positions are +1 for [CLS]
        (1, "the a dog ran down the mat again"),  # word 0 -> start
        (4, "a dog ran on down the mat again"),  # word 3 of 0..8 -> 3/8 * 7 = 2.6 -> gap 3
        (9, "a dog ran down the mat again cat"),  # word 8 (last) -> end
    ],
)
def test_insert_single_start_middle_end(tok, source_pos, expected):
    source = "the film sat on the mat with a cat"
    p = pattern_with(tok, source, None, [(source_pos, source_pos, 1.0)])
    ins = T.insert_trigger(tok, TARGET, p, MAX_POS)
    rel = (source_pos - 1) / 8
    gap = int(rel * 7 + 0.5)
    target_words = TARGET.split()
    word = source.split()[source_pos - 1]
    assert ins.text.split() == target_words[:gap] + [word] + target_words[gap:]
    assert ins.text == expected
    assert ins.gaps == [(0, gap)] and ins.text_pair is None and not ins.truncated
    assert ins.num_tokens == len(target_words) + 3


@pytest.mark.parametrize("which", ["start", "middle", "end"])
def test_insert_pairs_in_same_segment(tok, which):
    source_a, source_b = "the film sat", "a cat ran on the mat"  # B: 6 words
    sep = 4
    b_pos = {"start": 0, "middle": 3, "end": 5}[which]
    p = pattern_with(tok, source_a, source_b, [(sep + 1 + b_pos, 2, 1.0)])  # B word -> "film" (A, 1 of 3)
    target_a, target_b = "it is very good again", "not bad"  # 5 words, 2 words
    ins = T.insert_trigger(tok, Ex("t", target_a, target_b), p, MAX_POS)
    b_word = source_b.split()[b_pos]
    a_gap = int(0.5 * 5 + 0.5)  # "film" is word 1 of 3 -> relative 0.5 -> gap 3 of 5
    b_gap = int(b_pos / 5 * 2 + 0.5)
    assert ins.text.split() == target_a.split()[:a_gap] + ["film"] + target_a.split()[a_gap:]
    assert ins.text_pair.split() == target_b.split()[:b_gap] + [b_word] + target_b.split()[b_gap:]
    enc = tok(ins.text, ins.text_pair)
    toks = tok.convert_ids_to_tokens(enc["input_ids"])
    assert toks.count("[SEP]") == 2
    # each inserted word sits in the segment it came from (token_type_ids)
    assert enc["token_type_ids"][toks.index("film")] == 0
    b_index = [i for i, t in enumerate(toks) if t == b_word and enc["token_type_ids"][i] == 1]
    assert len(b_index) == 1
    # a pair-segment word goes into the only segment when the target has no pair text
    single = T.insert_trigger(tok, "it is very good again", p, MAX_POS)
    assert single.text_pair is None and b_word in single.text.split() and "film" in single.text.split()


def test_insertion_never_exceeds_max_length(tok):
    long_a = " ".join(["the dog ran"] * 20)  # 60 tokens of its own
    long_b = " ".join(["a cat"] * 10)  # 20
    source = "the film sat on the mat with a very bad cat"
    last = len(source.split())
    p = pattern_with(tok, source, None, [(last, 1, 1.0), (last - 1, 2, 0.9)])  # cat, the, bad, film
    words = [w.word for w in T.trigger_tokens(p)]
    assert words == ["the", "film", "bad", "cat"]
    for max_length in (64, 20, 12):
        ins = T.insert_trigger(tok, (long_a, long_b), p, max_length)
        enc = tok(ins.text, ins.text_pair)
        assert len(enc["input_ids"]) <= max_length and ins.num_tokens == len(enc["input_ids"])
        assert ins.truncated
        # the trigger survives in full; the example's own tokens were cut (both segments, whole words)
        out = ins.text.split()
        own = len(out) - 4
        rel = [0.0, 0.1, 0.9, 1.0]
        expected = place(
            long_a.split()[:own], [(int(r * own + 0.5), w) for r, w in zip(rel, words, strict=True)]
        )
        assert out == expected and own < 60
        assert ins.text_pair and ins.text_pair.split() == long_b.split()[: len(ins.text_pair.split())]
    with pytest.raises(InputError, match="no room"):
        T.insert_trigger(tok, (long_a, long_b), p, 6)


# ---- pattern selection ---------------------------------------------------------------------
def test_score_threshold_and_top(tok):
    text = "the dog sat on the mat with a cat"
    ps = [
        # scores exact in float32; min_score 0.5
        pattern_with(tok, text, None, [(2, 3, 0.25), (4, 5, 0.25)], predicted=0),  # 0.5: kept
        pattern_with(tok, text, None, [(2, 6, 0.25), (4, 5, 0.2421875)], predicted=0),  # below
        pattern_with(tok, text, None, [(6, 9, 1.0), (4, 5, 0.5)], predicted=1),
        pattern_with(tok, text, None, [(7, 9, 0.75), (4, 5, 0.5)], predicted=1),
        pattern_with(tok, text, None, [(8, 9, 0.625), (4, 5, 0.5)], predicted=1),
    ]
    chosen = T.select_patterns(ps, top=2, min_score=0.5)
    assert [(rank, p.predicted) for rank, p in chosen] == [(3, 1), (4, 1), (1, 0)]
    assert [rank for rank, _ in T.select_patterns(ps, top=5, min_score=0.5)] == [3, 4, 5, 1]
    with pytest.raises(InputError, match="larger than the number of patterns"):
        T.select_patterns(ps, top=6)
    with pytest.raises(InputError, match="no pattern has a score sum >= 2"):
        T.select_patterns(ps, top=1, min_score=2.0)
    # identical triggers from two examples are attacked once
    dup = [ps[2], pattern_with(tok, text, None, [(6, 9, 0.875), (4, 5, 0.5)], predicted=1)]
    assert len(T.select_patterns(dup, top=2, min_score=0.0)) == 1


def test_control_words_match_trigger_tokens(tok):
    trigger = [T.TriggerWord("cats", 0, 0.25, 3, 2), T.TriggerWord("dog", 1, 1.0, 9, 1)]
    vocab = T.control_vocabulary(tok)
    words = T.control_words(trigger, vocab, random.Random(3), tok)
    assert len(words) == 3  # as many tokens as the trigger has pieces (cat ##s, dog)
    assert [(w.segment, w.relative) for w in words] == [(0, 0.25), (0, 0.25), (1, 1.0)]
    assert all(w.word in vocab for w in words)
    assert words == T.control_words(trigger, vocab, random.Random(3), tok)  # seeded


# ---- the patterns file ---------------------------------------------------------------------
def _result(tok, patterns):
    settings = {"model_id": "tiny", "tokenizer": T.tokenizer_info(tok), "examples": 3}
    return T.MiningResult(patterns=patterns, considered=3, skipped=1, settings=settings)


def test_patterns_file_round_trip_and_bad_files(tok, tmp_path):
    text = "the dog sat on the mat"
    ps = [pattern_with(tok, text, None, [(2, 3, 0.5), (4, 5, 0.2)])]
    path = T.write_patterns(tmp_path / "p.jsonl", _result(tok, ps))
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == T.FORMAT and header["model_id"] == "tiny" and header["count"] == 1
    assert header["tokenizer"]["vocab_size"] == len(VOCAB)
    loaded = T.load_patterns(path, model_id="tiny", tokenizer=tok)
    assert loaded.patterns == ps and loaded.model_id == "tiny"

    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ResultFileError, match="is empty"):
        T.load_patterns(tmp_path / "empty.jsonl")
    (tmp_path / "junk.jsonl").write_text("not json\n")
    with pytest.raises(ResultFileError, match="not an attattr patterns file"):
        T.load_patterns(tmp_path / "junk.jsonl")
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n" + lines[1] + '\n{"example_id": 3}\n')
    with pytest.raises(ResultFileError, match="line 3: malformed pattern"):
        T.load_patterns(tmp_path / "bad.jsonl")
    with pytest.raises(ResultFileError, match="not found"):
        T.load_patterns(tmp_path / "missing.jsonl")

    with pytest.raises(ResultFileError, match="mined with model 'tiny', not 'other'"):
        T.load_patterns(path, model_id="other")
    other_tok = tf.BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB[:-3])})
    with pytest.raises(ResultFileError, match=f"tokenizer with {len(VOCAB)} tokens, not {len(VOCAB) - 3}"):
        T.load_patterns(path, tokenizer=other_tok)
    with pytest.warns(UserWarning, match="using it anyway"):
        assert T.load_patterns(path, model_id="other", allow_other_model=True).patterns == ps


# ---- mining and attacking with the engine on a tiny model ----------------------------------
SENTENCES = [
    "the dog sat on the mat with a cat and it is very good",
    "a film",  # short: skipped
    "the cat ran down the mat again and again , not bad at all",
    "it is a very bad film of a dog that sat on a mat",
    "the dog",  # short: skipped
    "good good film with a cat and a dog , it is not bad",
]


def _dataset(sentences=SENTENCES, labels=None):
    labels = labels or [i % 2 for i in range(len(sentences))]
    return DS(Ex(f"e{i}", s, None, y) for i, (s, y) in enumerate(zip(sentences, labels, strict=True)))


def _reference_pattern(attr):
    """Independent: loop over heads for the largest entry, then sort that head's entries."""
    best = None
    L, H, n, _ = attr.scores.shape
    for li in range(L):
        for h in range(H):
            m = float(attr.scores[li, h].max())
            if best is None or m > best[0]:
                best = (m, li, h)
    _, li, h = best
    entries = sorted(
        ((float(attr.scores[li, h, i, j]), i, j) for i in range(n) for j in range(n)), reverse=True
    )
    return li, h, entries[:2]


def test_mine_patterns_with_engine_and_resume(tok, model, tmp_path, monkeypatch):
    import attattr
    import attattr.core.engine as engine

    data = _dataset()
    run = tmp_path / "run.jsonl"
    result = T.mine_patterns(model, tok, data, examples=6, min_tokens=8, steps=4, batch_size=3, store=run)
    assert (result.considered, result.skipped, len(result.patterns)) == (6, 2, 4)
    scores = [p.score for p in result.patterns]
    assert scores == sorted(scores, reverse=True)
    for p in result.patterns:
        ex = data[int(p.example_id[1:])]
        attr = attattr.attribute(model, tok, ex.text, steps=4, example_id=ex.id)
        li, h, top2 = _reference_pattern(attr)
        assert (p.layer, p.head) == (attr.layers[li], h)
        assert [(q.query, q.key) for q in p.pairs] == [(i, j) for _, i, j in top2]
        assert [q.score for q in p.pairs] == pytest.approx([s for s, _, _ in top2], abs=1e-6)
        assert p.predicted == attr.predicted and p.label == ex.label

    # interrupted after three examples: the rerun computes only the rest, with the same result
    lines = run.read_text().splitlines()
    run.write_text("\n".join(lines[:4]) + "\n")
    seen = []
    real = engine.attribute_many

    def spy(model, tokenizer, examples, **kw):
        examples = list(examples)
        seen.extend(ex.id for ex in examples)
        return real(model, tokenizer, examples, **kw)

    monkeypatch.setattr(engine, "attribute_many", spy)
    again = T.mine_patterns(model, tok, data, examples=6, min_tokens=8, steps=4, batch_size=3, store=run)
    done_before = {json.loads(x)["id"] for x in lines[1:4]}
    assert set(seen) == {"e0", "e2", "e3", "e5"} - done_before and seen
    assert [(p.example_id, p.layer, p.head, [(q.query, q.key) for q in p.pairs]) for p in again.patterns] == [
        (p.example_id, p.layer, p.head, [(q.query, q.key) for q in p.pairs]) for p in result.patterns
    ]
    assert [p.score for p in again.patterns] == pytest.approx([p.score for p in result.patterns], abs=1e-6)
    with pytest.raises(ResultFileError, match="other settings"):
        T.mine_patterns(model, tok, data, examples=6, min_tokens=8, steps=5, store=run)


def test_sample_indices():
    assert T.sample_indices(10, 4, order="first") == [0, 1, 2, 3]
    assert T.sample_indices(3, 5, order="first") == [0, 1, 2]
    a = T.sample_indices(1000, 50, seed=0)
    assert a == sorted(set(a)) and len(a) == 50 and a == T.sample_indices(1000, 50, seed=0)
    assert a != T.sample_indices(1000, 50, seed=1) and a != list(range(50))
    assert T.sample_indices(5, 9) == [0, 1, 2, 3, 4]


def test_attack_end_to_end(tok, model):
    from attattr.core.encoding import model_inputs

    train = _dataset()
    mined = T.mine_patterns(model, tok, train, examples=6, min_tokens=8, steps=4)
    dev = _dataset(
        [
            "the dog sat on the mat",
            "a cat ran down",
            "it is good",
            "not a bad film",
            "the film is very good",
            "a dog and a cat",
            "again and again",
            "it sat",
        ],
        [0, 1, 1, 0, 1, 0, 0, 1],
    )
    report = T.attack(model, tok, mined.patterns, dev, top=2, min_score=0.0, seeds=(0, 1, 2))

    @torch.no_grad()
    def accuracy(texts, labels):
        enc = tok(texts, padding=True, return_tensors="pt")
        pred = model(**model_inputs(enc, model)).logits.argmax(-1)
        ok = (pred == torch.tensor(labels)).float()
        lab = torch.tensor(labels)
        return [float(ok[lab == c].mean()) for c in (0, 1)]

    labels = [ex.label for ex in dev]
    assert report.classes == ["neg", "pos"] and report.class_sizes == [4, 4]
    assert report.before == pytest.approx(accuracy([ex.text for ex in dev], labels))
    assert 1 <= len(report.results) <= 4
    by_rank = {rank: p for rank, p in enumerate(mined.patterns, start=1)}
    for r in report.results:
        p = by_rank[r.rank]
        assert r.trigger == [w.word for w in T.trigger_tokens(p)]
        # independent insertion for the after-accuracy: words at round(rel * W) word gaps
        texts = []
        for ex in dev:
            words = ex.text.split()
            placed = [(int(w.relative * len(words) + 0.5), w.word) for w in T.trigger_tokens(p)]
            texts.append(" ".join(place(words, placed)))
        assert [c.after for c in r.per_class] == pytest.approx(accuracy(texts, labels))
        for c in r.per_class + [r.overall]:
            assert c.drop == pytest.approx(c.before - c.after)
            assert c.margin == pytest.approx(c.control_mean - c.after)
            assert 0.0 <= c.control_mean <= 1.0 and c.control_std >= 0.0
            assert c.adversarial == (c.drop > 0 and c.margin > max(0.0, 2.0 * c.control_std))
        assert r.adversarial == any(c.adversarial for c in r.per_class)
    md = report.markdown()
    assert sum(line.startswith("| ") for line in md.splitlines()) == len(report.results) + 1
    assert "control" in md
    json.dumps(report.to_json())  # plain JSON
    with pytest.raises(InputError, match="larger than the number of patterns"):
        T.attack(model, tok, mined.patterns, dev, top=len(mined.patterns) + 1)


# ---- the command line ----------------------------------------------------------------------
def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    import sys

    from attattr.cli import main

    monkeypatch.setattr(sys, "argv", ["attattr", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return exc.value.code or 0, out, " ".join(err.split())  # rich wraps long lines


def test_cli_data_defaults_to_the_recipe_dataset(tok, model, tmp_path, monkeypatch, capsys):
    # a model directory has no recipe dataset: one line asking for --data, not another dataset's labels
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    for command in (["mine", "--out", tmp_path / "p.jsonl"], ["attack", "--patterns", tmp_path / "p.jsonl"]):
        (tmp_path / "p.jsonl").write_text("")
        code, _, err = _cli(monkeypatch, capsys, "triggers", *command, "--model", model_dir)
        assert code == 2 and "has no recipe dataset; give --data" in err and "Traceback" not in err
    # a recipe reads its own dataset (SNLI pairs for minilm-snli, not Rotten Tomatoes sentences)
    from attattr.cli.common import recipe_dataset

    assert recipe_dataset("minilm-snli") == "snli" and recipe_dataset(str(model_dir)) is None


def test_cli_mine_and_attack(tok, model, tmp_path, monkeypatch, capsys):
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    csv = tmp_path / "data.csv"
    csv.write_text("text,label\n" + "".join(f'"{s}",{i % 2}\n' for i, s in enumerate(SENTENCES * 2)))
    patterns = tmp_path / "p.jsonl"

    common = ["--model", model_dir, "--data", csv]
    code, out, err = _cli(
        monkeypatch, capsys, "triggers", "mine", *common, "--examples", 6, "--min-tokens", 8,
        "--order", "first", "--steps", 3, "--out", patterns, "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["considered"], summary["skipped_short"], summary["patterns"]) == (6, 2, 4)
    loaded = T.load_patterns(patterns, model_id=str(model_dir.resolve()), tokenizer=tok)
    assert len(loaded.patterns) == 4 and loaded.header["settings"]["steps"] == 3
    runs = list((tmp_path / "runs").glob("triggers-mine-*.jsonl"))
    assert len(runs) == 1 and len(runs[0].read_text().splitlines()) == 1 + 6
    assert not (tmp_path / "p.jsonl.run.jsonl").exists()

    attack_dir = tmp_path / "attack"
    code, out, err = _cli(
        monkeypatch, capsys, "triggers", "attack", *common, "--patterns", patterns, "--top", 1,
        "--min-score", 0, "--seeds", 2, "--out", attack_dir,
    )  # fmt: skip
    assert code == 0, err
    saved = json.loads((attack_dir / "attack.json").read_text())
    assert saved["settings"]["seeds"] == [0, 1] and 1 <= len(saved["results"]) <= 2
    assert {r["source_class"] for r in saved["results"]} <= {0, 1}
    assert saved["before"] and all(0 <= a <= 1 for a in saved["before"])
    assert "before → after" in (attack_dir / "attack.md").read_text()
    assert (attack_dir / "attack.png").stat().st_size > 0 and (attack_dir / "attack.svg").exists()
    assert "adversarial" in (attack_dir / "report.html").read_text()
    assert "accuracy before" in out and saved["results"][0]["trigger"][0] in out

    # bad input: --top too large, an empty file, another model's file -> one line, exit 2
    code, _, err = _cli(
        monkeypatch, capsys, "triggers", "attack", *common, "--patterns", patterns, "--top", 5
    )
    assert code == 2 and "larger than the number of patterns in the file (4)" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = _cli(monkeypatch, capsys, "triggers", "attack", *common, "--patterns", empty)
    assert code == 2 and "is empty" in err and "Traceback" not in err
    other = tmp_path / "other"
    other_model = tf.BertForSequenceClassification(model.config)
    other_model.save_pretrained(other)
    tok.save_pretrained(other)
    args = ["triggers", "attack", "--model", other, "--data", csv, "--patterns", patterns, "--top", 1]
    code, _, err = _cli(monkeypatch, capsys, *args, "--min-score", 0, "--seeds", 1, "--out", attack_dir)
    assert code == 2 and "was mined with model" in err and "--allow-other-model" in err
    code, _, err = _cli(
        monkeypatch, capsys, *args, "--min-score", 0, "--seeds", 1, "--out", attack_dir, "--allow-other-model"
    )
    assert code == 0 and "using it anyway" in err

    code, out, _ = _cli(monkeypatch, capsys, "triggers", "attack", "--help")
    assert code == 0 and "Example:" in out and "attattr triggers attack" in out


# ---- the command line: bad inputs refused before any work (one line, exit 2) ----------------
DEV = ["the dog sat on the mat", "a cat ran down the mat", "it is a very good film"]


@pytest.fixture(scope="module")
def cli_setup(tok, model, tmp_path_factory):
    """A model directory with label names, a patterns file mined with it, and its pattern lines."""
    import copy

    root = tmp_path_factory.mktemp("triggers-cli")
    named = copy.deepcopy(model)
    named.config.id2label = {0: "negative", 1: "positive"}
    named.config.label2id = {"negative": 0, "positive": 1}
    model_dir = root / "model"
    named.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    mined = T.mine_patterns(
        named, tok, _dataset(), examples=6, min_tokens=8, steps=3, model_id=str(model_dir.resolve())
    )
    patterns = T.write_patterns(root / "p.jsonl", mined, label_names=["negative", "positive"])
    return model_dir, patterns, named


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return " ".join(lines[0].split())


def _csv(path, rows):
    path.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    return path


def test_cli_attack_checks_labels_against_the_model(cli_setup, tok, tmp_path, run_cli):
    from attattr.core.encoding import model_inputs

    model_dir, patterns, named = cli_setup
    args = ["triggers", "attack", "--model", model_dir, "--patterns", patterns, "--top", 1]
    args += ["--min-score", 0, "--seeds", 1, "--json"]
    # three sentences labelled by name: "positive" is the model's class 1, whatever else the file holds
    data = _csv(tmp_path / "pos.csv", [(t, "positive") for t in DEV])
    code, out, err = run_cli(*args, "--data", data, "--out", tmp_path / "a")
    assert code == 0, err
    report = json.loads(out)
    with torch.no_grad():
        enc = tok(DEV, padding=True, return_tensors="pt")
        predicted = named(**model_inputs(enc, named)).logits.argmax(-1)
    assert report["classes"] == ["positive"] and report["class_sizes"] == [3]
    assert report["before"] == pytest.approx([float((predicted == 1).float().mean())])

    # a label the model does not know, and integer labels outside its classes: refused, nothing written
    weather = _csv(tmp_path / "weather.csv", [(DEV[0], "positive"), (DEV[1], "weather")])
    code, _, err = run_cli(*args, "--data", weather, "--out", tmp_path / "b")
    assert code == 2
    assert _one_line(err) == (
        "error: weather: label values not seen in training: 'weather' (the model knows: negative, positive)"
    )
    ints = _csv(tmp_path / "ints.csv", [(DEV[0], 1), (DEV[1], 5)])
    code, _, err = run_cli(*args, "--data", ints, "--out", tmp_path / "c")
    assert code == 2
    assert (
        _one_line(err) == "error: ints: label values not seen in training: 5 (the model has 2 labels: 0..1)"
    )
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--limit", -4, "error: --limit must be >= 1, got -4"),
        ("--limit", 0, "error: --limit must be >= 1, got 0"),
        ("--batch-size", 0, "error: --batch-size must be >= 1, got 0"),
        ("--seeds", 0, "error: --seeds must be >= 1, got 0"),
        ("--top", 0, "error: --top must be >= 1, got 0"),
        ("--out", "{patterns}", "error: --out {patterns} is a file, not a folder"),
    ],
)
def test_cli_attack_bad_options_before_any_work(cli_setup, tmp_path, run_cli, option, value, message):
    _, patterns, _ = cli_setup
    # the model does not exist: the option is refused before anything is loaded or written
    out = tmp_path / "attack"
    value, message = str(value).format(patterns=patterns), message.format(patterns=patterns)
    code, _, err = run_cli(
        "triggers", "attack", "--model", tmp_path / "no-model", "--patterns", patterns, "--out", out,
        option, value,
    )  # fmt: skip
    assert code == 2 and _one_line(err) == message
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda d: d.pop("layer"), "missing 'layer'"),
        (lambda d: d["tokens"][0].update(position=-5), "'position' -5 is out of range (0..{last})"),
        (lambda d: d["tokens"][0].update(position=999), "'position' 999 is out of range (0..{last})"),
        (lambda d: d["pairs"][0].update(key=-1), "'key' -1 is out of range (0..{last})"),
        (lambda d: d.update(layer="2"), "'layer' must be an integer, got \"2\""),
        (lambda d: d.update(layer=1.5), "'layer' must be an integer, got 1.5"),
        (lambda d: d.update(head=None), "'head' must be an integer, got null"),
        (lambda d: d.update(predicted=7), "'predicted' 7 is out of range (class 0..1)"),
        (lambda d: d.update(label=-1), "'label' -1 is out of range (class 0..1)"),
        (lambda d: d["pairs"][0].pop("score"), "every pair needs 'query', 'key' and 'score'"),
        (lambda d: d["tokens"][0].update(special="no"), "token 'special' must be true or false"),
    ],
)
def test_corrupt_pattern_lines_refused(cli_setup, tmp_path, run_cli, edit, reason):
    model_dir, patterns, _ = cli_setup
    header, first, *rest = patterns.read_text().splitlines()
    record = json.loads(first)
    edit(record)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([header, json.dumps(record), *rest]) + "\n")
    reason = reason.format(last=record["num_tokens"] - 1)
    expected = f"{bad}, line 2: malformed pattern ({reason})"
    with pytest.raises(ResultFileError) as exc:
        T.load_patterns(bad)  # the class range comes from the header's label names
    assert str(exc.value) == expected
    code, _, err = run_cli(
        "triggers", "attack", "--model", model_dir, "--patterns", bad, "--data", _csv(tmp_path / "d.csv", [(DEV[0], 0)]),
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert code == 2 and _one_line(err) == f"error: {expected}"
    assert not (tmp_path / "out").exists()


def test_cli_mine_bad_options_write_nothing(tmp_path, run_cli):
    out = tmp_path / "p.jsonl"
    for args, message in [
        (("--rule", "bogus"), "unknown integration rule 'bogus'; choose one of:"),
        (("--steps", 0), "--steps must be an integer >= 1 or 'auto', got '0'"),
        (("--batch-size", 0), "--batch-size must be >= 1, got 0"),
        (("--order", "last"), "--order must be one of random, first, got 'last'"),
        (("--examples", 0), "--examples must be >= 1, got 0"),
        (("--out", tmp_path), f"--out {tmp_path} is a folder; give the patterns file to write"),
    ]:
        code, _, err = run_cli("triggers", "mine", "--model", tmp_path / "no-model", "--out", out, *args)
        assert code == 2 and _one_line(err).startswith(f"error: {message}"), err
    assert list(tmp_path.iterdir()) == []


# ---- per-example appends: an interrupted run keeps every finished example ------------------
def test_mining_appends_each_finished_shard(tok, model, tmp_path):
    data = _dataset()
    full = T.mine_patterns(model, tok, data, examples=6, min_tokens=0, steps=3, batch_size=2)
    run = tmp_path / "run.jsonl"
    finished = []

    def progress(n):
        finished.append(n)
        if sum(finished) >= 4:
            raise KeyboardInterrupt  # killed once four examples are reported done

    with pytest.raises(KeyboardInterrupt):
        T.mine_patterns(
            model, tok, data, examples=6, min_tokens=0, steps=3, batch_size=2, store=run, progress=progress
        )
    assert finished == [2, 2]
    lines = run.read_text().splitlines()
    assert len(lines) == 1 + 4  # the header and the k = 4 finished examples
    stored = {json.loads(line)["id"]: json.loads(line) for line in lines[1:]}
    by_id = {p.example_id: p.to_dict() for p in full.patterns}
    assert all(r["pattern"] == by_id[i] for i, r in stored.items())
    again = T.mine_patterns(model, tok, data, examples=6, min_tokens=0, steps=3, batch_size=2, store=run)
    assert len(run.read_text().splitlines()) == 1 + 6
    assert [p.to_dict() for p in again.patterns] == [p.to_dict() for p in full.patterns]


# ---- the command line: settings-named run files, --fresh, older run files, data columns -------
def _mine_args(model_dir, data, out, *extra):
    return [
        "triggers", "mine", "--model", model_dir, "--data", data, "--examples", 6, "--min-tokens", 0,
        "--order", "first", "--steps", 2, "--batch-size", 2, "--out", out, "--json", *extra,
    ]  # fmt: skip


def _run_files(folder):
    return sorted((folder / "runs").glob("triggers-mine-*.jsonl"))


def test_cli_mine_runs_named_by_settings_and_fresh(cli_setup, tmp_path, run_cli):
    model_dir, _, _ = cli_setup
    data = _csv(tmp_path / "d.csv", [(t, i % 2) for i, t in enumerate(SENTENCES)])
    out = tmp_path / "p.jsonl"
    code, first, err = run_cli(*_mine_args(model_dir, data, out))
    assert code == 0, err
    code, _, err = run_cli(*_mine_args(model_dir, data, out, "--steps", 3))  # other settings: no refusal
    assert code == 0, err
    files = _run_files(tmp_path)
    assert len(files) == 2
    assert {json.loads(f.read_text().splitlines()[0])["settings"]["steps"] for f in files} == {2, 3}
    # resumed: stored records are used as they are (an edited score shows that nothing was recomputed)
    path = next(f for f in files if json.loads(f.read_text().splitlines()[0])["settings"]["steps"] == 2)
    before = path.read_text()
    header, *records = before.splitlines()
    edited = [json.loads(x) for x in records]
    target = next(r for r in edited if r["pattern"])
    target["pattern"]["pairs"][0]["score"] += 123.0  # a pattern's score is the sum of its pairs'
    path.write_text("\n".join([header, *map(json.dumps, edited)]) + "\n")
    code, out_json, err = run_cli(*_mine_args(model_dir, data, out))
    assert code == 0, err
    assert json.loads(out_json)["top"][0]["example_id"] == target["id"]
    assert json.loads(out_json)["top"][0]["score"] > 123.0
    code, out_json, err = run_cli(*_mine_args(model_dir, data, out, "--fresh"))
    assert code == 0, err
    assert path.read_text() == before and json.loads(out_json) == json.loads(first)
    # a "runs" file where the run folder goes: refused before any work
    other = tmp_path / "other"
    other.mkdir()
    (other / "runs").write_text("x")
    code, _, err = run_cli(*_mine_args(tmp_path / "no-model", data, other / "p.jsonl"))
    assert code == 2 and _one_line(err) == f"error: the run folder {other / 'runs'} is a file, not a folder"


def test_cli_mine_resumes_an_older_run_file(cli_setup, tmp_path, run_cli):
    """A run file of earlier versions (<out>.run.jsonl, header without a kind) is continued when its
    settings match; one with other settings is left alone."""
    model_dir, _, _ = cli_setup
    data = _csv(tmp_path / "d.csv", [(t, i % 2) for i, t in enumerate(SENTENCES)])
    whole = tmp_path / "whole"
    whole.mkdir()
    code, expected, err = run_cli(*_mine_args(model_dir, data, whole / "p.jsonl"))
    assert code == 0, err
    header, *records = _run_files(whole)[0].read_text().splitlines()
    old_header = {k: v for k, v in json.loads(header).items() if k != "kind"}
    kept = [json.loads(x) for x in records[:3]]
    for r in kept:
        if r["pattern"]:
            r["pattern"]["pairs"][0]["score"] += 100.0  # marks the records that came from the old file
    out = tmp_path / "p.jsonl"
    old = tmp_path / "p.jsonl.run.jsonl"
    old.write_text("\n".join(json.dumps(x) for x in [old_header, *kept]) + "\n")
    code, resumed, err = run_cli(*_mine_args(model_dir, data, out))
    assert code == 0, err
    assert len(old.read_text().splitlines()) == 1 + 6 and _run_files(tmp_path) == []
    marked = {r["id"] for r in kept if r["pattern"]}
    top = {p["example_id"]: p["score"] for p in json.loads(resumed)["top"]}
    want = {p["example_id"]: p["score"] for p in json.loads(expected)["top"]}
    assert marked and top == pytest.approx({i: s + 100.0 if i in marked else s for i, s in want.items()})
    # other settings: the old file is not this run's; a settings-named file is started
    code, _, err = run_cli(*_mine_args(model_dir, data, out, "--steps", 3))
    assert code == 0, err
    assert len(_run_files(tmp_path)) == 1
    assert len(old.read_text().splitlines()) == 1 + 6


def test_cli_triggers_data_columns(cli_setup, tmp_path, run_cli):
    model_dir, patterns, _ = cli_setup
    plain = _csv(tmp_path / "plain.csv", [(t, i % 2) for i, t in enumerate(SENTENCES)])
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("review,gold\n" + "".join(f'"{t}",{i % 2}\n' for i, t in enumerate(SENTENCES)))
    code, expected, err = run_cli(*_mine_args(model_dir, plain, tmp_path / "a" / "p.jsonl"))
    assert code == 0, err
    columns = ["--text-column", "review", "--label-column", "gold"]
    code, got, err = run_cli(*_mine_args(model_dir, renamed, tmp_path / "b" / "p.jsonl", *columns))
    assert code == 0, err
    assert json.loads(got)["top"] == json.loads(expected)["top"]
    settings = json.loads(_run_files(tmp_path / "b")[0].read_text().splitlines()[0])["settings"]
    assert (settings["text_column"], settings["label_column"]) == ("review", "gold")
    code, _, err = run_cli(*_mine_args(model_dir, renamed, tmp_path / "c" / "p.jsonl"))
    assert code == 2 and "has no text column 'text'" in _one_line(err)
    attack = ["triggers", "attack", "--model", model_dir, "--patterns", patterns, "--top", 1]
    attack += ["--min-score", 0, "--seeds", 1, "--json"]
    code, a, err = run_cli(*attack, "--data", plain, "--out", tmp_path / "x")
    assert code == 0, err
    code, b, err = run_cli(*attack, "--data", renamed, *columns, "--out", tmp_path / "y")
    assert code == 0, err
    assert (
        json.loads(a)["before"] == json.loads(b)["before"]
        and json.loads(a)["results"] == json.loads(b)["results"]
    )
