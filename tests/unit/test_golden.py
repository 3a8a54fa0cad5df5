"""The current code against the golden outputs saved from the code before the layered layout
(tests/golden/capture.py): attributions under every rule, output and target; head importance of
every method with effectiveness and pruning curves; trees and a tree-stats summary; mined patterns
and an attack report, all on the tiny models of conftest.py.

Discrete outputs (tokens, predictions, rankings, trees, patterns, attack counts) must be identical.
Floats are compared within atol 1e-6 + rtol 1e-5 rather than bit for bit: the files were written on
one machine, and another CPU (a CI runner with other vector instructions, or another BLAS path) may
round the last bits of a matrix product differently.
"""

from __future__ import annotations

import pytest

from tests.golden import capture

ATOL, RTOL = 1e-6, 1e-5


@pytest.fixture(scope="module")
def api() -> capture.Api:
    # the layered layout only: the test is about the code as it is now
    return capture.Api("new")


@pytest.mark.parametrize("name", sorted(capture.TINY))
def test_matches_golden(api, name):
    data, tensors = capture.TINY[name](api)
    capture.check(name, data, tensors, atol=ATOL, rtol=RTOL)


def test_golden_files_cover_every_rule_method_and_choice():
    """The saved files hold what they claim (a regeneration that lost an item would pass silently)."""
    attributions, tensors = capture.read("tiny_attributions")
    rules = {key.split("/")[1] for key in attributions if key.startswith("bert/")}
    assert rules >= set(capture.RULES)
    combos = {tuple(key.split("/")[2:4]) for key in attributions if key.startswith("bert/riemann-right/")}
    assert combos == {(o, str(t)) for o in capture.OUTPUTS for t in capture.TARGETS}
    assert any(a["text_pair"] for a in attributions.values())
    assert all(a["scores"]["__tensor__"] in tensors for a in attributions.values())

    heads, _ = capture.read("tiny_heads")
    assert set(heads["importance"]) == {
        "attattr",
        "attention",
        "taylor",
        "accuracy-diff",
        "random-0",
        "random-1",
    }
    assert set(heads["pruning"]["methods"]) == {"attattr", "attention", "taylor", "accuracy-diff", "random"}

    trees, _ = capture.read("tiny_trees")
    assert {key.split("/")[1] for key in trees["trees"]} == {"strongest", "authors"}
    assert any(t["size"] > 3 for t in trees["trees"].values())

    triggers, _ = capture.read("tiny_triggers")
    assert triggers["mined"]["skipped"] >= 1 and len(triggers["attack"]["results"]) == 2


def test_comparison_catches_a_changed_number_and_a_changed_ranking():
    """Identical values pass; a number beyond the tolerance, a swapped pair in a ranking, a lost
    field or a changed tensor entry fails with the path of the difference."""
    expected, expected_tensors = capture.read("tiny_heads")
    actual = capture.normalise(expected)
    capture.assert_matches(actual, expected, {}, expected_tensors, atol=ATOL, rtol=RTOL)

    scores = actual["importance"]["taylor"]["scores"]
    scores[1][2] += 2e-6 + 2e-5 * abs(scores[1][2])
    with pytest.raises(AssertionError, match=r"importance/taylor/scores\[1\]\[2\]"):
        capture.assert_matches(actual, expected, {}, expected_tensors, atol=ATOL, rtol=RTOL)

    actual = capture.normalise(expected)
    ranking = actual["importance"]["attattr"]["ranking"]
    ranking[0], ranking[1] = ranking[1], ranking[0]
    with pytest.raises(AssertionError, match=r"importance/attattr/ranking\[0\]"):
        capture.assert_matches(actual, expected, {}, expected_tensors, atol=ATOL, rtol=RTOL)

    # a field the golden file has may not vanish; one the current code adds is not compared
    actual = capture.normalise(expected)
    del actual["pruning"]["methods"]["taylor"]["accuracy"]
    with pytest.raises(AssertionError, match=r"pruning/methods/taylor: missing \['accuracy'\]"):
        capture.assert_matches(actual, expected, {}, expected_tensors, atol=ATOL, rtol=RTOL)
    actual = capture.normalise(expected)
    actual["pruning"]["methods"]["taylor"]["new_field"] = 1
    capture.assert_matches(actual, expected, {}, expected_tensors, atol=ATOL, rtol=RTOL)

    attributions, tensors = capture.read("tiny_attributions")
    changed = {k: v.clone() for k, v in tensors.items()}
    key = "bert/gauss-legendre/prob/predicted/a1/scores"
    changed[key][0, 1, 2, 3] += 1e-4
    with pytest.raises(AssertionError, match="bert/gauss-legendre/prob/predicted/a1/scores"):
        capture.assert_matches(attributions, attributions, changed, tensors, atol=ATOL, rtol=RTOL)
