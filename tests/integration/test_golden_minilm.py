"""The current code against the golden outputs of the quick `minilm-rt` build (tests/golden/capture.py,
saved from the code before the layered layout): attributions of two sentences (default rule and
Gauss-Legendre with 3 nodes), attattr and taylor head importance on 8 dev examples, one tree and
the patterns mined from 8 training examples.

The quick build (`quick_rt_home`) trains for a few steps; it is deterministic on one machine, so the
golden files hold its numbers. Floats are compared within atol 1e-5 + rtol 1e-5: the fine-tuning
itself runs on this machine's CPU, whose rounding may differ in the last bits from the machine that
wrote the files, and that difference grows through 30 optimiser steps and six layers. Discrete
outputs (tokens, predictions, rankings, the tree, patterns) must be identical.
"""

from __future__ import annotations

import json

import pytest

from tests.golden import capture

pytestmark = pytest.mark.integration


def test_minilm_matches_golden(quick_rt_model):
    data, tensors = capture.minilm(capture.Api("new"), quick_rt_model)
    try:
        capture.check("minilm", data, tensors, atol=1e-5, rtol=1e-5)
    except AssertionError as exc:
        # the build's numbers depend on its thread count (training uses every core): say so
        golden = json.loads(capture.SOURCE_FILE.read_text())["minilm"]["build"]["threads"]
        here = (quick_rt_model.manifest or {}).get("threads")
        if here != golden:
            raise AssertionError(
                f"{exc}\n(the quick build trained with {here} threads, the golden one with {golden})"
            ) from None
        raise
