"""ALTI+ on encoder-decoder exports, against the float64 reference recorded with each fixture
(``models.reference_seq2seq``: hooks on the Hugging Face model, docs/alti.md "Encoder-decoder")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alti_onnx import Explainer
from alti_onnx.decomposition.alti_plus import combined_rollout
from alti_onnx.errors import InputError, ModelPathError
from alti_onnx.explainer import EncoderDecoderExplainer
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.fixture_cases import FIXTURES, TOLERANCE

#: fixture -> the kind of its blocks (post-LN: BART, Marian; pre-LN: M2M100, T5 with RMSNorm and relative bias)
FAMILIES = {"bart": "post", "marian": "post", "m2m100": "pre", "t5": "pre"}
FOLDERS = {name: FIXTURES / f"tiny-{name}-seq2seq" for name in FAMILIES}


def _expected(folder: Path) -> tuple[dict, list[dict[str, np.ndarray]]]:
    texts = json.loads((folder / "texts.json").read_text())
    with np.load(folder / "expected.npz") as npz:
        pairs = [{key.rsplit("_", 1)[0]: npz[key] for key in npz.files if key.rsplit("_", 1)[1] == str(k)}
                 for k in range(len(texts["sources"]))]
    return texts, pairs


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    folder = FOLDERS[request.param]
    return request.param, Explainer(folder, cache=False), *_expected(folder)


def _same(actual, expected, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    error = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    assert error < TOLERANCE, f"{what}: {error:.3g} from the reference"


def test_blocks_are_found_by_structure(family):
    name, explainer, _, _ = family
    assert isinstance(explainer, EncoderDecoderExplainer)
    assert not any(b.cross for b in explainer.encoder_blocks)
    assert [b.cross for b in explainer.self_blocks] == [False, False]
    assert [b.cross for b in explainer.cross_blocks] == [True, True]
    assert {b.kind for b in explainer.self_blocks + explainer.cross_blocks + explainer.encoder_blocks} == {FAMILIES[name]}


def test_teacher_forced_equals_reference(family):
    name, explainer, texts, pairs = family
    for source, target, expected in zip(texts["sources"], texts["targets"], pairs):
        result = explainer.explain(source, target)
        assert result.target_ids == expected["labels"].tolist()
        _same(result.encoder_contributions, expected["encoder_contributions"], f"{name} encoder")
        _same(result.encoder_rollout, expected["encoder_rollout"], f"{name} encoder rollout")
        _same(result.self_contributions, expected["self_contributions"], f"{name} decoder self-attention")
        _same(result.cross_contributions, expected["cross_contributions"], f"{name} cross-attention")
        _same(result.combined, expected["combined"], f"{name} ALTI+")
        _same(result.source_share, expected["source_share"], f"{name} source share")
        assert max(result.reconstruction_error) < TOLERANCE


def test_generation_equals_the_models_greedy_output_and_reference(family):
    name, explainer, texts, pairs = family
    for source, expected in zip(texts["sources"], pairs):
        result = explainer.explain(source, max_new_tokens=8)
        assert result.generated
        assert result.target_ids == expected["generated"].tolist(), name
        _same(result.cross_contributions, expected["generated_cross_contributions"], f"{name} generated cross")
        _same(result.combined, expected["generated_combined"], f"{name} generated ALTI+")
        _same(result.source_share, expected["generated_source_share"], f"{name} generated source share")


def test_padded_batches_equal_each_pair_alone(family):
    name, explainer, texts, pairs = family
    forced = explainer.explain_batch(texts["sources"], texts["targets"])
    generated = explainer.explain_batch(texts["sources"], max_new_tokens=8)
    for k, expected in enumerate(pairs):
        _same(forced[k].combined, expected["combined"], f"{name} padded batch, pair {k}")
        _same(forced[k].cross_contributions, expected["cross_contributions"], f"{name} padded batch, pair {k}")
        assert generated[k].target_ids == expected["generated"].tolist()
        _same(generated[k].combined, expected["generated_combined"], f"{name} padded generation, pair {k}")


def test_rows_are_distributions_and_the_prefix_is_causal(family):
    _, explainer, texts, _ = family
    result = explainer.explain(texts["sources"][1], texts["targets"][1])
    sources = len(result.tokens)
    for matrices in (result.cross_contributions, result.combined, result.self_contributions):
        assert np.all(matrices >= 0)
        np.testing.assert_allclose(matrices.sum(-1), 1.0, atol=1e-12)
    prefix = result.combined[:, :, sources:]
    assert np.all(np.triu(prefix, k=1) == 0)  # position t takes nothing from later target tokens
    np.testing.assert_allclose(result.source_share + prefix[-1].sum(-1), 1.0, atol=1e-12)


def test_the_with_past_export_is_read_from_its_plain_decoder():
    folder = FIXTURES / "tiny-bart-seq2seq-past"
    texts, pairs = _expected(folder)
    result = Explainer(folder, cache=False).explain(texts["sources"][0], texts["targets"][0])
    _same(result.combined, pairs[0]["combined"], "with-past export")


def test_a_merged_decoder_alone_is_refused_with_the_export_to_use(tmp_path):
    folder = tmp_path / "merged"
    shutil.copytree(FOLDERS["bart"], folder)
    (folder / "decoder_model.onnx").rename(folder / "decoder_model_merged.onnx")
    with pytest.raises(ModelPathError, match="text2text-generation"):
        Explainer(folder, cache=False)


def test_bad_requests_are_one_line_errors():
    explainer = Explainer(FOLDERS["bart"], cache=False)
    with pytest.raises(InputError, match="max new tokens"):
        explainer.explain("the cat sat", max_new_tokens=0)
    with pytest.raises(InputError, match="2 sources but 1 targets"):
        explainer.explain_batch(["the cat", "the dog"], ["the"])
    with pytest.raises(InputError, match="empty|text"):
        explainer.explain("", "the cat")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_combined_rollout_equals_the_equations_loop_by_loop(data):
    """combined_rollout against R^l[t] = X_res[t] sum_k C[t, k] R^(l-1)[k] + sum_j X[t, j] R_enc[j], in loops."""
    sources = data.draw(st.integers(1, 5))
    targets = data.draw(st.integers(1, 5))
    layers = data.draw(st.integers(1, 3))
    seed = data.draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)

    def stochastic(rows, columns, causal=False):
        matrix = rng.random((rows, columns))
        if causal:
            matrix = np.tril(matrix)
        return matrix / matrix.sum(-1, keepdims=True)

    encoder = stochastic(sources, sources)
    own = [stochastic(targets, targets, causal=True) for _ in range(layers)]
    cross = [stochastic(targets, sources + 1) for _ in range(layers)]
    result = combined_rollout(encoder, own, cross)
    previous = np.hstack([np.zeros((targets, sources)), np.eye(targets)])
    for layer in range(layers):
        expected = np.zeros_like(previous)
        for t in range(targets):
            for k in range(targets):
                expected[t] += cross[layer][t, sources] * own[layer][t, k] * previous[k]
            for j in range(sources):
                expected[t, :sources] += cross[layer][t, j] * encoder[j]
        np.testing.assert_allclose(result[layer], expected, atol=1e-12)
        previous = expected
    np.testing.assert_allclose(result.sum(-1), 1.0, atol=1e-12)


# --------------------------------------------------------------------------- CLI and batch
def test_cli_explains_generated_and_given_targets(tmp_path):
    folder = FOLDERS["t5"]
    texts, pairs = _expected(folder)
    result = run_cli("explain", folder, "--text", texts["sources"][0], "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert "ALTI+ source contributions (generated" in result.stdout and "source share" in result.stdout
    generated = Explainer(folder, cache=False).explain(texts["sources"][0], max_new_tokens=8)
    assert f"{generated.source_share[0]:.4f}" in result.stdout
    written = tmp_path / "pair.json"
    result = run_cli("explain", folder, "--text", texts["sources"][1], "--target-text", texts["targets"][1],
                     "--json", written)
    assert result.returncode == 0, result.stderr
    payload = json.loads(written.read_text())
    page = tmp_path / "pair.html"
    result = run_cli("explain", folder, "--text", texts["sources"][1], "--target-text", texts["targets"][1],
                     "--html", page)
    assert result.returncode == 0 and f"wrote {page}" in result.stdout.replace("\n", "")
    embedded = json.loads(page.read_text().split('id="alti-data">')[1].split("</script>")[0])
    np.testing.assert_allclose(embedded["source_share"], pairs[1]["source_share"], atol=1e-6)
    assert payload["target_ids"] == pairs[1]["labels"].tolist()
    _same(payload["combined"], pairs[1]["combined"], "CLI --json")
    _same(payload["source_share"], pairs[1]["source_share"], "CLI --json source share")


def test_cli_target_picks_an_output_position_and_refuses_what_seq2seq_does_not_take(tmp_path):
    folder = FOLDERS["t5"]
    texts, pairs = _expected(folder)
    written = tmp_path / "row.json"
    result = run_cli("explain", folder, "--text", texts["sources"][1], "--target-text", texts["targets"][1],
                     "--target", "1", "--json", written)
    assert result.returncode == 0, result.stderr
    payload = json.loads(written.read_text())
    assert payload["target"] == 1 and payload["layout"] == "encoder-decoder"
    _same(payload["attribution"], pairs[1]["combined"][-1][1], "CLI --target 1")
    assert_one_line_error(run_cli("explain", FOLDERS["bart"], "--text", "the cat", "--target", "99"), "outside")
    assert_one_line_error(run_cli("explain", FOLDERS["bart"], "--text", "the cat", "--png", "x.png"), "--png")
    assert_one_line_error(run_cli("explain", FIXTURES / "tiny-gpt2", "--text", "the cat", "--target-text", "x"),
                          "--target-text")


def test_inspect_lists_both_halves_with_their_cross_blocks():
    result = run_cli("inspect", FOLDERS["marian"], "--json")
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert [b["cross"] for b in described["decoder_model.onnx"]["blocks"]] == [False, True, False, True]
    assert not any(b["cross"] for b in described["encoder_model.onnx"]["blocks"])


def test_batch_records_equal_the_api_and_bad_lines_are_error_records(tmp_path):
    folder = FOLDERS["bart"]
    texts, pairs = _expected(folder)
    lines = [{"text": texts["sources"][0], "target": texts["targets"][0], "id": "forced"},
             {"text": texts["sources"][1]}, {"text": "the cat", "target": 7}, texts["sources"][2]]
    corpus = tmp_path / "pairs.jsonl"
    corpus.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output = tmp_path / "out.jsonl"
    result = run_cli("batch", folder, "--input", corpus, "--output", output, "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert records[0]["id"] == "forced" and not records[0]["generated"]
    _same(records[0]["attribution"], pairs[0]["combined"][-1], "batch teacher-forced")
    assert records[1]["target_ids"] == pairs[1]["generated"].tolist()
    _same(records[1]["attribution"], pairs[1]["generated_combined"][-1], "batch generated")
    assert "'target' must be a string" in records[2]["error"]
    assert records[3]["target_ids"] == pairs[2]["generated"].tolist()
    again = run_cli("batch", folder, "--input", corpus, "--output", output, "--max-new-tokens", "8")
    assert "0 records written" in again.stdout and output.read_text().count("\n") == 4


def _copy_of(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(FOLDERS[name], folder)
    return folder


def test_an_encoder_decoder_gets_the_tokenizer_check_every_model_gets(tmp_path):
    """A tokenizer with more tokens than the embedding has rows is another model's: refused as for an encoder."""
    from tokenizers import Tokenizer

    from alti_onnx.errors import TokenizerMismatchError

    folder = _copy_of("t5", tmp_path)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.add_tokens([f"extra{k}" for k in range(8)])
    tokenizer.save(str(folder / "tokenizer.json"))
    with pytest.raises(TokenizerMismatchError, match="rows: the tokenizer belongs to another model"):
        Explainer(folder, cache=False)


