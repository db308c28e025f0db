"""Every bad input gives one clear line on stderr and exit code 2 (no traceback) through the real
``alti-onnx`` console script, and a typed exception with the same message through the Python API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from alti_onnx import Explainer, InputError, MissingTokenizerError, ModelPathError
from alti_onnx.errors import SelfCheckError
from graph_rewrites import ModelLoadError, PatternNotFoundError, load_model

FIXTURES = Path(__file__).parent / "fixtures"
BERT = FIXTURES / "tiny-bert"
LONG_TEXT = " ".join(["word"] * 100)  # the tiny models take 64 positions


def _console_script() -> str:
    beside = Path(sys.executable).with_name("alti-onnx")
    found = str(beside) if beside.exists() else shutil.which("alti-onnx")
    if found is None:
        pytest.skip("the alti-onnx console script is not installed")
    return found


def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [_console_script(), *map(str, args)], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit code 2, exactly one non-empty stderr line starting with 'error:' holding ``words``."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    line = lines[0]
    assert line.startswith("error:"), line
    for word in words:
        assert word in line, (word, line)
    return line


# --------------------------------------------------------------------------- bad files, built once


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _mlp_graph(path: Path) -> Path:
    """A valid graph with no attention at all: MatMul + Relu."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    return _save(helper.make_graph(nodes, "mlp", [x], [y], [w]), path)


