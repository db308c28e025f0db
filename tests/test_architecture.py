"""The layout docs/architecture.md describes, held by the code: no import cycles, no module reading
another's private names, callers that never branch on the explainer's class, one graph pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import onnx_ir as ir
import pytest

from tests.fixture_cases import FIXTURES

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("alti_onnx", "graph_rewrites")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _module_level_imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken) for every import run when the module loads: not inside a
    function (the CLI imports lazily on purpose) and not under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []

    def visit(statements) -> None:
        for node in statements:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                names = [alias.name for alias in node.names]
                submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
                if len(submodules) < len(names):  # names the module itself defines
                    found.append((base, names))
                found.extend((module, []) for module in submodules)  # "from package import module"
            elif isinstance(node, ast.Import):
                found.extend((alias.name, []) for alias in node.names)

    visit(tree.body)
    return [(module, names) for module, names in found if module in MODULES]


def _graph() -> dict[str, set[str]]:
    return {name: {m for m, _ in _module_level_imports(name, path) if m != name} for name, path in MODULES.items()}


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: two modules that import each other are reported."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from graph_rewrites import b\n")
    b.write_text("import graph_rewrites.a\n")
    monkeypatch.setitem(MODULES, "graph_rewrites.a", a)
    monkeypatch.setitem(MODULES, "graph_rewrites.b", b)
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_the_import_graph_has_no_cycle()


def test_no_module_imports_another_modules_private_names():
    offences = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    offences.append(f"{name}: from {'.' * node.level}{node.module or ''} import {', '.join(private)}")
    assert not offences, offences


@pytest.mark.parametrize("module", ["alti_onnx.cli.app", "alti_onnx.corpus.run", "alti_onnx.corpus.distributed"])
def test_callers_never_branch_on_the_explainers_class(module):
    tree = ast.parse(MODULES[module].read_text())
    branches = [ast.unparse(node) for node in ast.walk(tree)
                if isinstance(node, ast.Call) and ast.unparse(node.func) in ("isinstance", "type")
                and any(word in ast.unparse(node) for word in ("Explainer", "Seq2Seq", "EncoderDecoder", "SingleGraph"))]
    named = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in (
        "Seq2SeqExplainer", "EncoderDecoderExplainer", "SingleGraphExplainer", "Seq2SeqExplanation")]
    assert not branches and not named, (branches, named)


def test_every_layout_is_an_explainer_and_closes():
    from alti_onnx import Explainer

    from alti_onnx.errors import InputError

    for folder in (FIXTURES / "tiny-bert", FIXTURES / "tiny-t5-seq2seq"):
        with Explainer(folder, cache=False) as explainer:
            assert isinstance(explainer, Explainer)
            assert explainer.explain("the cat").tokens
        assert explainer.closed
        with pytest.raises(InputError, match="was closed"):
            explainer.explain("the cat")


def _counting_conversions(monkeypatch) -> dict[str, int]:
    """Count proto -> IR and IR -> proto conversions (every path onnx-ir offers; one that calls another
    counts once)."""
    counts = {"from_proto": 0, "to_proto": 0}
    inside = []
    for module in (ir, ir.serde):
        for name, key in (("from_proto", "from_proto"), ("deserialize_model", "from_proto"),
                          ("to_proto", "to_proto"), ("serialize_model", "to_proto")):
            original = getattr(module, name, None)
            if original is None:
                continue

            def counted(*args, _original=original, _key=key, **kwargs):
                if not inside:
                    counts[_key] += 1
                inside.append(_key)
                try:
                    return _original(*args, **kwargs)
                finally:
                    inside.pop()

            monkeypatch.setattr(module, name, counted)
    return counts


def test_a_plain_export_is_converted_to_ir_once_per_load(monkeypatch):
    from graph_rewrites import analyse_file

    counts = _counting_conversions(monkeypatch)
    analysed = analyse_file(FIXTURES / "tiny-bert" / "model.onnx")
    list(analysed.segments())
    assert analysed.blocks()
    assert counts == {"from_proto": 1, "to_proto": 0}, counts


def test_the_residual_forms_produce_exactly_the_kinds_the_math_knows():
    from graph_rewrites.block import BLOCK_KINDS
    from graph_rewrites.residual_forms import FORM_KINDS, FORMS

    from alti_onnx.decomposition.block_kinds import KINDS

    assert set(FORM_KINDS) == set(BLOCK_KINDS) == set(KINDS)
    assert len({form.name for form in FORMS}) == len(FORMS)


@pytest.fixture(scope="module")
def fused_bert(tmp_path_factory):
    """tiny-bert through onnxruntime's transformer optimizer: fused Attention, SkipLayerNormalization,
    BiasGelu."""
    optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = False  # its mask index is a contrib output no inference gives a rank
    folder = tmp_path_factory.mktemp("fused-bert")
    optimizer.optimize_model(str(FIXTURES / "tiny-bert" / "model.onnx"), model_type="bert", num_heads=4,
                             hidden_size=32, optimization_options=options).save_model_to_file(str(folder / "model.onnx"))
    return folder / "model.onnx"


def test_a_fused_export_is_converted_to_ir_once_and_serialized_once(fused_bert, monkeypatch):
    from graph_rewrites import analyse_file

    counts = _counting_conversions(monkeypatch)
    analysed = analyse_file(fused_bert)
    list(analysed.segments())
    assert len(analysed.blocks()) == 2
    assert counts == {"from_proto": 1, "to_proto": 1}, counts


def test_the_pipeline_reads_a_fused_export_as_unfusing_then_analysing_it_apart_does(fused_bert):
    """Reusing the unfusing's IR as the analysis copy describes every block exactly as a fresh copy does."""
    import numpy as np

    from graph_rewrites import analyse_file, analyze_attention, load_model, unfuse

    analysed = analyse_file(fused_bert)
    apart = analyze_attention(unfuse(load_model(fused_bert, load_weights=False)), base_dir=fused_bert.parent)
    assert [b.summary() for b in analysed.analysis.blocks] == [b.summary() for b in apart.blocks]
    for ours, theirs in zip(analysed.analysis.blocks, apart.blocks):
        for name in ("out_proj_weight", "out_proj_bias", "norm_weight", "norm_bias"):
            np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))