def test_an_encoder_decoder_gets_the_layer_count_check(tmp_path):
    from alti_onnx.errors import LayerCountError

    folder = _copy_of("t5", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["num_decoder_layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LayerCountError, match="the decoder has 3 layers, but the decoder has 2"):
        Explainer(folder, cache=False)


def test_bench_refuses_an_encoder_decoder_in_one_line():
    assert_one_line_error(run_cli("bench", FOLDERS["t5"], "--lengths", "8", "--batch-sizes", "1"), "encoder-decoder")


def test_nan_logits_of_a_teacher_forced_target_are_refused(tmp_path):
    """NaN only after the last block (Marian's final logits bias): every block is finite, the logits
    are not, and the explanation is refused as generation's would be."""
    import onnx
    from onnx import numpy_helper

    from alti_onnx.errors import NonFiniteError

    folder = _copy_of("marian", tmp_path)
    model = onnx.load(str(folder / "decoder_model.onnx"))
    bias = next(t for t in model.graph.initializer if t.name == "final_logits_bias")
    bias.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(bias).shape, np.nan, np.float32), bias.name))
    onnx.save(model, str(folder / "decoder_model.onnx"))
    texts, _ = _expected(folder)
    with pytest.raises(NonFiniteError, match="NaN or Inf logits"):
        Explainer(folder, cache=False).explain(texts["sources"][0], texts["targets"][0])


