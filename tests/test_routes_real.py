"""The routes of SmolLM2-135M-Instruct (pre-LN, GQA, 30 layers) against the float64 reference by hooks
on the Hugging Face model: every edge's weight (attention per head and source, the residual, the
feed-forward block's output and input, the last layer's from the final residual) and the logit lens."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from alti_onnx import Explainer  # noqa: E402
from alti_onnx.decomposition.components import ffn_components  # noqa: E402
from alti_onnx.results.routes import RouteQuery  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

PROMPT = "When Mary and John went to the store, John gave a drink to"
#: fp32 ONNX against the float64 model, absolute, on shares of 0 to 1
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def smollm():
    pytest.importorskip("gguf")
    from models.smollm import build_smollm2, load_smollm2

    with Explainer(build_smollm2()) as explainer:
        yield explainer, load_smollm2()


def test_smollm2_routes_match_the_reference(smollm) -> None:
    from models.reference import reference_captures
    from models.reference_math import component_contributions
    from models.reference_routes import final_residual, logit_lens

    explainer, model = smollm
    explanation = explainer.explain(PROMPT, routes=RouteQuery(0.0, lens=3))
    routes = explanation.routes
    ids = explainer.tokenizer.encode(PROMPT).ids
    captures, _ = reference_captures(copy.deepcopy(model), ids)
    z = final_residual(copy.deepcopy(model), ids)
    target = len(ids) - 1
    want = [component_contributions(capture) for capture in captures]
    streams = [c.x for c in captures[1:]] + [z]
    checked = {"attention": 0, "attention_residual": 0, "ffn": 0, "ffn_residual": 0}
    for edge in routes.edges:
        heads, residual = want[edge.layer]
        if edge.kind == "attention":
            expected = heads[edge.head, edge.target, edge.source]
        elif edge.kind == "attention_residual":
            expected = residual[edge.target]
        else:
            i = edge.target
            shares = ffn_components(captures[edge.layer].block_output[i:i + 1], streams[edge.layer][i:i + 1])[0]
            expected = shares[1 if edge.kind == "ffn" else 0]
        assert edge.weight == pytest.approx(expected, abs=TOLERANCE), edge
        checked[edge.kind] += 1
    assert min(checked.values()) > 0 and routes.position == target
    assert {e.target for e in routes.edges if e.layer == len(captures) - 1} == {target}
    lens = logit_lens(copy.deepcopy(model), np.stack([captures[0].x[0], z[target]]))
    for node, row in zip([("embedding", None, 0), routes.graph.nodes[-1]], lens):
        for item in routes.lens[node]:
            assert item.logit == pytest.approx(row[item.id], abs=1e-3 * max(1.0, abs(row[item.id])))
    assert routes.lens[routes.graph.nodes[-1]][0].id == explanation.next_token.index
