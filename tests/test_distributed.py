"""`batch --ray`: a corpus explained by Ray actors, on a local cluster in a network namespace whose only
interface is loopback (so nothing listens on, or contacts, any other address). Records equal batch's;
a killed worker loses and duplicates nothing; a rerun resumes at shard granularity."""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_helpers import assert_one_line_error, console_script, run_cli
from tests.fixture_cases import FIXTURES

pytest.importorskip("ray.data")
if shutil.which("unshare") is None or subprocess.run(
        ["unshare", "--user", "--map-root-user", "--net", "true"], capture_output=True).returncode != 0:
    pytest.skip("no network namespaces here (unshare): a local Ray cluster cannot be kept on loopback",
                allow_module_level=True)

MODEL = FIXTURES / "tiny-bert"
WORDS = "the cat sat on a mat quick brown fox jumps over lazy dog she said that small house near river was very old".split()


def corpus(path: Path, count: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 50))), "id": k})
             for k in range(count)]
    lines[7] = json.dumps({"text": ""})  # a bad record: an error record in its place, on both paths
    path.write_text("\n".join(lines) + "\n")
    return path


def shards(folder: Path) -> list[str]:
    return [line for name in sorted(glob.glob(str(folder / "part-*.jsonl"))) for line in open(name)]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A corpus of 5 shards (2,100 texts) and batch's own records for it."""
    folder = tmp_path_factory.mktemp("ray")
    texts = corpus(folder / "texts.jsonl", 2100)
    result = run_cli("batch", MODEL, "--input", texts, "--output", folder / "batch.jsonl")
    assert result.returncode == 0, result.stderr
    return texts, (folder / "batch.jsonl").read_text().splitlines(keepends=True)