@pytest.mark.parametrize("key, value, what", [
    ("decoder_start_token_id", -1, "decoder_start_token_id is -1"),
    ("bad_words_ids", [[5000]], "bad_words_ids is 5000"),
    ("bad_words_ids", [[-3]], "bad_words_ids is -3"),
    ("forced_bos_token_id", 99999, "forced_bos_token_id is 99999"),
])
def test_generation_ids_outside_the_vocabulary_are_one_line(tmp_path, key, value, what):
    folder = _copy_of("bart", tmp_path)
    generation_path = folder / "generation_config.json"
    generation = json.loads(generation_path.read_text()) if generation_path.exists() else {}
    generation[key] = value
    generation_path.write_text(json.dumps(generation))
    assert_one_line_error(run_cli("explain", folder, "--text", "the cat"), what, "not a token")


def test_outputs_longer_than_the_decoder_takes_are_one_line():
    """BART's 64 positions bound generation and a given target; T5 (relative positions) is bounded too."""
    assert_one_line_error(run_cli("explain", FOLDERS["bart"], "--text", "the cat", "--max-new-tokens", "100"),
                          "--max-new-tokens 100 is more than the decoder takes (64 tokens)")
    assert_one_line_error(run_cli("explain", FOLDERS["bart"], "--text", "the cat", "--target-text", "cat " * 80),
                          "too long", "takes at most")
    assert_one_line_error(run_cli("explain", FOLDERS["t5"], "--text", "the cat", "--max-new-tokens", "100000"),
                          "more than the decoder takes (1024 tokens)")