def _lonely_softmax_graph(path: Path) -> Path:
    """A valid graph with a Softmax that no probs x values MatMul follows."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Softmax", ["h"], ["p"], axis=-1),
        helper.make_node("Relu", ["p"], ["y"]),
    ]
    return _save(helper.make_graph(nodes, "softmax", [x], [y], [w]), path)


def _quantized_dir(path: Path) -> Path:
    """tiny-bert with int8 weights (onnxruntime dynamic quantization), tokenizer and configs beside it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path.mkdir()
    shutil.copy(BERT / "model.onnx", path / "float.onnx")
    quantize_dynamic(str(path / "float.onnx"), str(path / "model.onnx"), weight_type=QuantType.QInt8)
    (path / "float.onnx").unlink()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(BERT / name, path / name)
    return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "text.onnx").write_text("this is a text file, not an ONNX model\n")
    (root / "empty.onnx").write_bytes(b"")
    data = (BERT / "model.onnx").read_bytes()
    (root / "truncated.onnx").write_bytes(data[: len(data) // 2])
    _mlp_graph(root / "mlp.onnx")
    _lonely_softmax_graph(root / "softmax.onnx")
    _quantized_dir(root / "quantized")
    (root / "no-tokenizer").mkdir()
    shutil.copy(BERT / "model.onnx", root / "no-tokenizer" / "model.onnx")
    (root / "empty-dir").mkdir()
    (root / "a-file").write_text("a file where a folder is expected\n")
    (root / "a-folder.onnx").mkdir()
    return root


# --------------------------------------------------------------------------- explain: CLI and API


@dataclass(frozen=True)
class Case:
    """``alti-onnx explain MODEL --text TEXT [extra]`` and ``Explainer(MODEL, tokenizer).explain(TEXT)``."""

    model: Callable[[Path], Path]
    text: str
    error: type[Exception]
    words: tuple[str, ...]
    tokenizer: Callable[[Path], Path] | None = None


CASES = {
    "missing-file": Case(lambda b: b / "missing.onnx", "the cat", ModelPathError, ("model not found", "missing.onnx")),
    "missing-directory": Case(lambda b: b / "no" / "such" / "dir", "the cat", ModelPathError, ("model not found", "dir")),
    "directory-without-model": Case(lambda b: b / "empty-dir", "the cat", ModelPathError, ("no model.onnx", "empty-dir")),
    "random-bytes": Case(lambda b: b / "random.onnx", "the cat", ModelLoadError, ("random.onnx", "not a valid ONNX model")),
    "text-file": Case(lambda b: b / "text.onnx", "the cat", ModelLoadError, ("text.onnx", "not a valid ONNX model")),
    "empty-file": Case(lambda b: b / "empty.onnx", "the cat", ModelLoadError, ("empty.onnx", "not a valid ONNX model")),
    "truncated-onnx": Case(
        lambda b: b / "truncated.onnx", "the cat", ModelLoadError, ("truncated.onnx", "not a valid ONNX model", "truncated")
    ),
    "no-attention-block": Case(
        lambda b: b / "mlp.onnx", "the cat", PatternNotFoundError, ("no attention block found", "step 'softmax'", "no Softmax")
    ),
    "softmax-without-attention": Case(
        lambda b: b / "softmax.onnx",
        "the cat",
        PatternNotFoundError,
        ("no attention block found", "step 'probs x values'", "Softmax", "expected MatMul(probs, values)", "Relu"),
    ),
    # dynamic int8: W_O is dequantized, but the run-time activation rounding fails the default self-check
    "quantized-weights": Case(
        lambda b: b / "quantized", "the cat", SelfCheckError, ("self-check failed", "dynamically quantized", "int8")
    ),
    "missing-tokenizer": Case(
        lambda b: b / "no-tokenizer", "the cat", MissingTokenizerError, ("tokenizer not found", "tokenizer.json", "--tokenizer")
    ),
    "tokenizer-not-json": Case(
        lambda b: BERT, "the cat", MissingTokenizerError, ("text.onnx", "not a tokenizers JSON file"), tokenizer=lambda b: b / "text.onnx"
    ),
    "tokenizer-path-missing": Case(
        lambda b: BERT, "the cat", MissingTokenizerError, ("tokenizer not found", "nope.json"), tokenizer=lambda b: b / "nope.json"
    ),
    "empty-text": Case(lambda b: BERT, "", InputError, ("empty text",)),
    "whitespace-text": Case(lambda b: BERT, " \t\n ", InputError, ("empty text",)),
    "text-too-long": Case(lambda b: BERT, LONG_TEXT, InputError, ("text too long", "102 tokens", "at most 64")),
}


@pytest.mark.parametrize("name", CASES)
def test_explain_cli_error(name: str, bad: Path) -> None:
    case = CASES[name]
    extra = ["--tokenizer", case.tokenizer(bad)] if case.tokenizer else []
    assert_one_line_error(run_cli("explain", case.model(bad), "--text", case.text, *extra), *case.words)


@pytest.mark.parametrize("name", CASES)
def test_explain_api_error(name: str, bad: Path) -> None:
    case = CASES[name]
    tokenizer = case.tokenizer(bad) if case.tokenizer else None
    with pytest.raises(case.error) as info:
        Explainer(case.model(bad), tokenizer=tokenizer).explain(case.text)
    message = str(info.value)
    assert "\n" not in message and message
    for word in case.words:
        assert word in message, (word, message)


def test_pattern_error_names_the_failed_step(bad: Path) -> None:
    with pytest.raises(PatternNotFoundError) as info:
        Explainer(bad / "softmax.onnx", tokenizer=BERT / "tokenizer.json")
    assert info.value.step == "probs x values"
    with pytest.raises(PatternNotFoundError) as info:
        Explainer(bad / "mlp.onnx", tokenizer=BERT / "tokenizer.json")
    assert info.value.step == "softmax"


def test_text_too_long_in_a_batch_is_an_input_error() -> None:
    with pytest.raises(InputError, match="text too long"):
        Explainer(BERT).explain(["the cat", LONG_TEXT])


@pytest.mark.parametrize("target", [99, -99])
def test_target_out_of_range(target: int) -> None:
    line = assert_one_line_error(run_cli("explain", BERT, "--text", "the cat sat", "--target", target), "target position")
    assert f"{target} is outside the 5 tokens" in line
    explanation = Explainer(BERT).explain("the cat sat")
    with pytest.raises(IndexError, match=f"target position {target} is outside the 5 tokens"):
        explanation.attribution(target)


def test_error_message_is_printed_verbatim(tmp_path: Path) -> None:
    """Square brackets in a path are not swallowed (or choked on) as console markup."""
    for name in ("[bold]missing.onnx", "[/x]missing.onnx"):
        line = assert_one_line_error(run_cli("explain", tmp_path / name, "--text", "hi"), "model not found")
        assert name in line


# --------------------------------------------------------------------------- inspect, instrument, export


@pytest.mark.parametrize("model", ["random.onnx", "text.onnx", "truncated.onnx"])
def test_inspect_non_onnx(model: str, bad: Path) -> None:
    assert_one_line_error(run_cli("inspect", bad / model), model, "not a valid ONNX model")
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load_model(bad / model)


def test_dynamic_int8_is_explained_from_the_cli_with_a_wider_tolerance(bad: Path, tmp_path: Path) -> None:
    """The default self-check refuses dynamic int8 (above); --self-check-tolerance accepts it on
    explain and batch, with the same numbers as the API."""
    done = run_cli("explain", bad / "quantized", "--text", "the cat", "--self-check-tolerance", "2e-2")
    assert done.returncode == 0, done.stderr
    assert "self-check: max reconstruction error" in done.stdout
    corpus, output = tmp_path / "texts.txt", tmp_path / "out.jsonl"
    corpus.write_text("the cat\na quick brown fox\n")
    refused = run_cli("batch", bad / "quantized", "--input", corpus, "--output", output)
    assert_one_line_error(refused, "self-check failed", "dynamically quantized")
    output.unlink(missing_ok=True)
    done = run_cli("batch", bad / "quantized", "--input", corpus, "--output", output, "--self-check-tolerance", "2e-2")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    want = Explainer(bad / "quantized", self_check_tolerance=2e-2).explain(["the cat", "a quick brown fox"])
    for record, explanation in zip(records, want):
        np.testing.assert_allclose(record["attribution"], explanation.attribution(), atol=1e-6)


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_bad_self_check_tolerance(value: str) -> None:
    result = run_cli("explain", BERT, "--text", "the cat", "--self-check-tolerance", value)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "self-check" in result.stderr


def test_inspect_missing_and_quantized(bad: Path) -> None:
    assert_one_line_error(run_cli("inspect", bad / "missing.onnx", "--json"), "model not found", "missing.onnx")
    assert run_cli("inspect", bad / "quantized").returncode == 0  # dynamic int8: W_O is dequantized


@pytest.mark.parametrize(
    "output, words",
    [
        (lambda b: b / "a-file" / "out.onnx", ("cannot write", "a-file is not a directory")),
        (lambda b: b / "a-folder.onnx", ("cannot write", "a-folder.onnx", "Is a directory")),
    ],
    ids=["parent-is-a-file", "output-is-a-directory"],
)
def test_instrument_unwritable_output(output, words, bad: Path) -> None:
    assert_one_line_error(run_cli("instrument", BERT, output(bad)), *words)


def test_instrument_bad_model(bad: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("instrument", bad / "mlp.onnx", tmp_path / "out.onnx"), "step 'softmax'")
    assert not (tmp_path / "out.onnx").exists()


def test_explain_json_unwritable(bad: Path) -> None:
    assert_one_line_error(
        run_cli("explain", BERT, "--text", "the cat", "--json", bad / "a-file" / "out.json"),
        "cannot write",
        "a-file is not a directory",
    )


def test_export_missing_directory(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("export", tmp_path / "no-such-model", tmp_path / "out"), "model directory not found")
    assert not (tmp_path / "out").exists()


def test_unknown_provider() -> None:
    from alti_onnx.errors import RuntimeFailure

    assert_one_line_error(
        run_cli("explain", BERT, "--text", "the cat", "--provider", "BogusExecutionProvider"),
        "unknown onnxruntime provider",
        "BogusExecutionProvider",
        "CPUExecutionProvider",
    )
    with pytest.raises(RuntimeFailure, match="unknown onnxruntime provider 'BogusExecutionProvider'"):
        Explainer(BERT, providers=["BogusExecutionProvider"])