def test_ray_records_equal_batch_records(job, tmp_path):
    texts, expected = job
    out = tmp_path / "shards"
    result = run_cli("batch", MODEL, "--input", texts, "--output", out, "--ray", "local", "--actors", "2", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2100 records written" in result.stdout and "in 5 shards" in result.stdout
    assert shards(out) == expected  # exact: the shards are batch's chunks, explained by batch's own code
    assert sorted(json.loads(line)["index"] for line in shards(out)) == list(range(2100))
    assert "error" in json.loads(shards(out)[7])


@pytest.mark.parametrize("attempt", [1, 2])
def test_a_killed_worker_loses_and_duplicates_nothing(job, tmp_path, attempt):
    texts, expected = job
    out = tmp_path / "shards"
    process = subprocess.Popen([console_script(), "batch", MODEL, "--input", texts, "--output", out, "--ray", "local",
                                "--actors", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, started = None, time.monotonic()
    while process.poll() is None and time.monotonic() - started < 600:
        workers = [int(Path(p).name) for p in glob.glob(str(out / "_workers" / "*"))]
        if killed is None and workers and glob.glob(str(out / "part-*.jsonl")):
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)  # mid-run: one shard written, others in flight
        time.sleep(0.1)
    stdout, stderr = process.communicate(timeout=60)
    assert killed is not None, "the run ended before a worker could be killed"
    assert process.returncode == 0, stderr[-2000:]
    lines = shards(out)
    assert lines == expected
    assert len({json.loads(line)["index"] for line in lines}) == len(lines) == 2100
    assert not glob.glob(str(out / ".*.partial"))  # no half-written shard left behind


def test_a_rerun_resumes_at_shard_granularity(job, tmp_path):
    texts, expected = job
    out = tmp_path / "shards"
    driver = subprocess.Popen([console_script(), "batch", MODEL, "--input", texts, "--output", out, "--ray", "local"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    started = time.monotonic()
    while not glob.glob(str(out / "part-*.jsonl")) and driver.poll() is None and time.monotonic() - started < 600:
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: the driver, and the cluster it started, stop
    driver.communicate(timeout=120)
    time.sleep(2)
    done_before = len(glob.glob(str(out / "part-*.jsonl")))
    assert 1 <= done_before
    result = run_cli("batch", MODEL, "--input", texts, "--output", out, "--ray", "local", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"in {5 - done_before} shards ({done_before} shards already there" in result.stdout
    assert shards(out) == expected
    (out / "part-000001.jsonl").unlink()
    again = run_cli("batch", MODEL, "--input", texts, "--output", out, "--ray", "local", timeout=600)
    assert "in 1 shards (4 shards already there" in again.stdout
    assert shards(out) == expected


def test_an_output_that_is_not_this_jobs_is_refused(job, tmp_path):
    texts, _ = job
    stranger = tmp_path / "theirs"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    assert_one_line_error(run_cli("batch", MODEL, "--input", texts, "--output", stranger, "--ray", "local"),
                          "did not write", "notes.txt")
    assert (stranger / "notes.txt").read_text() == "keep me"
    assert_one_line_error(run_cli("batch", MODEL, "--input", texts, "--output", "-", "--ray", "local"), "directory")


def test_a_local_cluster_refuses_to_start_outside_a_loopback_namespace():
    from alti_onnx.corpus.distributed import local_cluster, only_loopback
    from alti_onnx.errors import InputError

    if only_loopback():
        pytest.skip("this test process is already in a loopback-only namespace")
    with pytest.raises(InputError, match="other interfaces"):
        local_cluster()


def test_explain_dataset_gives_batchs_records(job, tmp_path):
    """The Python API: a Ray Dataset of texts in, a Dataset of batch's records out."""
    texts, expected = job
    script = tmp_path / "api.py"
    script.write_text(f"""
import json, ray, ray.data
from alti_onnx.corpus.distributed import explain_dataset, local_cluster
local_cluster(num_cpus=2)
rows = [dict(json.loads(line), index=k) for k, line in enumerate(open({str(texts)!r}))]
rows = [dict(r, id=r.get("id")) for r in rows]
out = explain_dataset(ray.data.from_items(rows[:512]), {str(MODEL)!r}, actors=1).take_all()
from_path = explain_dataset({str(texts)!r}, {str(MODEL)!r}, actors=1).take_all()  # a path Ray Data reads
print(len(from_path), sum("error" in json.loads(row["record"]) for row in from_path))
print(json.dumps(sorted((row["index"], row["record"]) for row in out)))
""")
    from alti_onnx.corpus.distributed import loopback_only_command

    done = subprocess.run(loopback_only_command([sys.executable, str(script)]), capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    *_, counts, last = done.stdout.strip().splitlines()
    assert counts == "2100 1"  # every line of the JSONL file, its one empty text an error record
    records = json.loads(last)
    assert [r for _, r in records] == [line.rstrip("\n") for line in expected[:512]]


def test_a_partial_shard_left_by_a_killed_worker_does_not_block_the_rerun(job, tmp_path):
    from alti_onnx.corpus.distributed import plan_shards

    texts, _ = job
    out = tmp_path / "shards"
    first = plan_shards(MODEL, texts, out)
    leftover = out / f".part-000000.jsonl.{os.getpid()}.partial"
    leftover.write_text('{"index": 0')
    again = plan_shards(MODEL, texts, out)
    assert not leftover.exists() and len(again.pending) == len(first.pending)


def test_ray_logit_records_equal_batch_logit_records(tmp_path):
    """batch --logit on Ray: the query travels to the actors, records equal batch's."""
    classifier = FIXTURES / "tiny-bert-classifier"
    texts = corpus(tmp_path / "texts.jsonl", 60)
    lines = texts.read_text().splitlines()
    lines[3] = json.dumps({"text": "the cat sat", "class": "negative", "foil": 1})
    texts.write_text("\n".join(lines) + "\n")
    local = run_cli("batch", classifier, "--input", texts, "--output", tmp_path / "batch.jsonl", "--logit",
                    "--class", "positive")
    assert local.returncode == 0, local.stderr
    out = tmp_path / "shards"
    result = run_cli("batch", classifier, "--input", texts, "--output", out, "--ray", "local", "--logit",
                     "--class", "positive", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shards(out) == (tmp_path / "batch.jsonl").read_text().splitlines(keepends=True)
    records = [json.loads(line) for line in shards(out)]
    assert records[0]["logit"]["target"]["label"] == "positive"
    assert records[3]["logit"]["target"]["label"] == "negative" and records[3]["logit"]["foil"]["index"] == 1


def test_ray_routes_records_and_summary_equal_batch(tmp_path):
    """batch --routes on Ray: the query travels to the actors, records and the corpus summary equal batch's."""
    decoder = FIXTURES / "tiny-llama"
    texts = corpus(tmp_path / "texts.jsonl", 40)
    local = run_cli("batch", decoder, "--input", texts, "--output", tmp_path / "batch.jsonl", "--routes",
                    "--threshold", "0.05")
    assert local.returncode == 0, local.stderr
    out = tmp_path / "shards"
    result = run_cli("batch", decoder, "--input", texts, "--output", out, "--ray", "local", "--routes",
                     "--threshold", "0.05", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shards(out) == (tmp_path / "batch.jsonl").read_text().splitlines(keepends=True)
    assert json.loads((tmp_path / "shards.routes.json").read_text()) == \
        json.loads((tmp_path / "batch.jsonl.routes.json").read_text())
    assert "components on a route" in result.stdout