def test_evaluate_refuses_an_encoder_decoder_in_one_line(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("the cat sat\n")
    assert_one_line_error(run_cli("evaluate", FOLDERS["t5"], "--data", data, "--out", tmp_path / "e"),
                          "needs a sequence classifier", "encoder-decoder export")


def _as_users_ship_it(tmp_path: Path, names: tuple[str, str] = ("encoder.onnx", "decoder.onnx")) -> Path:
    """tiny T5 as third-party exports come: encoder.onnx and decoder.onnx, no config files."""
    folder = tmp_path / "shipped"
    folder.mkdir()
    for source, name in zip(("encoder_model.onnx", "decoder_model.onnx"), names):
        shutil.copy(FOLDERS["t5"] / source, folder / name)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(FOLDERS["t5"] / name, folder / name)
    return folder


def test_an_encoder_decoder_as_users_ship_it_says_what_is_missing_and_takes_it(tmp_path):
    """No config.json: the start token is asked for by its option, and with it the numbers are the
    optimum export's (the same weights)."""
    folder = _as_users_ship_it(tmp_path)
    texts, pairs = _expected(FOLDERS["t5"])
    assert_one_line_error(run_cli("explain", folder, "--text", "the cat"), "decoder_start_token_id",
                          "--decoder-start-token-id")
    explained = Explainer(folder, cache=False, decoder_start_token_id=0).explain(texts["sources"][0], texts["targets"][0])
    _same(explained.combined, pairs[0]["combined"], "encoder.onnx + decoder.onnx")
    written = tmp_path / "out.json"
    result = run_cli("explain", folder, "--text", texts["sources"][0], "--target-text", texts["targets"][0],
                     "--decoder-start-token-id", "0", "--json", written)
    assert result.returncode == 0, result.stderr
    _same(json.loads(written.read_text())["combined"], pairs[0]["combined"], "CLI")


def test_an_encoder_decoder_with_other_file_names_is_named_by_its_options(tmp_path):
    folder = _as_users_ship_it(tmp_path, ("enc.onnx", "dec.onnx"))
    texts, pairs = _expected(FOLDERS["t5"])
    assert_one_line_error(run_cli("explain", folder, "--text", "the cat"), "--encoder FILE --decoder FILE")
    explained = Explainer(folder, cache=False, encoder="enc.onnx", decoder="dec.onnx", decoder_start_token_id=0)
    _same(explained.explain(texts["sources"][0], texts["targets"][0]).combined, pairs[0]["combined"], "named")
    corpus, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    corpus.write_text(json.dumps({"text": texts["sources"][0], "target": texts["targets"][0]}) + "\n")
    result = run_cli("batch", folder, "--input", corpus, "--output", output, "--encoder", "enc.onnx", "--decoder",
                     "dec.onnx", "--decoder-start-token-id", "0")
    assert result.returncode == 0, result.stderr
    _same(json.loads(output.read_text())["attribution"], pairs[0]["combined"][-1], "batch")
    assert_one_line_error(run_cli("explain", FIXTURES / "tiny-bert", "--text", "x", "--decoder-start-token-id", "0"),
                          "decoder_start_token_id is not for single-graph models")


def test_a_dynamically_quantized_encoder_decoder_gets_the_int8_guidance(tmp_path):
    """Dynamic int8 (as a third-party flan-t5-small ships): the self-check misses by the activation
    rounding and says how to accept it, as the encoder-only path does."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    folder = _as_users_ship_it(tmp_path)
    for name in ("encoder.onnx", "decoder.onnx"):
        quantization.quantize_dynamic(str(folder / name), str(folder / name), weight_type=quantization.QuantType.QInt8)
    texts, _ = _expected(FOLDERS["t5"])
    result = run_cli("explain", folder, "--text", texts["sources"][0], "--decoder-start-token-id", "0")
    assert_one_line_error(result, "dynamically quantized", "--self-check-tolerance 2e-2")
    accepted = run_cli("explain", folder, "--text", texts["sources"][0], "--decoder-start-token-id", "0",
                       "--self-check-tolerance", "2e-2")
    assert accepted.returncode == 0 and "ALTI+ source contributions" in accepted.stdout, accepted.stderr


def test_batch_target_and_words_are_taken_by_an_encoder_decoder(tmp_path):
    """batch --target picks an output position's row and --words adds the source's words, as for
    every layout (they were silently ignored on encoder-decoders)."""
    texts, pairs = _expected(FOLDERS["t5"])
    corpus, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    corpus.write_text(json.dumps({"text": texts["sources"][1], "target": texts["targets"][1]}) + "\n")
    result = run_cli("batch", FOLDERS["t5"], "--input", corpus, "--output", output, "--target", "1", "--words")
    assert result.returncode == 0, result.stderr
    record = json.loads(output.read_text())
    assert record["target"] == 1 and record["word_attribution"] and record["words"]
    _same(record["attribution"], pairs[1]["combined"][-1][1], "batch --target 1")
    assert abs(sum(record["word_attribution"]) - sum(record["attribution"])) < 1e-9


def test_a_given_start_token_overrides_a_stale_config(tmp_path):
    """config.json's decoder_start_token_id beyond the vocabulary does not block an explainer told
    the start token; the one used is checked where it is used."""
    folder = _copy_of("t5", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["decoder_start_token_id"] = 50000
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("generation_config.json",):
        (folder / name).unlink(missing_ok=True)
    texts, pairs = _expected(FOLDERS["t5"])
    assert_one_line_error(run_cli("explain", folder, "--text", "the cat"), "decoder_start_token_id is 50000")
    explained = Explainer(folder, cache=False, decoder_start_token_id=0).explain(texts["sources"][0], texts["targets"][0])
    _same(explained.combined, pairs[0]["combined"], "start token given")
