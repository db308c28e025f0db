"""Explain a corpus on a Ray cluster (the ``ray`` extra): the records of ``batch``, from many workers.

The corpus is cut into shards that are exactly ``batch``'s chunks (``corpus.CHUNK_SIZE`` records,
``FULL_CHUNK_SIZE`` with ``full``), and each shard is explained by ``corpus``'s own chunk code in a
Ray Data actor that holds one ``Explainer``: the records are the ones ``batch`` writes, number for
number. Each shard is written by the actor that explained it to ``part-NNNNNN.jsonl`` in the output
directory, through a temporary file renamed into place, so a shard is either whole or absent: a
worker killed mid-shard leaves nothing, Ray runs the shard again on another actor, and a rerun of
the driver skips the shards already written. ``_job.json`` in the directory names the job
(``corpus_output.Job``): a directory that holds another job's shards, or files that are not shards, is
refused.

Local clusters are started on the loopback address only (``local_cluster``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

from alti_onnx.atomic import is_partial, write_atomically
from alti_onnx.errors import InputError, OutputPathError
from alti_onnx.layouts.base import job_model_identity
from alti_onnx.results.record import json_line
from alti_onnx.runtime.model_files import locate_model
from alti_onnx.runtime.prepared import prepare

from .inputs import CorpusRecord, read_records
from .outputs import Job
from .run import CHUNK_SIZE, FULL_CHUNK_SIZE, PAIRS_PER_RUN, explain_chunk, require_corpus

JOB_FILE = "_job.json"
WORKERS_DIR = "_workers"  #: each actor's process id, a file each (tests kill one of them)
#: Bumped with the record (results.record.RECORD_VERSION): shards of two schemas never share a directory.
FORMAT = "alti-onnx ray 2"


def shard_name(shard: int) -> str:
    return f"part-{shard:06d}.jsonl"


@dataclass(frozen=True)
class RaySummary:
    """Shards in the output, those written by earlier runs, records written now and how many failed."""

    shards: int
    skipped: int
    written: int
    failed: int
    first_error: str | None = None


def local_cluster(num_cpus: int | None = None) -> None:
    """Start Ray on this machine without the dashboard. Ray's own servers listen on every interface
    whatever node address they are given (Ray 2.60: the GCS, the raylet and the workers bind ``*``,
    its runtime-env agent the machine's own address), so this refuses to run unless the process is
    in a network namespace whose only interface is loopback: see ``loopback_only_command``."""
    import ray

    if not only_loopback():
        raise InputError("a local Ray cluster would listen on this machine's other interfaces: run it through "
                         "alti-onnx batch --ray local (which isolates it) or in a network namespace with only lo")
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, configure_logging=False)


def only_loopback() -> bool:
    """Whether this process's network namespace has no interface but ``lo``."""
    import socket

    return [name for _, name in socket.if_nameindex()] == ["lo"]


def loopback_only_command(argv: list[str]) -> list[str] | None:
    """``argv`` run in a new network namespace (and user namespace, so no privilege is needed) whose
    only interface is loopback, brought up first; None where ``unshare`` is missing."""
    import shutil
    import sys

    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    return [unshare, "--user", "--map-root-user", "--net", "--", sys.executable, "-m", "alti_onnx.corpus.loopback", *argv]


def corpus_shards(path: Path, shard_size: int) -> Iterator[tuple[int, list[CorpusRecord]]]:
    """The corpus's records in consecutive shards of ``shard_size`` (numbered from 0)."""
    records = read_records(path)
    shard = 0
    while chunk := list(islice(records, shard_size)):
        yield shard, chunk
        shard += 1


class ShardWriter:
    """A Ray Data actor: one Explainer, loaded once, explaining whole shards and writing each one."""

    def __init__(self, model: str, output: str, options: dict):
        from alti_onnx.explainer import Explainer

        self.output = Path(output)
        self.options = options
        self.explainer = Explainer(model, self_check_tolerance=options["self_check_tolerance"],
                                   input_map=options["input_map"] or None, **options["layout"])
        workers = self.output / WORKERS_DIR
        workers.mkdir(exist_ok=True)
        (workers / str(os.getpid())).write_text("")

    def __call__(self, batch: dict) -> dict:
        shards, written, failed, errors = [], [], [], []
        for shard, encoded in zip(batch["shard"], batch["records"]):
            records = [CorpusRecord(**item) for item in json.loads(encoded)]
            payloads = _explained(self.explainer, records, self.options)
            write_atomically(self.output / shard_name(int(shard)), "".join(json_line(p) + "\n" for p in payloads))
            bad = [p for p in payloads if "error" in p]
            shards.append(int(shard))
            written.append(len(payloads))
            failed.append(len(bad))
            errors.append(str(bad[0]["error"]) if bad else "")
        return {"shard": shards, "written": written, "failed": failed, "first_error": errors}


@dataclass(frozen=True)
class ShardPlan:
    """A job's output directory (claimed for it), its options, and the shards still to explain."""

    model: str
    output: Path
    options: dict
    pending: list[dict]
    skipped: int


def plan_shards(
    model: str | Path,
    input_path: str | Path,
    output_dir: str | Path,
    *,
    batch_size: int = 32,
    target: int | str | None = None,
    full: bool = False,
    words: bool = False,
    max_new_tokens: int = 32,
    pairs_per_run: int = PAIRS_PER_RUN,
    self_check_tolerance: float = 1e-3,
    input_map: dict[str, str] | None = None,
    encoder: str | Path | None = None,
    decoder: str | Path | None = None,
    decoder_start_token_id: int | None = None,
    logit: dict[str, object] | None = None,
    routes: dict[str, object] | None = None,
) -> ShardPlan:
    """Check the corpus and the model, claim ``output_dir`` for this job (or find it is this job's),
    and list the shards not written yet. Needs no Ray: bad input is refused before a cluster starts."""
    input_path, output_dir = Path(input_path), Path(output_dir)
    require_corpus(input_path)
    files = locate_model(model, encoder=encoder, decoder=decoder)
    prepared = {role: prepare(path) for role, path in files.graphs.items()}  # what the actors will load
    layout = {"encoder": None if encoder is None else str(files.graphs["encoder"]),
              "decoder": None if decoder is None else str(files.graphs["decoder"]),
              "decoder_start_token_id": decoder_start_token_id}
    options = {"full": full, "target": target, "input_map": dict(sorted((input_map or {}).items())),
               "self_check_tolerance": self_check_tolerance, "words": words, "max_new_tokens": max_new_tokens,
               "batch_size": batch_size, "pairs_per_run": pairs_per_run, "layout": layout,
               **job_model_identity(files, prepared)}
    if logit is not None:
        options["logit"] = dict(logit)
    if routes is not None:
        options["routes"] = dict(routes)
    shard_size = FULL_CHUNK_SIZE if full else CHUNK_SIZE
    _claim(output_dir, Job.of(input_path, files.onnx, files.tokenizer, {**options, "shard_size": shard_size}))
    pending, skipped = [], 0
    for shard, records in corpus_shards(input_path, shard_size):
        if (output_dir / shard_name(shard)).is_file():
            skipped += 1
            continue
        pending.append({"shard": shard, "records": json.dumps([asdict(r) for r in records])})
    return ShardPlan(str(model), output_dir, options, pending, skipped)


def run_shards(plan: ShardPlan, actors: int = 1, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0) -> RaySummary:
    """Explain the plan's pending shards on the Ray cluster this process is connected to, ``actors``
    Explainers at once, each with ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs."""
    import ray.data

    if actors < 1:
        raise InputError(f"--actors must be at least 1, got {actors}")
    if not plan.pending:
        return RaySummary(plan.skipped, plan.skipped, 0, 0)
    dataset = ray.data.from_items(plan.pending, override_num_blocks=len(plan.pending))
    done = dataset.map_batches(
        ShardWriter, fn_constructor_kwargs={"model": plan.model, "output": str(plan.output), "options": plan.options},
        batch_size=1, concurrency=actors, num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
        # a killed worker is replaced and its shard run again (the shard's file appears only when whole)
        max_restarts=-1, max_task_retries=-1,
    ).take_all()
    written = sum(int(row["written"]) for row in done)
    failed = sum(int(row["failed"]) for row in done)
    first = next((row["first_error"] for row in sorted(done, key=lambda r: r["shard"]) if row["first_error"]), None)
    return RaySummary(plan.skipped + len(plan.pending), plan.skipped, written, failed, first)


def explain_on_ray(model: str | Path, input_path: str | Path, output_dir: str | Path, *, actors: int = 1,
                   cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0, **options) -> RaySummary:
    """``plan_shards`` then ``run_shards``: ``input_path`` explained into shards under ``output_dir`` on the
    Ray cluster this process is connected to (``local_cluster`` or ``ray.init(address)`` first), resuming a
    previous run of the same job. ``options`` are ``plan_shards``'s (``batch``'s)."""
    return run_shards(plan_shards(model, input_path, output_dir, **options), actors, cpus_per_actor, gpus_per_actor)


def explain_dataset(dataset, model: str | Path, *, actors: int = 1, batch_size: int = 32, target: int | str | None = None,
                    full: bool = False, words: bool = False, pairs_per_run: int = PAIRS_PER_RUN,
                    cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0):
    """A Ray Dataset of records (columns ``index`` and ``record``, the JSON line ``batch`` writes) from a
    Dataset with a ``text`` column (and optionally ``id``, ``target`` and ``index``), or from a path Ray
    Data reads (``read_texts``). Without an ``index`` column a record's index is its row's position in
    the batch it arrives in: give one to keep the corpus order."""
    options = {"batch_size": batch_size, "target": target, "full": full, "words": words,
               "pairs_per_run": pairs_per_run, "max_new_tokens": 32}
    if isinstance(dataset, (str, Path)):
        dataset = read_texts(dataset)
    return dataset.map_batches(_RecordMaker, fn_constructor_kwargs={"model": str(model), "options": options},
                               batch_size=CHUNK_SIZE if not full else FULL_CHUNK_SIZE, concurrency=actors,
                               batch_format="pyarrow",  # ids keep their JSON types (NumPy would make 0 and None floats)
                               num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, max_restarts=-1, max_task_retries=-1)


def read_texts(path: str | Path):
    """A Ray Dataset from a path Ray Data reads: JSON lines (objects with a ``text``), Parquet (a
    ``text`` column), or plain text (one text a line, read into ``text``)."""
    import ray.data

    name = str(path).lower()
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return ray.data.read_json(str(path), lines=True) if not name.endswith(".json") else ray.data.read_json(str(path))
    if name.endswith(".parquet") or Path(path).is_dir():
        return ray.data.read_parquet(str(path))
    return ray.data.read_text(str(path))


class _RecordMaker:
    """The actor behind ``explain_dataset``."""

    def __init__(self, model: str, options: dict):
        from alti_onnx.explainer import Explainer

        self.explainer = Explainer(model)
        self.options = options

    def __call__(self, batch):
        import pyarrow as pa

        columns = set(batch.column_names)

        def column(name: str) -> list:
            return batch.column(name).to_pylist() if name in columns else [None] * batch.num_rows

        texts = column("text")
        indices = column("index") if "index" in columns else list(range(batch.num_rows))
        records = [CorpusRecord(int(i), t, r, target=g) for i, t, r, g in zip(indices, texts, column("id"), column("target"))]
        payloads = _explained(self.explainer, records, self.options)
        return pa.table({"index": [int(p["index"]) for p in payloads], "record": [json_line(p) for p in payloads]})


def _explained(explainer, records: list[CorpusRecord], options: dict) -> list[dict]:
    """``batch``'s records for one chunk (its own code, so its numbers), with a job's options."""
    return explain_chunk(explainer, records, options["batch_size"], options["pairs_per_run"], options["target"],
                          options["full"], options["max_new_tokens"], options["words"], options.get("logit"),
                          options.get("routes"))


def _claim(output_dir: Path, job: Job) -> None:
    """The output directory is this job's: created with its _job.json, or already holding it (and
    nothing but shards, the workers' folder and temporary files)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputPathError(f"--output {output_dir} exists and is not a directory (a --ray run writes shards into one)")
    output_dir.mkdir(parents=True, exist_ok=True)
    recorded_path = output_dir / JOB_FILE
    ours = {JOB_FILE, WORKERS_DIR}
    for leftover in [p for p in output_dir.iterdir() if is_partial(p.name)]:  # a worker killed mid-write
        leftover.unlink(missing_ok=True)
    strangers = [p.name for p in output_dir.iterdir()
                 if p.name not in ours and not (p.name.startswith("part-") and p.name.endswith(".jsonl"))]
    if strangers:
        raise OutputPathError(f"--output {output_dir} holds files this job did not write ({strangers[0]}); "
                              "give an empty or new directory")
    if recorded_path.exists():
        try:
            recorded = json.loads(recorded_path.read_text())
        except ValueError:
            raise OutputPathError(f"{recorded_path} is not valid JSON: not a --ray output directory") from None
        written_by = str(recorded.get("written_by"))
        why = (job.difference(recorded) if written_by == FORMAT else
               "its records are of another alti-onnx version" if written_by.startswith("alti-onnx ray") else
               "it was written by another tool")
        if why is not None:
            raise OutputPathError(f"--output {output_dir} holds another job's shards ({why}); use another directory")
        return
    if any(p.name.startswith("part-") for p in output_dir.iterdir()):
        raise OutputPathError(f"--output {output_dir} holds shards without {JOB_FILE}; give an empty or new directory")
    payload = json.loads(job.to_json())
    payload["written_by"] = FORMAT
    write_atomically(recorded_path, json.dumps(payload) + "\n")
