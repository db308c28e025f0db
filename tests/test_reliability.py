"""Nothing lost, nothing silently wrong: what a hostile user does to ``batch`` and ``explain``.

Output safety (another job's or somebody else's file, the input itself, two processes, a stream),
kill -9 at random moments, numbers that are finite or an error, one error record per bad line,
a tokenizer that is not the model's, and the one-line contract for the cases that used to end in a
traceback. The hypothesis tests at the end fuzz the reader, the corpus runner, the texts and the
command line's options.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, cli_env, console_script, run_cli
from fixture_cases import FIXTURES
from onnx import numpy_helper

from alti_onnx import (
    Explainer,
    InputError,
    NonFiniteError,
    SelfCheckError,
    TokenizerMismatchError,
)
from alti_onnx.corpus.run import explain_corpus
from alti_onnx.corpus.outputs import sidecar_of

BERT = FIXTURES / "tiny-bert"
CLASSIFIER = FIXTURES / "tiny-bert-classifier"
WORDS = "the cat sat on a mat and dog ran far quick brown fox".split()


def strict(line: str) -> dict:
    """A JSON line parsed as strict JSON (NaN, Infinity refused)."""
    def refuse(name: str) -> None:
        raise ValueError(f"{name} in output")

    return json.loads(line, parse_constant=refuse)


def records(path: Path) -> list[dict]:
    return [strict(line) for line in path.read_text(encoding="utf-8").splitlines()]


def corpus(path: Path, count: int, seed: int = 0, words: tuple[int, int] = (1, 20)) -> Path:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(*words))), "id": k}) + "\n"
                            for k in range(count)), encoding="utf-8")
    return path


def same_records(got: list[dict], want: list[dict]) -> None:
    """Identical records: same keys, ids, tokens and errors; the numbers equal to 1e-9 (a resumed run
    can batch a text with other neighbours, which moves float32 sums in their last bit)."""
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            if key in ("attribution", "reconstruction_error"):
                np.testing.assert_allclose(a[key], b[key], atol=1e-9, rtol=0)
            else:
                assert a[key] == b[key], key


def model_copy(tmp: Path, name: str, edit=None, source: Path = BERT) -> Path:
    """A copy of a fixture folder, its graph edited by ``edit(model)``."""
    folder = tmp / name
    shutil.copytree(source, folder)
    if edit is not None:
        model = onnx.load(str(folder / "model.onnx"))
        edit(model)
        onnx.save(model, str(folder / "model.onnx"))
    return folder


def set_weight(name: str, value=None, factor=None):
    def edit(model: onnx.ModelProto) -> None:
        (tensor,) = [t for t in model.graph.initializer if t.name == name]
        array = numpy_helper.to_array(tensor).astype(np.float32)
        array = np.full_like(array, value) if value is not None else array * factor
        tensor.CopyFrom(numpy_helper.from_array(array, name))
    return edit


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(BERT)


# --------------------------------------------------------------------------- where batch writes
def test_batch_never_writes_into_somebody_elses_file(tmp_path):
    texts = corpus(tmp_path / "texts.jsonl", 3)
    precious = tmp_path / "notes.txt"
    precious.write_text("my notes\n")
    assert_one_line_error(run_cli("batch", BERT, "--input", texts, "--output", precious), "notes.txt exists", "no output of alti-onnx batch")
    assert precious.read_text() == "my notes\n" and not sidecar_of(precious).exists()


@pytest.mark.parametrize("how", ["same path", "symbolic link", "hard link"])
def test_batch_refuses_its_own_input(tmp_path, how):
    texts = corpus(tmp_path / "texts.jsonl", 3)
    before = texts.read_bytes()
    output = {"same path": texts, "symbolic link": tmp_path / "link.jsonl", "hard link": tmp_path / "hard.jsonl"}[how]
    if how == "symbolic link":
        output.symlink_to(texts)
    elif how == "hard link":
        os.link(texts, output)
    assert_one_line_error(run_cli("batch", BERT, "--input", texts, "--output", output), "is the input corpus itself")
    assert texts.read_bytes() == before


def test_resuming_with_another_job_is_refused_and_appending_texts_is_not(tmp_path):
    texts = corpus(tmp_path / "texts.jsonl", 6)
    output = tmp_path / "out.jsonl"
    assert run_cli("batch", BERT, "--input", texts, "--output", output).returncode == 0
    finished = output.read_bytes()
    edited = tmp_path / "edited.jsonl"
    edited.write_text(texts.read_text().replace("\"id\": 0", "\"id\": 99"))
    others = {
        "another corpus": (["--input", edited], "its corpus was another file"),
        "--full": (["--input", texts, "--full"], "full=False, this run has full=True"),
        "--target": (["--input", texts, "--target", "1"], "target=None, this run has target=1"),
        "--self-check-tolerance": (["--input", texts, "--self-check-tolerance", "0.01"], "self_check_tolerance=0.001"),
        "--input-map": (["--input", texts, "--input-map", "attention_mask=mask"], "input_map={}"),
    }
    for name, (args, words) in others.items():
        assert_one_line_error(run_cli("batch", BERT, *args, "--output", output), "holds the results of another batch job", words)
        assert output.read_bytes() == finished, name
    roberta = run_cli("batch", FIXTURES / "tiny-roberta", "--input", texts, "--output", output)
    assert_one_line_error(roberta, "its model was another one")

    with open(texts, "a", encoding="utf-8") as handle:  # more texts for the same corpus: the same job
        handle.write(json.dumps({"text": "the fox ran", "id": 6}) + "\n")
    resumed = run_cli("batch", BERT, "--input", texts, "--output", output)
    assert resumed.returncode == 0 and "1 records written" in resumed.stdout and "6 already there" in resumed.stdout
    assert [r["id"] for r in records(output)] == list(range(7))


def test_a_second_process_on_the_same_output_stops_at_once(tmp_path):
    texts = corpus(tmp_path / "texts.jsonl", 5000)  # several seconds of work: the second starts meanwhile
    output = tmp_path / "out.jsonl"
    first = subprocess.Popen([console_script(), "batch", str(BERT), "--input", str(texts), "--output", str(output),
                              "--chunk-size", "8"], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (output.exists() and output.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        started = time.monotonic()
        second = run_cli("batch", BERT, "--input", texts, "--output", output)
        assert_one_line_error(second, "another alti-onnx batch is writing")
        assert time.monotonic() - started < 10
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert [r["index"] for r in records(output)] == list(range(5000))


def test_writing_to_stdout_or_a_pipe(tmp_path):
    texts = corpus(tmp_path / "texts.jsonl", 5)
    streamed = run_cli("batch", BERT, "--input", texts, "--output", "-")
    assert streamed.returncode == 0 and "5 records written to stdout" in streamed.stderr
    assert [r["index"] for r in map(strict, streamed.stdout.splitlines())] == list(range(5))
    piped = run_cli("batch", BERT, "--input", texts, "--output", "/dev/stdout", timeout=60)  # used to hang
    assert piped.returncode == 0 and len(piped.stdout.splitlines()) == 5


def test_kill_9_at_20_random_moments_then_resume_gives_the_records_of_one_run(tmp_path):
    """20 runs of one job, each killed (SIGKILL) at a random moment of its start-up or of its work,
    then one run to the end: the records equal an uninterrupted run's, none lost or doubled."""
    texts = corpus(tmp_path / "texts.jsonl", 2000, seed=3, words=(20, 60))
    command = [console_script(), "batch", str(BERT), "--input", str(texts), "--chunk-size", "8", "--batch-size", "8"]
    whole = tmp_path / "whole.jsonl"
    started = time.monotonic()
    uninterrupted = subprocess.Popen([*command, "--output", str(whole)], env=cli_env(), stdout=subprocess.DEVNULL)
    while not (whole.exists() and whole.stat().st_size > 0) and uninterrupted.poll() is None:
        time.sleep(0.01)
    start_up = time.monotonic() - started
    assert uninterrupted.wait(timeout=300) == 0
    work = time.monotonic() - started - start_up
    print(f"start-up {start_up:.2f} s, work {work:.2f} s")

    output = tmp_path / "killed.jsonl"
    rng = random.Random(20)
    # Where the kills land is set by progress, not by the clock (a loaded machine stretches every
    # run): a third at a random moment of start-up, the rest once the output reaches a record count
    # drawn along the corpus, plus a random instant, so they fall mid-chunk as well as between chunks.
    marks = sorted(rng.sample(range(40, 1900), 14))
    done = []

    def finished() -> int:
        return len(output.read_bytes().splitlines()) if output.exists() else 0

    for run in range(20):
        process = subprocess.Popen([*command, "--output", str(output)], env=cli_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if run % 3 == 0 or not marks:
            time.sleep(rng.uniform(0.1, 0.9) * start_up)
        else:
            mark, deadline = marks.pop(0), time.monotonic() + 300
            while finished() < mark and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait()
        done.append(finished())
    assert run_cli(*command[1:], "--output", output).returncode == 0
    same_records(records(output), records(whole))
    assert done == sorted(done) and len(set(done)) > 5 and done[-1] < 2000, f"the kills should land all along: {done}"
    print("records finished when killed:", done)


# --------------------------------------------------------------------------- numbers are finite or an error
@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    return {
        "nan": model_copy(root, "nan", set_weight("encoder.layer.0.attention.output.LayerNorm.weight", value=np.nan)),
        "inf": model_copy(root, "inf", set_weight("encoder.layer.1.attention.self.value.bias", value=np.inf)),
        "degenerate": model_copy(root, "degenerate", set_weight("encoder.layer.0.attention.output.dense.bias", factor=1e6)),
        "nan-logits": model_copy(root, "nan-logits", set_weight("classifier.bias", value=np.nan), source=CLASSIFIER),
    }


@pytest.mark.parametrize("model, error, words", [
    ("nan", NonFiniteError, "NaN or Inf in layer 0 (block output)"),
    ("inf", NonFiniteError, "NaN or Inf in layer 1"),
    ("degenerate", SelfCheckError, "receives no positive contribution"),
    ("nan-logits", NonFiniteError, "logits hold NaN or Inf"),
])
def test_nan_inf_and_degenerate_blocks_are_errors_not_results(hostile, tmp_path, model, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        Explainer(hostile[model]).explain("the cat sat on the mat")
    for extra in ([], ["--json", tmp_path / "out.json"], ["--html", tmp_path / "out.html"]):
        assert_one_line_error(run_cli("explain", hostile[model], "--text", "the cat sat on the mat", *extra), words)
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "out.html").exists()
    texts = corpus(tmp_path / "texts.jsonl", 3)
    output = tmp_path / "out.jsonl"
    assert_one_line_error(run_cli("batch", hostile[model], "--input", texts, "--output", output), "every one of the 3 texts failed", words)
    assert all(words in r["error"] for r in records(output))  # strict JSON: no NaN literal anywhere


def test_blas_threads_are_restored_after_explaining(explainer):
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    explainer.explain(["the cat sat", "a dog ran on the mat", "quick brown fox"] * 3)
    assert blas_threads() == before


def test_the_whole_run_keeps_one_blas_thread(explainer, monkeypatch):
    """Products on the calling thread (the rollout) run with one BLAS thread too: a second one, woken
    there, spins afterwards and takes a core from the next decomposition (issue 28's short texts)."""
    from threadpoolctl import threadpool_info

    import alti_onnx.layouts.single_graph as single_graph

    seen = []

    def rollout(contributions):
        seen.append([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"])
        return real_rollout(contributions)

    real_rollout = single_graph.rollout
    monkeypatch.setattr(single_graph, "rollout", rollout)
    explainer.explain(["the cat sat", "a dog ran on the mat"])
    assert seen and all(threads and set(threads) == {1} for threads in seen)


# --------------------------------------------------------------------------- one record per line
def test_every_bad_line_becomes_an_error_record_in_its_place(explainer, tmp_path):
    lines = [
        b'{"text": "the cat sat", "id": "ok"}',
        b'{"text": null}', b'{"text": 123}', b'{"text": ["a"]}', b'{"text": true}', b'{"id": 7}',
        b'{"text": "the dog", "id": NaN}', b'[1, 2]', b'not json at all', b'"\\ud800 lone surrogate"',
        b'"the caf\xc3\xa9 sat on a mat"', b'"\xff\xfe not utf-8"', b'', b'"   "', b'"' + b"word " * 100 + b'"',
        b'"the fox"',
    ]
    path = tmp_path / "texts.JSONL"  # any case of the suffix is JSON lines
    path.write_bytes(b"\n".join(lines) + b"\n")
    output = tmp_path / "out.jsonl"
    summary = explain_corpus(explainer, path, output, target=4)
    got = records(output)
    assert [r["index"] for r in got] == list(range(len(lines)))
    errors = {r["index"]: r["error"] for r in got if "error" in r}
    assert sorted(set(range(len(lines))) - set(errors)) == [0, 10]
    assert errors[15] == "line 16: target position 4 is outside the 4 tokens"  # --target beyond a short text
    expected = {
        1: "'text' must be a string, got null", 2: "got a number", 3: "got an array", 4: "got a boolean",
        5: "has no 'text'", 6: "NaN is not JSON", 7: "expected a JSON string or an object", 8: "is not JSON",
        9: "lone surrogate (\\ud800)", 11: "not valid UTF-8 (byte 0xff", 12: "line 13 is empty", 13: "empty text",
        14: "text too long",
    }
    for index, words in expected.items():
        assert errors[index].startswith(f"line {index + 1}") and words in errors[index], errors[index]
    assert got[5]["id"] == 7
    assert summary.failed == len(lines) - 2 and summary.written == len(lines)


def test_plain_text_lines_split_on_newlines_only(explainer, tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes(b"the cat\rsat\r\na dog\n")
    explain_corpus(explainer, path, tmp_path / "out.jsonl")
    got = records(tmp_path / "out.jsonl")
    assert [r["tokens"] for r in got] == [["[CLS]", "the", "cat", "sat", "[SEP]"], ["[CLS]", "a", "dog", "[SEP]"]]


def test_a_text_onnxruntime_rejects_costs_only_its_own_record(tmp_path):
    """Without any length limit in its files the model cannot refuse a long text before running it;
    onnxruntime does (the position table is 64 long), for that text alone."""
    folder = model_copy(tmp_path, "no-limit")
    (folder / "tokenizer_config.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    del config["max_position_embeddings"]
    (folder / "config.json").write_text(json.dumps(config))
    path = tmp_path / "texts.txt"
    path.write_text("the cat sat\n" + "the " * 90 + "\na dog ran\n")
    explain_corpus(Explainer(folder), path, tmp_path / "out.jsonl", batch_size=8)
    got = records(tmp_path / "out.jsonl")
    assert ["error" in r for r in got] == [False, True, False]
    assert got[1]["error"].startswith("line 2: the text may be longer than the model takes")


def test_a_huge_line_is_refused_before_it_is_tokenized(explainer):
    started = time.monotonic()
    with pytest.raises(InputError, match="text too long: 20,000,000 characters"):
        explainer.explain("a" * 20_000_000)
    assert time.monotonic() - started < 2


def test_a_tokenizer_of_another_model_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    big = Tokenizer(models.WordLevel({f"w{k}": k for k in range(1000)} | {"[UNK]": 1000}, unk_token="[UNK]"))
    big.pre_tokenizer = pre_tokenizers.Whitespace()
    big.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerMismatchError, match="has 1001 tokens but the token embedding .* has 144 rows"):
        Explainer(BERT, tokenizer=tmp_path / "tokenizer.json")
    assert_one_line_error(run_cli("explain", BERT, "--text", "w1", "--tokenizer", tmp_path / "tokenizer.json"),
                          "tokenizer.json has 1001 tokens", "model.onnx has 144 rows", "belongs to another model")
    folder = model_copy(tmp_path, "pad-out-of-range")
    config = json.loads((folder / "config.json").read_text())
    config["pad_token_id"] = 500
    (folder / "config.json").write_text(json.dumps(config))
    assert_one_line_error(run_cli("explain", folder, "--text", "the cat"), "pad_token_id is 500, not a token of")


def test_a_stale_config_id_the_model_is_not_fed_is_a_warning_not_a_refusal(tmp_path):
    """GPT-2's default bos_token_id left in the config of a model whose tokenizer is smaller: the
    tokenizer fits the embedding, the id is never fed, so the text is explained, with one warning line."""
    from alti_onnx.errors import ModelWarning

    folder = model_copy(tmp_path, "stale-bos", source=FIXTURES / "tiny-gpt2")
    config = json.loads((folder / "config.json").read_text())
    config["bos_token_id"] = config["eos_token_id"] = 50256
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.warns(ModelWarning, match="bos_token_id is 50256, not a token of"):
        stale = Explainer(folder, cache=False).explain("the cat sat").attribution()
    np.testing.assert_array_equal(stale, Explainer(FIXTURES / "tiny-gpt2", cache=False).explain("the cat sat").attribution())
    result = run_cli("explain", folder, "--text", "the cat sat")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        line for line in result.stderr.splitlines() if line.startswith("warning: config.json's")]
    assert "bos_token_id is 50256" in result.stderr and "eos_token_id is 50256" in result.stderr


def test_a_tokenizer_without_the_special_tokens_its_config_declares_is_refused(tmp_path):
    """tokenizer.json swapped under tokenizer_config.json: the config declares [CLS] and [SEP], the
    new tokenizer (which happens to fit the table) has <s> and </s> instead."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = model_copy(tmp_path, "swapped-tokenizer")
    other = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "<unk>": 2, "the": 3, "cat": 4}, unk_token="<unk>"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    other.save(str(folder / "tokenizer.json"))
    with pytest.raises(TokenizerMismatchError, match=r"declares the \w+_token '\[\w+\]', which .* does not have"):
        Explainer(folder, cache=False)
    assert_one_line_error(run_cli("explain", folder, "--text", "the cat"), "tokenizer_config.json declares",
                          "belongs to another model")
