"""Attribution trees (docs/method.md §3): hand-made score maps with known trees, a plain reference
implementation compared on random inputs, the root-row exclusion, degenerate trees, pairs, export."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from attattr.analyses.tree.build import (
    SKIP_BOTH_APPEARED,
    SKIP_CHILD_FIXED,
    SKIP_CHILD_IS_ROOT,
    SKIP_PARENT_FIXED_CHILD_APPEARED,
    SKIP_WEAKER,
    AttributionTree,
    build_tree_from_scores,
)
from attattr.core.errors import InputError
from attattr.core.result import Attribution


# ---- a plain reference implementation, written from docs/method.md §3 with plain loops -------------------
def plain_tree(scores: np.ndarray, tau: float, mode: str, root: int = 0):
    """Returns (top, {child: (parent, layer, score)}, skipped [(i, j, layer, reason)]).

    scores: [L, H, n, n]. mode "authors": the authors' loop (tokens in index order, states updated
    as it goes); "strongest": the parents of a layer are the tree members when the layer starts and
    a new token takes the strongest of them (ties: lowest index)."""
    L, H, n = scores.shape[0], scores.shape[1], scores.shape[2]
    S = [[[0.0] * n for _ in range(n)] for _ in range(L)]
    for layer in range(L):
        for i in range(n):
            for j in range(n):
                total = 0.0
                for h in range(H):
                    total += float(scores[layer, h, i, j])
                S[layer][i][j] = total
    # step 2: normalise each layer by its max outside the root row
    N = [[[0.0] * n for _ in range(n)] for _ in range(L)]
    for layer in range(L):
        peak = max((S[layer][i][j] for i in range(n) if i != root for j in range(n)), default=0.0)
        if peak > 0:
            for i in range(n):
                for j in range(n):
                    N[layer][i][j] = S[layer][i][j] / peak
    # step 4: the top node
    C = [[sum(S[layer][i][j] for layer in range(L)) for j in range(n)] for i in range(n)]
    peak = max(abs(C[i][j]) for i in range(n) for j in range(n))
    best, best_sum = None, None
    for i in range(n):
        if i == root:
            continue
        row = 0.0
        for j in range(n):
            v = C[i][j] / peak if peak > 0 else C[i][j]
            if j != i and v > 0:
                row += v
        if best is None or row > best_sum:
            best, best_sum = i, row
    top = best
    ABSENT, APPEARED, FIXED = "absent", "appeared", "fixed"
    state = [ABSENT] * n
    state[root] = FIXED
    state[top] = APPEARED
    parent_of = {top: (root, L - 1, None)}
    skipped = []
    # step 5
    for layer in range(L - 2, -1, -1):
        if mode == "authors":
            for i in range(n):
                if i == root or state[i] == ABSENT:
                    continue
                for j in range(n):
                    if j == i or not N[layer][i][j] > tau:
                        continue
                    if state[j] == FIXED:
                        skipped.append((i, j, layer, "child-fixed"))
                        continue
                    if state[i] == APPEARED and state[j] == APPEARED:
                        skipped.append((i, j, layer, "both-appeared"))
                        continue
                    if state[i] == FIXED and state[j] == APPEARED:
                        skipped.append((i, j, layer, "parent-fixed-child-appeared"))
                        continue
                    state[i] = FIXED
                    state[j] = APPEARED
                    parent_of[j] = (i, layer, N[layer][i][j])
        else:
            start = list(state)
            joins = []
            for j in range(n):
                if start[j] != ABSENT:
                    continue
                best = None
                for i in range(n):
                    if i == root or i == j or start[i] == ABSENT or not N[layer][i][j] > tau:
                        continue
                    if best is None or N[layer][i][j] > N[layer][best][j]:
                        best = i
                if best is not None:
                    joins.append((best, j))
            for i, j in joins:
                state[i] = FIXED
                state[j] = APPEARED
                parent_of[j] = (i, layer, N[layer][i][j])
    return top, parent_of, skipped


def as_parent_map(tree: AttributionTree):
    return {e.child: (e.parent, e.layer, e.score) for e in tree.edges}


def sums_to_scores(sums: np.ndarray, heads: int = 2, seed: int = 0) -> torch.Tensor:
    """Spread per-layer sums [L, n, n] over heads so that the head sum gives them back."""
    g = np.random.default_rng(seed)
    L, n, _ = sums.shape
    noise = g.normal(size=(L, heads - 1, n, n)) * 0.1
    last = sums[:, None] - noise.sum(axis=1, keepdims=True)
    return torch.tensor(np.concatenate([noise, last], axis=1))


TOKENS5 = ["[CLS]", "a", "b", "c", "[SEP]"]
SPECIAL5 = [True, False, False, False, True]


def base_sums(L: int = 3, n: int = 5) -> np.ndarray:
    """Small positive noise, with token 1 made the top node by a large last-layer row."""
    g = np.random.default_rng(1)
    sums = g.uniform(0.0, 0.05, size=(L, n, n))
    sums[L - 1, 1, 2] = 10.0
    return sums


# ---- hand-made trees: each rule of the three-state procedure ----------------------------------
@pytest.mark.parametrize("mode", ["strongest", "authors"])
def test_child_fixed_edge_is_skipped(mode):
    sums = base_sums()
    sums[1, 1, 2] = 1.0  # layer 1: 1 -> 2          (1 fixed, 2 appeared)
    sums[0, 2, 3] = 1.0  # layer 0: 2 -> 3          (2 fixed, 3 appeared)
    sums[0, 3, 1] = 0.9  # layer 0: 3 attends to 1, which is fixed -> skipped (3 not yet a member in
    sums[0, 2, 1] = 0.8  # "strongest"); 2 attends to 1 (fixed) -> skipped in both modes
    tree = build_tree_from_scores(sums_to_scores(sums), TOKENS5, SPECIAL5, 0.4, parent_choice=mode)
    assert tree.top == 1 and tree.root == 0
    assert as_parent_map(tree) == {
        1: (0, 2, pytest.approx(tree.edges[0].score)),
        2: (1, 1, pytest.approx(1.0)),
        3: (2, 0, pytest.approx(1.0)),
    }
    reasons = {(s.parent, s.child, s.layer): s.reason for s in tree.skipped}
    assert reasons[(2, 1, 0)] == SKIP_CHILD_FIXED
    if mode == "authors":  # 3 joined before its row was read, and 1 is fixed
        assert reasons[(3, 1, 0)] == SKIP_CHILD_FIXED
    assert tree.is_fixed(1) and tree.is_fixed(2) and not tree.is_fixed(3)
    assert [n.index for n in tree.nodes if not tree.in_tree(n.index)] == []
    assert not tree.in_tree(4) and tree.node(3).layer == 0 and tree.node(2).layer == 1


@pytest.mark.parametrize("mode", ["strongest", "authors"])
def test_both_appeared_edge_is_skipped(mode):
    sums = base_sums()
    sums[1, 1, 2] = 1.0  # layer 1: 1 -> 2 and 1 -> 3: both appeared
    sums[1, 1, 3] = 0.9
    sums[0, 2, 3] = 1.0  # layer 0: 2 attends to 3, both only appeared -> skipped
    sums[0, 3, 4] = 0.8  # layer 0: 3 -> 4 joins
    tree = build_tree_from_scores(sums_to_scores(sums), TOKENS5, SPECIAL5, 0.4, parent_choice=mode)
    parents = {c: (p, layer) for c, (p, layer, _) in as_parent_map(tree).items()}
    assert parents == {1: (0, 2), 2: (1, 1), 3: (1, 1), 4: (3, 0)}
    reasons = {(s.parent, s.child, s.layer): s.reason for s in tree.skipped}
    assert reasons[(2, 3, 0)] == SKIP_BOTH_APPEARED
    assert tree.depth == 3 and tree.size == 5


@pytest.mark.parametrize("mode", ["strongest", "authors"])
def test_parent_fixed_child_appeared_edge_is_skipped(mode):
    sums = base_sums()
    sums[1, 1, 2] = 1.0  # layer 1: 1 -> 2, 1 -> 3
    sums[1, 1, 3] = 0.7
    sums[0, 1, 3] = 1.0  # layer 0: 1 (fixed) attends to 3 (appeared) -> skipped: 3 keeps its parent
    sums[0, 2, 4] = 0.5  # layer 0: 2 -> 4
    tree = build_tree_from_scores(sums_to_scores(sums), TOKENS5, SPECIAL5, 0.4, parent_choice=mode)
    parents = {c: (p, layer) for c, (p, layer, _) in as_parent_map(tree).items()}
    assert parents == {1: (0, 2), 2: (1, 1), 3: (1, 1), 4: (2, 0)}
    assert as_parent_map(tree)[4][2] == pytest.approx(0.5)
    reasons = {(s.parent, s.child, s.layer): s.reason for s in tree.skipped}
    assert reasons[(1, 3, 0)] == SKIP_PARENT_FIXED_CHILD_APPEARED


def test_the_two_parent_choices_differ_where_the_authors_loop_reuses_a_fresh_member():
    """Layer 1: 1 -> 2 joins, and 2 -> 3 in the same layer. The authors' loop reads row 2 after 2
    joined and adds 2 -> 3 at layer 1; "strongest" takes parents as of the start of the layer, so 3
    joins only at layer 0 (through its own edge there)."""
    sums = base_sums()
    sums[1, 1, 2] = 1.0
    sums[1, 2, 3] = 0.9
    sums[0, 2, 3] = 0.6
    authors = build_tree_from_scores(sums_to_scores(sums), TOKENS5, SPECIAL5, 0.4, parent_choice="authors")
    strongest = build_tree_from_scores(sums_to_scores(sums), TOKENS5, SPECIAL5, 0.4)
    assert as_parent_map(authors)[3][:2] == (2, 1)
    assert as_parent_map(strongest)[3][:2] == (2, 0)
    assert as_parent_map(strongest)[3][2] == pytest.approx(1.0)  # the largest entry of layer 0


def test_strongest_parent_wins_and_the_weaker_edge_is_recorded():
    sums = base_sums()
    sums[1, 1, 2] = 1.0  # 1 -> 2, 1 -> 3 at layer 1
    sums[1, 1, 3] = 0.9
    sums[0, 2, 4] = 0.5  # layer 0: both 2 and 3 reach 4; 3 is stronger
    sums[0, 3, 4] = 0.95
    tree = build_tree_from_scores(sums_to_scores(sums), TOKENS5, SPECIAL5, 0.4)
    assert as_parent_map(tree)[4][:2] == (3, 0)
    assert [(s.parent, s.child, s.reason) for s in tree.skipped if s.child == 4] == [(2, 4, SKIP_WEAKER)]
    authors = build_tree_from_scores(sums_to_scores(sums), TOKENS5, SPECIAL5, 0.4, parent_choice="authors")
    assert as_parent_map(authors)[4][:2] == (2, 0)  # the authors' loop: the lowest index first


def test_root_never_becomes_a_child():
    sums = base_sums()
    sums[1, 1, 0] = 1.0  # the top node attends strongly to [CLS]
    tree = build_tree_from_scores(sums_to_scores(sums), TOKENS5, SPECIAL5, 0.4)
    assert 0 not in as_parent_map(tree)
    assert [(s.parent, s.child, s.reason) for s in tree.skipped if s.layer == 1] == [
        (1, 0, SKIP_CHILD_IS_ROOT)
    ]


# ---- the [CLS] row exclusion ----------------------------------------------------------------------
def test_root_row_is_excluded_from_normalisation_edges_and_top_node():
    sums = base_sums()
    sums[1, 1, 2] = 1.0
    sums[1, 0, 3] = 50.0  # a huge [CLS] row entry: were it the normaliser, 1 -> 2 would score 0.02
    sums[0, 0, :] = 80.0  # and [CLS] would have by far the largest row sum (the top node rule)
    sums[0, 2, 3] = 2.0
    tree = build_tree_from_scores(sums_to_scores(sums), TOKENS5, SPECIAL5, 0.4)
    assert tree.top == 1  # not the root, despite its row
    parents = as_parent_map(tree)
    assert parents[2][:2] == (1, 1) and parents[2][2] == pytest.approx(1.0)
    assert parents[3][:2] == (2, 0) and parents[3][2] == pytest.approx(1.0)
    assert all(e.parent != 0 or e.child == tree.top for e in tree.edges)  # no edge out of the root row
    assert tree.normalisers[1] == pytest.approx(1.0) and tree.normalisers[0] == pytest.approx(2.0)


def test_top_node_ignores_diagonal_and_negative_entries():
    n = 5
    sums = np.zeros((3, n, n))
    sums[:, 3, 3] = 100.0  # the diagonal of token 3: dropped
    sums[:, 2, 1] = -100.0  # negative entries of token 2: dropped
    sums[:, 2, 4] = 1.0
    sums[:, 1, 2] = 0.6
    tree = build_tree_from_scores(sums_to_scores(sums), TOKENS5, SPECIAL5, 0.4)
    assert tree.top == 2


# ---- degenerate trees and bad input -------------------------------------------------------------
def test_threshold_so_high_that_no_edge_survives_gives_root_and_top_with_a_message():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(6, 4, 7, 7, generator=g)
    tree = build_tree_from_scores(scores, threshold=1.0)  # normalised scores are at most 1
    assert tree.size == 2 and tree.depth == 1
    assert [(e.parent, e.child) for e in tree.edges] == [(0, tree.top)]
    assert "threshold 1" in tree.message and "lower --threshold" in tree.message
    low = build_tree_from_scores(scores, threshold=0.05)
    assert low.size > 2 and low.message is None


def test_single_layer_and_single_token_inputs():
    one_layer = build_tree_from_scores(torch.rand(1, 2, 4, 4), threshold=0.4)
    assert one_layer.size == 2 and "single layer" in one_layer.message
    one_token = build_tree_from_scores(torch.rand(2, 2, 1, 1), ["[CLS]"], [True], 0.4)
    assert one_token.size == 1 and one_token.top is None and one_token.depth == 0
    assert "single token" in one_token.message


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0001, 2, float("nan"), "x"])
def test_threshold_outside_zero_one_is_an_input_error(bad):
    with pytest.raises(InputError, match="threshold"):
        build_tree_from_scores(torch.rand(3, 2, 4, 4), threshold=bad)


def test_bad_shapes_and_options_are_input_errors():
    with pytest.raises(InputError, match="shape"):
        build_tree_from_scores(torch.rand(3, 4, 5))
    with pytest.raises(InputError, match="tokens"):
        build_tree_from_scores(torch.rand(3, 2, 4, 4), ["a", "b"])
    with pytest.raises(InputError, match="parent_choice"):
        build_tree_from_scores(torch.rand(3, 2, 4, 4), parent_choice="nearest")
    with pytest.raises(InputError, match="consecutive"):
        build_tree_from_scores(torch.rand(3, 2, 4, 4), layers=[0, 2, 5])
    with pytest.raises(InputError, match="NaN"):
        build_tree_from_scores(torch.full((2, 1, 3, 3), float("nan")))


# ---- the library against the plain implementation -----------------------------------------------
@pytest.mark.parametrize("num_layers", [6, 12, 3])
@pytest.mark.parametrize("mode", ["strongest", "authors"])
def test_matches_plain_implementation_on_random_inputs(num_layers, mode):
    g = np.random.default_rng(num_layers * 7 + len(mode))
    sizes, skips = [], 0
    for trial in range(40):
        n = int(g.integers(2, 10))
        heads = int(g.integers(1, 4))
        # heavy-tailed, mostly positive scores give trees of every size
        scores = g.standard_normal((num_layers, heads, n, n)) * g.uniform(0.2, 1.0)
        scores = np.sign(scores) * np.abs(scores) ** g.uniform(1.0, 4.0) + g.uniform(-0.2, 0.3)
        tau = float(g.choice([0.1, 0.25, 0.4, 0.4, 0.6, 0.85]))
        tree = build_tree_from_scores(torch.tensor(scores), threshold=tau, parent_choice=mode)
        top, parents, skipped = plain_tree(scores, tau, mode)
        sizes.append(tree.size)
        skips += len(skipped)
        assert tree.top == top, trial
        got = as_parent_map(tree)
        assert set(got) == set(parents), trial
        for child, (parent, layer, score) in parents.items():
            assert got[child][:2] == (parent, layer), (trial, child)
            if score is not None:
                assert got[child][2] == pytest.approx(score, rel=1e-9), (trial, child)
        for node in tree.nodes:
            assert node.layer == (None if node.index == 0 else parents[node.index][1])
        if mode == "authors":  # the skip reasons follow the authors' three rules exactly
            mine = [
                (s.parent, s.child, s.layer, SKIP_CHILD_FIXED if s.reason == SKIP_CHILD_IS_ROOT else s.reason)
                for s in tree.skipped
            ]
            assert mine == skipped, trial
    # the random inputs exercise degenerate, small and large trees, and the skip rules
    assert min(sizes) == 2 and max(sizes) >= 6 and len(set(sizes)) >= 4
    assert mode != "authors" or skips > 10


def test_layer_sums_input_and_model_layer_numbers():
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(4, 3, 6, 6, generator=g).abs() ** 2
    a = build_tree_from_scores(scores, threshold=0.3)
    b = build_tree_from_scores(scores.sum(1), threshold=0.3, layers=[2, 3, 4, 5])
    assert [(e.parent, e.child, e.layer - 2) for e in b.edges] == [
        (e.parent, e.child, e.layer) for e in a.edges
    ]
    assert b.node(b.top).layer == 5  # the top node joins at the last layer


# ---- Attribution, pairs, export ------------------------------------------------------------------
def make_attribution(tokens, segments, *, seed=0, layers=3, heads=2, text_pair=None) -> Attribution:
    n = len(tokens)
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(layers, heads, n, n, generator=g).abs() ** 3
    attn = torch.softmax(torch.randn(layers, heads, n, n, generator=g), dim=-1)
    special = [t.startswith("[") or t.startswith("<") for t in tokens]
    return Attribution(
        scores=scores,
        attentions=attn,
        tokens=list(tokens),
        token_ids=list(range(n)),
        segment_ids=list(segments),
        special_mask=special,
        layers=list(range(layers)),
        target=1,
        target_mode="predicted",
        output="prob",
        output_value=0.83,
        baseline_values=[0.5] * layers,
        score_sums=[float(s) for s in scores.sum(dim=(1, 2, 3))],
        probabilities=[0.17, 0.83],
        predicted=1,
        rule="riemann-right",
        steps=20,
        model_id="tiny",
        text="the cat sat",
        text_pair=text_pair,
        label_names=["negative", "positive"],
        example_id="ex-1",
    )


def test_attribution_tree_carries_prediction_and_round_trips_through_json():
    attr = make_attribution(["[CLS]", "the", "cat", "sat", '"q\\', "[SEP]"], [0] * 6)
    tree = attr.tree(0.3)
    assert tree.label == "positive" and tree.probability == pytest.approx(0.83)
    assert tree.model_id == "tiny" and tree.example_id == "ex-1" and tree.text == "the cat sat"
    data = tree.to_json()
    again = AttributionTree.from_json(json.loads(json.dumps(data)))
    assert again == tree
    assert AttributionTree.from_json(json.dumps(data)) == tree
    assert data["size"] == tree.size and data["depth"] == tree.depth
    assert all(isinstance(e["score"], float) for e in data["edges"])


def test_sentence_pairs_with_two_separators():
    tokens = ["[CLS]", "the", "cat", "sat", "[SEP]", "a", "dog", "ran", "[SEP]"]
    segments = [0, 0, 0, 0, 0, 1, 1, 1, 1]
    attr = make_attribution(tokens, segments, seed=4, layers=4, text_pair="a dog ran")
    sums = np.zeros((4, 9, 9))
    sums[3, 6, 2] = 5.0  # top node: "dog" in the second segment
    sums[2, 6, 2] = 1.0  # dog <- cat (across segments)
    sums[2, 6, 8] = 0.8  # dog <- second [SEP]
    sums[1, 2, 4] = 1.0  # cat <- first [SEP]
    sums[0, 8, 7] = 1.0  # second [SEP] <- ran
    attr.scores = sums_to_scores(sums, heads=2).float()
    tree = attr.tree(0.4)
    parents = {c: (p, layer) for c, (p, layer, _) in as_parent_map(tree).items()}
    assert tree.root == 0 and tree.top == 6
    assert parents == {6: (0, 3), 2: (6, 2), 8: (6, 2), 4: (2, 1), 7: (8, 0)}
    again = AttributionTree.from_json(tree.to_json())
    assert again.segment_ids == segments and again.text_pair == "a dog ran" and again == tree


def test_roberta_style_special_tokens():
    tokens = ["<s>", "a", "film", "</s>", "</s>", "good", "</s>"]
    attr = make_attribution(tokens, [0] * 7, seed=2)
    tree = attr.tree(0.2)
    assert tree.root == 0 and tree.nodes[0].token == "<s>" and tree.nodes[0].layer is None
    assert tree.special_mask == [True, False, False, True, True, False, True]


def parse_dot(text: str):
    """A minimal DOT reader: node ids with labels, edges, and structural sanity."""
    assert text.startswith("digraph ") and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    body = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # strip quoted strings (labels)
    assert body.count('"') % 2 == 0
    nodes = set(re.findall(r"^\s*(t\d+) \[", text, flags=re.M))
    edges = re.findall(r"^\s*(t\d+) -> (t\d+) \[", text, flags=re.M)
    for line in body.splitlines()[1:-1]:
        assert line.strip().endswith(";") or line.strip().endswith("}"), line
    labels = dict(re.findall(r'^\s*(t\d+) \[label="((?:[^"\\]|\\.)*)"', text, flags=re.M))
    return nodes, edges, labels


def test_dot_export_parses_and_matches_the_tree():
    attr = make_attribution(["[CLS]", "the", 'say "hi"', "back\\slash", "[SEP]"], [0] * 5, seed=7)
    tree = attr.tree(0.2)
    nodes, edges, labels = parse_dot(tree.to_dot())
    assert nodes == {f"t{n.index}" for n in tree.nodes}
    assert edges == [(f"t{e.parent}", f"t{e.child}") for e in tree.edges]
    for n in tree.nodes:
        unescaped = labels[f"t{n.index}"].replace('\\"', '"').replace("\\\\", "\\")
        assert unescaped.startswith(n.token)


def test_text_rendering_lists_every_node_once():
    attr = make_attribution(["[CLS]", "the", "cat", "sat", "down", "[SEP]"], [0] * 6, seed=9)
    tree = attr.tree(0.3)
    text = tree.to_text()
    lines = text.splitlines()
    assert len(lines) == tree.size and lines[0].startswith("[CLS] #0")
    for e in tree.attention_edges():
        assert f"#{e.child}  (layer {e.layer}, {e.score:.2f})" in text


def test_drawing_writes_png_and_svg(tmp_path):
    from attattr.render.plots.tree import draw_tree

    words = [f"w{i}" for i in range(38)]
    attr = make_attribution(["[CLS]", *words, "[SEP]"], [0] * 40, seed=11, layers=6)
    tree = attr.tree(0.4)
    draw_tree(tree, tmp_path / "tree")
    png, svg = (tmp_path / "tree.png"), (tmp_path / "tree.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = svg.read_text()
    assert "<svg" in text and "positive" in text and "w37" in text
    # a degenerate tree draws too
    draw_tree(attr.tree(1.0), tmp_path / "empty")
    assert (tmp_path / "empty.png").stat().st_size > 5_000
    assert math.isfinite(tree.edges[0].score)


def test_tree_title_names_the_prediction_or_the_target():
    from attattr.analyses.tree.build import tree_title

    attr = make_attribution(["[CLS]", "the", "cat", "sat", "[SEP]"], [0] * 5, seed=3)
    tree = attr.tree(0.3)
    assert tree_title(tree) == "prediction: positive (p = 0.830)"
    tree.predicted_label = "negative"  # the attributed class is not the predicted one
    assert tree_title(tree) == "target: positive (p = 0.830); predicted: negative"
    assert f'label="{tree_title(tree)}"' in tree.to_dot()
    tree.label = None
    assert tree_title(tree) == ""
