"""Every bad input gives one clear line on stderr and exit code 2 (no traceback) through the real
``alti-onnx`` console script, and a typed exception with the same message through the Python API."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, cli_env, console_script, run_cli
from onnx import TensorProto, helper, numpy_helper

from alti_onnx import Explainer, InputError, MissingTokenizerError, ModelPathError
from alti_onnx.errors import SelfCheckError
from graph_rewrites import ModelLoadError, PatternNotFoundError, load_model

FIXTURES = Path(__file__).parent / "fixtures"
BERT = FIXTURES / "tiny-bert"
LONG_TEXT = " ".join(["word"] * 100)  # the tiny models take 64 positions


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


# --------------------------------------------------------------------------- cases that used to end in a traceback


def _blocking(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment in which ``modules`` cannot be imported (as on a runtime-only install)."""
    folder = tmp_path / "blocked"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(f"import sys\nfor name in {list(modules)!r}:\n    sys.modules[name] = None\n")
    return cli_env(PYTHONPATH=str(folder), ALTI_ONNX_CACHE=str(tmp_path / "empty-cache"))


def _copy(tmp_path: Path, name: str, source: Path = BERT) -> Path:
    folder = tmp_path / name
    shutil.copytree(source, folder)
    return folder


def test_a_truncated_weight_inside_the_graph(tmp_path: Path) -> None:
    folder = _copy(tmp_path, "truncated-weight")
    model = onnx.load(str(folder / "model.onnx"))
    tensor = model.graph.initializer[3]
    tensor.raw_data = tensor.raw_data[: len(tensor.raw_data) // 2]
    onnx.save(model, str(folder / "model.onnx"))
    for command in ("explain", "inspect"):
        extra = ["--text", "the cat"] if command == "explain" else []
        assert_one_line_error(run_cli(command, folder, *extra), "is damaged", f"tensor {tensor.name!r}", "holds 64 bytes")


@pytest.mark.parametrize("name, content, words", [
    ("config.json", b"{not json", ("config", "is not valid JSON")),
    ("config.json", b"[1, 2]", ("config", "not an object")),
    ("config.json", b"\xff\xfe", ("config", "is not UTF-8")),
    ("tokenizer_config.json", b"{\"model_max_length\": ", ("tokenizer config", "is not valid JSON")),
    ("tokenizer.json", b"\x00\x01 not json", ("tokenizer.json is not a tokenizers JSON file",)),
])
def test_corrupt_side_files(tmp_path: Path, name: str, content: bytes, words: tuple[str, ...]) -> None:
    folder = _copy(tmp_path, "corrupt")
    (folder / name).write_bytes(content)
    assert_one_line_error(run_cli("explain", folder, "--text", "the cat"), *words)


@pytest.mark.parametrize("where", ["model", "tokenizer", "config", "corpus", "data"])
def test_devices_are_refused_not_read_forever(tmp_path: Path, where: str) -> None:
    folder = _copy(tmp_path, "devices")
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat\n")
    if where == "model":
        result = run_cli("explain", "/dev/zero", "--text", "the cat", timeout=60)
        assert_one_line_error(result, "/dev/zero is not a regular file")
    elif where == "tokenizer":
        assert_one_line_error(run_cli("explain", BERT, "--text", "hi", "--tokenizer", "/dev/zero", timeout=60), "not a regular file")
    elif where == "config":
        (folder / "config.json").unlink()
        (folder / "config.json").symlink_to("/dev/zero")
        assert_one_line_error(run_cli("explain", folder, "--text", "hi", timeout=60), "config", "not a regular file")
    elif where == "corpus":
        result = run_cli("batch", BERT, "--input", "/dev/zero", "--output", tmp_path / "out.jsonl", timeout=60)
        assert_one_line_error(result, "/dev/zero is not a regular file")
    else:
        result = run_cli("evaluate", FIXTURES / "tiny-bert-classifier", "--data", "/dev/zero", "--out", tmp_path / "e", timeout=60)
        assert_one_line_error(result, "/dev/zero is not a regular file")


def test_invalid_utf8_on_the_command_line() -> None:
    assert_one_line_error(run_cli("explain", BERT, "--text", b"the \xff cat"), "not valid Unicode", "lone surrogate")


@pytest.mark.parametrize("args, words", [
    (["--lengths", "0"], ("--lengths expects comma-separated positive integers", "'0'")),
    (["--lengths", "-5"], ("--lengths expects",)),
    (["--lengths", "abc"], ("--lengths expects",)),
    (["--lengths", ""], ("--lengths expects",)),
    (["--batch-sizes", "0"], ("--batch-sizes expects",)),
    (["--lengths", "100"], ("--lengths asks for 100 tokens, the model takes at most 64",)),
])
def test_bench_options(args: list[str], words: tuple[str, ...]) -> None:
    assert_one_line_error(run_cli("bench", BERT, *args), *words)


@pytest.mark.parametrize("args, words", [
    (["explain", BERT], ("Missing option '--text'",)),
    (["explain", BERT, "--text", "hi", "--target", "abc"], ("--target takes a token position or 'mean'", "'abc'")),
    (["batch", BERT, "--input", BERT / "texts.json", "--output", "x.jsonl", "--batch-size", "0"], ("'--batch-size'",)),
    (["no-such-command"], ("No such command 'no-such-command'",)),
    (["explain", BERT, "--text", "hi", "--no-such-option"], ("No such option",)),
])
def test_usage_errors_are_one_line(args: list[object], words: tuple[str, ...]) -> None:
    assert_one_line_error(run_cli(*args), *words)


def test_markup_in_tensor_names_is_printed_as_it_is(tmp_path: Path) -> None:
    """A tensor named '[bold red]...[/]' is shown as those characters, not read as console markup."""
    folder = _copy(tmp_path, "markup")
    model = onnx.load(str(folder / "model.onnx"))
    renamed = {}
    for node in model.graph.node:
        for k, name in enumerate(node.output):
            renamed[name] = f"[bold red]{name}[/]"
            node.output[k] = renamed[name]
        for k, name in enumerate(node.input):
            node.input[k] = renamed.get(name, name)
    for output in model.graph.output:
        output.name = renamed.get(output.name, output.name)
    onnx.save(model, str(folder / "model.onnx"))
    result = run_cli("inspect", folder)
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert "red]" in result.stdout  # shown (cut to the column) as the characters it is
    blocks = json.loads(run_cli("inspect", folder, "--json").stdout)["blocks"]
    assert all(b["probs"].startswith("[bold red]") for b in blocks)
    assert run_cli("explain", folder, "--text", "the cat sat").returncode == 0


def test_demo_without_its_model_says_how_to_get_one(tmp_path: Path) -> None:
    """A pip-installed alti-onnx has no recipes: demo says where the default model comes from."""
    result = run_cli("demo", env=_blocking(tmp_path, "torch", "transformers", "optimum"))
    assert_one_line_error(result, "the default model is not built", "bash scripts/demo.sh", "alti-onnx explain MODEL_DIR")
    assert not any((tmp_path / "empty-cache").rglob("*.*")), "nothing may be downloaded or built"


def test_evaluate_needs_matplotlib_before_any_work(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("the cat sat\n")
    env = _blocking(tmp_path, "matplotlib")
    result = run_cli("evaluate", FIXTURES / "tiny-bert-classifier", "--data", data, "--out", tmp_path / "e", env=env)
    assert_one_line_error(result, "matplotlib", "pip install 'alti-onnx[plot]'")
    assert not (tmp_path / "e").exists()


def test_evaluate_on_a_decoder(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("the cat sat\n")
    result = run_cli("evaluate", FIXTURES / "tiny-gpt2", "--data", data, "--out", tmp_path / "e")
    assert_one_line_error(result, "evaluation needs a sequence classifier", "have 3 axes")


def _interrupt_when(predicate, command: list[object], **env: str) -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen([console_script(), *map(str, command)], env=cli_env(**env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not predicate() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("after", [0.25, 0.5, 1.0])  # imports, analysis, session (the interpreter's own start aside)
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(after: float, tmp_path: Path) -> None:
    """From an empty cache, so that the model is analysed and split (a cached start is quicker than 1 s)."""
    started = time.monotonic()
    result = _interrupt_when(lambda: time.monotonic() - started > after, ["explain", BERT, "--text", "the cat"],
                             ALTI_ONNX_CACHE=str(tmp_path / "cache"))
    assert (result.returncode, result.stderr) == (130, "error: interrupted\n")


def test_ctrl_c_during_a_batch_then_resume(tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("the quick brown fox sat on the mat near the river\n" * 3000)
    output = tmp_path / "out.jsonl"
    result = _interrupt_when(lambda: output.exists() and output.stat().st_size > 0,
                             ["batch", BERT, "--input", texts, "--output", output, "--chunk-size", "16"])
    assert (result.returncode, result.stderr) == (130, "error: interrupted\n")
    done = run_cli("batch", BERT, "--input", texts, "--output", output)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["index"] for line in output.read_text().splitlines()] == list(range(3000))


@pytest.mark.parametrize("options, words", [
    (["--seed", "-5"], ["--seed"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--hf-model", "/nonexistent"], ["--hf-model", "not a Hugging Face model directory"]),
])
def test_evaluate_options_it_cannot_use_are_one_line(tmp_path: Path, options, words) -> None:
    data = tmp_path / "data.txt"
    data.write_text("the cat sat\n")
    result = run_cli("evaluate", FIXTURES / "tiny-bert-classifier", "--data", data, "--out", tmp_path / "e", *options)
    assert_one_line_error(result, *words)


@pytest.mark.parametrize("labels, words", [(["1", "x"], ["'x', not a class index"]), (["1", "7"], ["label of the data is 7"])])
def test_evaluate_labels_it_cannot_use_are_one_line(tmp_path: Path, labels, words) -> None:
    data = tmp_path / "data.tsv"
    data.write_text("label\ttext\n" + "".join(f"{label}\tthe cat sat {k}\n" for k, label in enumerate(labels)))
    result = run_cli("evaluate", FIXTURES / "tiny-bert-classifier", "--data", data, "--out", tmp_path / "e")
    assert_one_line_error(result, *words)


def test_bench_refuses_a_batch_it_could_not_hold() -> None:
    result = run_cli("bench", FIXTURES / "tiny-bert", "--batch-sizes", "100000000", "--lengths", "8")
    assert_one_line_error(result, "--batch-sizes takes at most 4096")


@pytest.mark.parametrize("text, kind", [(None, "NoneType"), (5, "int"), ([], "at least one text"),
                                        ({"text": "x"}, "dict"), (b"the cat", "bytes"), (["a", 5], "holding int")])
def test_explain_takes_texts_and_says_what_it_got_instead(text, kind) -> None:
    explainer = Explainer(FIXTURES / "tiny-bert", cache=False)
    with pytest.raises(InputError, match=kind):
        explainer.explain(text)


def test_a_provider_this_onnxruntime_knows_but_cannot_use_is_one_line() -> None:
    import onnxruntime as ort

    missing = next((p for p in ort.get_all_providers() if p not in ort.get_available_providers()), None)
    if missing is None:
        pytest.skip("every provider onnxruntime knows is available here")
    assert_one_line_error(run_cli("explain", FIXTURES / "tiny-bert", "--text", "the cat", "--provider", missing),
                          "is not available here")
