"""Attribution trees of sentence pairs: edge kinds (within / cross / special / root), the within/cross
split of tree statistics, the drawing of a pair's two segments and the CLI on a tiny pair data file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import attattr
from attattr.analyses.runs import MemoryStore
from attattr.analyses.tree.build import (
    AttributionTree,
    build_tree,
    build_tree_from_scores,
    classify_edge,
)
from attattr.analyses.tree.stats import run_tree_stats, summarise
from attattr.render.plots.tree import SEGMENT_GAP, draw_tree
from tests.tiny import tiny_model, tiny_tokenizer

# [CLS] a b [SEP] | c d e [SEP]: premise = segment 0 (with [CLS] and the first [SEP]), hypothesis = 1
TOKENS = ["[CLS]", "a", "b", "[SEP]", "c", "d", "e", "[SEP]"]
SEGMENTS = [0, 0, 0, 0, 1, 1, 1, 1]
SPECIAL = [t in ("[CLS]", "[SEP]") for t in TOKENS]

PAIRS = [
    ("the cat sat on the mat", "a dog ran"),
    ("the film is very good", "it was great fun"),
    ("not a good film", "the plot was dull"),
    ("the dog is bad", "it sat and ran down the mat"),
    ("this movie was so good", "that film was too awful"),
]
THRESHOLD = 0.2  # low: larger trees on a random model, so that every kind of edge occurs


def _hand_made_scores() -> np.ndarray:
    """Per-layer head sums [3 layers, 8, 8] whose tree is known: top node c (#4); at layer 1, c reads
    a (cross), the first [SEP] (special) and d (within); at layer 0, a reads b (within) and e (cross,
    the premise reading the hypothesis), d reads the last [SEP] (special)."""
    s = np.zeros((3, 8, 8))
    s[2, 4, 5] = 0.5
    s[1, 4, 1], s[1, 4, 3], s[1, 4, 5] = 1.0, 0.9, 0.8
    s[0, 1, 2], s[0, 1, 6], s[0, 5, 7] = 1.0, 0.9, 0.8
    return s


def _hand_made_tree(**kwargs) -> AttributionTree:
    return build_tree_from_scores(_hand_made_scores(), TOKENS, SPECIAL, 0.4, segment_ids=SEGMENTS, **kwargs)


def test_edge_kind_on_a_hand_made_pair_tree():
    tree = _hand_made_tree(segment_names=["premise", "hypothesis"])
    kinds = {(e.parent, e.child, e.layer): tree.edge_kind(e) for e in tree.edges}
    assert kinds == {
        (0, 4, 2): "root",  # the root's link is "root" although [CLS] is special
        (4, 1, 1): "cross",
        (4, 3, 1): "special",
        (4, 5, 1): "within",
        (1, 2, 0): "within",
        (1, 6, 0): "cross",
        (5, 7, 0): "special",
    }
    assert tree.is_pair
    assert [tree.direction(e) for e in tree.cross_edges()] == ["hypothesis → premise", "premise → hypothesis"]
    assert tree.to_json()["edge_kinds"] == [tree.edge_kind(e) for e in tree.edges]
    # the text marks the two crossing edges with their direction, and only them
    text = tree.to_text()
    assert "a #1  (layer 1, 1.00; crosses hypothesis → premise)" in text
    assert "e #6  (layer 0, 0.90; crosses premise → hypothesis)" in text
    assert text.count("crosses") == 2
    assert tree.to_dot().count('color="#e67e22"') == 2
    # names survive JSON; unnamed segments are "text" and "pair text"
    again = AttributionTree.from_json(json.dumps(tree.to_json()))
    assert again.segment_names == ["premise", "hypothesis"]
    assert _hand_made_tree().direction(tree.cross_edges()[0]) == "pair text → text"


def test_edge_kind_of_every_token_pair_and_single_segment_trees():
    for parent in range(8):
        for child in range(8):
            kind = classify_edge(parent, child, root=0, special_mask=SPECIAL, segment_ids=SEGMENTS)
            if parent == 0:
                assert kind == "root"
            elif TOKENS[parent] == "[SEP]" or TOKENS[child] in ("[CLS]", "[SEP]"):
                assert kind == "special"
            else:
                assert kind == ("cross" if (parent >= 4) != (child >= 4) else "within")
    single = build_tree_from_scores(_hand_made_scores(), TOKENS, SPECIAL, 0.4)
    assert not single.is_pair and not single.cross_edges()
    assert "crosses" not in single.to_text() and "#e67e22" not in single.to_dot()


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(2)
    model = tiny_model("bert", layers=3, heads=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model, tiny_tokenizer()


def _independent_split(trees: list[AttributionTree]) -> dict:
    """Edge kinds counted from the token strings alone: specials by name, the segment by position
    relative to the first [SEP]."""
    counts = {"within": 0, "cross": 0, "special": 0}
    per_layer: dict[int, dict[str, int]] = {}
    ways = {"pair_reads_text": 0, "text_reads_pair": 0}
    dist: dict[str, list[int]] = {"within": [], "cross": [], "special": []}
    for tree in trees:
        first_sep = tree.tokens.index("[SEP]")
        for e in tree.edges:
            if e.parent == 0:
                continue
            if {tree.tokens[e.parent], tree.tokens[e.child]} & {"[CLS]", "[SEP]"}:
                kind = "special"
            elif (e.parent > first_sep) != (e.child > first_sep):
                kind = "cross"
                ways["pair_reads_text" if e.parent > first_sep else "text_reads_pair"] += 1
            else:
                kind = "within"
            counts[kind] += 1
            per_layer.setdefault(e.layer, {"within": 0, "cross": 0, "special": 0})[kind] += 1
            dist[kind].append(abs(e.parent - e.child))
    return {"counts": counts, "per_layer": per_layer, "ways": ways, "dist": dist}


def test_summary_split_matches_an_independent_count(tiny):
    model, tok = tiny
    store = MemoryStore()
    examples = [{"id": f"p{i}", "text": t, "text_pair": p} for i, (t, p) in enumerate(PAIRS)]
    summary = run_tree_stats(
        model, tok, examples, threshold=THRESHOLD, faithfulness=False, store=store, steps=3
    )
    trees = [
        build_tree(a, THRESHOLD)
        for a in attattr.attribute_many(model, tok, [(t, p) for t, p in PAIRS], steps=3)
    ]
    records = store.ordered([f"p{i}" for i in range(len(PAIRS))])
    assert [r["edges"] for r in records] == [
        [[e.parent, e.child, e.layer, pytest.approx(e.score)] for e in t.attention_edges()] for t in trees
    ]
    want = _independent_split(trees)
    split = summary["segments"]
    assert split["examples"] == split["pair_examples"] == len(PAIRS)
    assert split["examples_without_segment_ids"] == 0
    assert {k: split["edges"][k] for k in want["counts"]} == want["counts"]
    assert split["edges"]["total"] == sum(want["counts"].values())
    assert min(want["counts"].values()) > 0, "every kind of edge should occur on these inputs"
    total = sum(want["counts"].values())
    for kind, count in want["counts"].items():
        assert split["fractions"][kind] == pytest.approx(count / total)
        assert split["receptive_field"][kind]["edges"] == len(want["dist"][kind])
        assert split["receptive_field"][kind]["mean_distance"] == pytest.approx(np.mean(want["dist"][kind]))
    assert split["cross_direction"] == want["ways"]
    assert split["examples_with_cross_edge"] == sum(bool(t.cross_edges()) for t in trees)
    rows = {row["layer"]: row for row in split["per_layer"]}
    assert sorted(rows) == [0, 1, 2]
    for layer, row in rows.items():
        expected = want["per_layer"].get(layer, {"within": 0, "cross": 0, "special": 0})
        assert {k: row[k] for k in expected} == expected
        assert row["edges"] == sum(expected.values())
        assert row["pair_reads_text"] + row["text_reads_pair"] == expected["cross"]
    assert rows[2]["edges"] == 0  # the last layer contributes only the root's link

    # records of an older run (no segment ids) still summarise: single-segment, left out of the split
    old = [{k: v for k, v in r.items() if k not in ("segment_ids", "special", "root")} for r in records]
    mixed = summarise(old[:2] + records[2:], layers=[0, 1, 2])
    assert mixed["segments"]["examples"] == len(PAIRS) - 2
    assert mixed["segments"]["examples_without_segment_ids"] == 2
    assert mixed["segments"]["edges"]["total"] == sum(len(r["edges"]) for r in records[2:])
    only_old = summarise(old, layers=[0, 1, 2])
    assert "segments" not in only_old and only_old["size"] == summary["size"]


def test_single_segment_data_has_no_split(tiny):
    model, tok = tiny
    summary = run_tree_stats(
        model, tok, [t for t, _ in PAIRS[:2]], threshold=THRESHOLD, faithfulness=False, steps=2
    )
    assert "segments" not in summary


def test_drawing_of_a_pair_marks_segments_and_crossing_edges(tmp_path):
    tree = _hand_made_tree(segment_names=["premise", "hypothesis"])
    draw_tree(tree, tmp_path / "pair")
    svg = (tmp_path / "pair.svg").read_text()
    assert (tmp_path / "pair.png").stat().st_size > 0
    assert "crosses segments: hypothesis → premise" in svg and "crosses segments: premise → hypothesis" in svg
    assert "premise" in svg and "hypothesis" in svg
    # the hypothesis's tokens sit one gap to the right of their index
    fig = draw_tree(tree)
    ticks = list(fig.axes[0].get_xticks())
    assert ticks == pytest.approx(
        [0, 1, 2, 3, 4 + SEGMENT_GAP, 5 + SEGMENT_GAP, 6 + SEGMENT_GAP, 7 + SEGMENT_GAP]
    )
    # unnamed segments: "text" and "pair text"
    draw_tree(_hand_made_tree(), tmp_path / "unnamed")
    assert "crosses segments: pair text → text" in (tmp_path / "unnamed.svg").read_text()

    single = build_tree_from_scores(_hand_made_scores(), TOKENS, SPECIAL, 0.4)
    draw_tree(single, tmp_path / "single")
    svg = (tmp_path / "single.svg").read_text()
    assert "crosses segments" not in svg and "pair text" not in svg
    assert list(draw_tree(single).axes[0].get_xticks()) == list(range(8))


def test_cli_tree_and_tree_stats_on_pairs(tmp_path, save_tiny_model, run_cli):
    model = save_tiny_model(tmp_path / "model", init=0.2)
    code, out, err = run_cli(
        "tree", "the cat sat on the mat", "--pair", "a dog ran", "--model", model, "--steps", 2,
        "--threshold", THRESHOLD, "--segment-names", "premise,hypothesis", "--out", tmp_path / "tree",
    )  # fmt: skip
    assert code == 0, err
    assert "edges crossing segments:" in out and "touch a special token" in out
    data = json.loads((tmp_path / "tree" / "tree.json").read_text())
    assert data["segment_names"] == ["premise", "hypothesis"] and len(data["edge_kinds"]) == len(
        data["edges"]
    )

    code, _, err = run_cli(
        "tree", "the cat", "--pair", "a dog", "--model", model, "--segment-names", "premise"
    )
    assert code == 2 and "--segment-names" in err and err.count("error") == 1

    csv = tmp_path / "pairs.csv"
    csv.write_text("text,pair,label\n" + "".join(f'"{t}","{p}",{i % 2}\n' for i, (t, p) in enumerate(PAIRS)))
    out_dir = tmp_path / "stats"
    args = [
        "tree", "stats", "--model", model, "--data", csv, "--pair-column", "pair", "--split", "dev",
        "--examples", 4, "--steps", 2, "--threshold", THRESHOLD, "--no-faithfulness", "--out", out_dir,
    ]  # fmt: skip
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "tree edges of sentence pairs" in out and "pair text → text" in out
    summary = json.loads((out_dir / "tree_stats.json").read_text())
    split = summary["segments"]
    assert split["names"] == ["text", "pair text"]
    assert split["edges"]["total"] == sum(len(r["edges"]) for r in _records(out_dir))
    assert f"{split['edges']['within']} (" in out and f"{split['edges']['cross']} (" in out
    assert (out_dir / "segment_split.png").stat().st_size > 0 and (out_dir / "segment_split.svg").exists()

    # single sentences: no split, no figure
    single = tmp_path / "single.csv"
    single.write_text("text,label\n" + "".join(f'"{t}",{i % 2}\n' for i, (t, _) in enumerate(PAIRS)))
    args = [single if a == csv else tmp_path / "s" if a == out_dir else a for a in args]
    args = [a for a in args if a not in ("--pair-column", "pair")]
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "tree edges of sentence pairs" not in out and not (tmp_path / "s" / "segment_split.png").exists()


def _records(out_dir) -> list[dict]:
    (run_file,) = (out_dir / "runs").glob("tree-stats-*.jsonl")
    return [r for r in map(json.loads, run_file.read_text().splitlines()) if "edges" in r]
