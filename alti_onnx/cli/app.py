"""The ``alti-onnx`` command line: a thin layer over the Python API.

Errors caused by the user's files or input print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from alti_onnx.errors import USER_ERRORS, InputError, ModelWarning, OutputPathError
from alti_onnx.export import ExportError, ExportUnavailableError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ALTI explanations for transformer models in ONNX.")
out = Console()
err = Console(stderr=True)

DEFAULT_TEXT = "The movie was surprisingly good, with a clever plot and warm performances."

#: The options several commands share (each names what the Explainer takes).
InputMapOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--input-map", metavar="NAME=ROLE",
        help="role of a graph input whose name does not tell it: ids, mask, segment or positions (repeatable)",
    ),
]
ToleranceOption = Annotated[
    float,
    typer.Option(
        "--self-check-tolerance",
        help="largest decomposition error accepted, relative to the block output (e.g. 2e-2 for dynamic int8)",
    ),
]
EncoderOption = Annotated[
    Optional[Path], typer.Option("--encoder", help="encoder-decoder: the encoder's .onnx (a path, or a file name in "
                                 "MODEL), when it is not encoder_model.onnx or encoder.onnx")
]
DecoderOption = Annotated[
    Optional[Path], typer.Option("--decoder", help="encoder-decoder: the decoder's .onnx (as --encoder)")
]
StartTokenOption = Annotated[
    Optional[int], typer.Option("--decoder-start-token-id", help="encoder-decoder: the decoder's first token, when "
                                "neither config.json nor generation_config.json gives it (T5: 0)")
]
DeviceOption = Annotated[str, typer.Option(
    "--device", help="where the decomposition runs: cpu, cuda (CuPy + numba-cuda; onnxruntime on the GPU too with "
    "onnxruntime-gpu) or auto (a GPU where one is usable; docs/gpu.md)")]
DEFAULT_TOLERANCE = 1e-3  # explainer.DEFAULT_SELF_CHECK_TOLERANCE (not imported here: the CLI starts without onnx)
LogitOption = Annotated[bool, typer.Option("--logit", help="also decompose the logit of a class or next token "
                                           "(default: the prediction) into signed token parts and named parts")]
ClassOption = Annotated[Optional[str], typer.Option("--class", help="classifier: the class whose logit is decomposed, "
                                                    "by label or index (implies --logit)")]
TargetTokenOption = Annotated[Optional[str], typer.Option(
    "--target-token", help="language model: the next token whose logit is decomposed, as text or id (implies --logit)")]
FoilOption = Annotated[Optional[str], typer.Option(
    "--foil", help="the contrast: a class or token whose logit is subtracted everywhere (implies --logit)")]
PerHeadOption = Annotated[bool, typer.Option("--per-head", help="language model: keep ALTI-Logit's per-head terms in "
                                             "--json (implies --logit)")]
RoutesOption = Annotated[bool, typer.Option("--routes", help="also the routes to the prediction through heads and "
                                            "feed-forward blocks (docs/routes.md)")]
ThresholdOption = Annotated[Optional[float], typer.Option(
    "--threshold", help="routes: the smallest edge weight kept (default 0.04; 0 keeps every edge; implies --routes)")]
RenormalizeOption = Annotated[bool, typer.Option(
    "--renormalize", help="routes: rescale each node's kept incoming weights to sum to 1 (implies --routes)")]
LensOption = Annotated[Optional[int], typer.Option(
    "--lens", help="routes, language models: tokens the logit lens lists per node and head (explain: 5, batch: 0; "
    "implies --routes)")]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the project's user-facing errors into one line on stderr and exit code 2."""
    try:
        yield
    except (*USER_ERRORS, ExportError, ExportUnavailableError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


@app.command()
def export(
    hf_model_dir: Annotated[Path, typer.Argument(help="Hugging Face model directory")],
    out_dir: Annotated[Path, typer.Argument(help="where model.onnx and tokenizer.json go")],
    task: Annotated[Optional[str], typer.Option(help="optimum task, e.g. feature-extraction")] = None,
) -> None:
    """Export a Hugging Face checkpoint to ONNX with optimum (needs the 'export' extra)."""
    from alti_onnx.export import export_model

    with user_errors():
        if not hf_model_dir.exists():
            raise ExportUnavailableError(f"model directory not found: {hf_model_dir}")
        with _writing(out_dir):
            export_model(hf_model_dir, out_dir, task=task)
    out.print(escape(f"exported {hf_model_dir} -> {out_dir}"), soft_wrap=True)


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="export directory or .onnx file")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List the attention blocks found in the graph, and every Softmax that is not one (with why).

    An encoder-decoder export directory lists its encoder's and its decoder's blocks."""
    from alti_onnx.runtime.model_files import locate_model
    from graph_rewrites import analyse_file

    with user_errors():
        paths = list(locate_model(model).graphs.values())
        # weights stay on disk (read memory-mapped where the analysis needs them): any size inspects
        analyses = {path: analyse_file(path).analysis for path in paths}
    if as_json:
        described = {path.name: {"blocks": [b.summary() for b in analysis.blocks],
                                 "unmatched_softmax": [u.summary() for u in analysis.unmatched]}
                     for path, analysis in analyses.items()}
        print(json.dumps(described if len(paths) > 1 else described[paths[0].name], indent=2))
        return
    for path, analysis in analyses.items():
        _print_analysis(analysis, path if len(paths) > 1 else model)


def _print_analysis(analysis, name: Path) -> None:
    table = Table(title=Text(f"{len(analysis.blocks)} attention blocks in {name}"))
    for column in ("layer", "heads", "head size", "width", "kind", "attends", "probs", "values", "block output"):
        table.add_column(column)
    for b in analysis.blocks:
        table.add_row(*(Text(str(cell)) for cell in (
            b.layer, b.num_heads, b.head_size, b.hidden_size, b.kind, "cross" if b.cross else "self", b.probs,
            b.values, b.output,
        )))
    out.print(table)
    if analysis.unmatched:
        others = Table(title=Text(f"{len(analysis.unmatched)} Softmax nodes that are not attention blocks"))
        for column in ("node", "looks like attention", "failed step", "why"):
            others.add_column(column)
        for u in analysis.unmatched:
            others.add_row(Text(u.node), "yes" if u.attention_like else "no", u.step, Text(u.reason))
        out.print(others)
        if analysis.missed:
            out.print(Text("explain refuses this model: an attention-like Softmax is not a block it can read", style="bold red"))


@app.command()
def instrument(
    model: Annotated[Path, typer.Argument(help="export directory or .onnx file")],
    output: Annotated[Path, typer.Argument(help="where to write the rewritten .onnx")],
) -> None:
    """Write the model with every attention block's intermediates as extra outputs (fused operators unfused first)."""
    from alti_onnx.runtime.model_files import locate_model
    from graph_rewrites import analyse_file, save_model

    with user_errors():
        files = locate_model(model)
        if tuple(files.graphs) != ("model",):
            raise InputError(f"{model} is an encoder-decoder export: instrument one of its graphs "
                             f"({', '.join(p.name for p in files.graphs.values())}) by its .onnx path")
        path = files.onnx
        analysed = analyse_file(path)
        blocks = analysed.blocks()
        with _writing(output):
            save_model(analysed.instrumented(), output, base_dir=path.parent)
    out.print(escape(f"wrote {output}: {len(blocks)} blocks, {sum(len(b.tensor_names()) for b in blocks)} extra outputs"), soft_wrap=True)


@app.command()
def explain(
    model: Annotated[Path, typer.Argument(help="export directory (model.onnx + tokenizer.json) or .onnx file")],
    text: Annotated[str, typer.Option("--text", "-t", help="the text to explain")],
    target: Annotated[
        Optional[str], typer.Option(help="position whose attribution is shown, or 'mean' (default 0; a decoder's "
                                    "last token; 'mean' for a mean-pooled sentence encoder)")
    ] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the full explanation as JSON")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="tokenizer.json, if not beside the model")] = None,
    provider: Annotated[Optional[list[str]], typer.Option(help="onnxruntime provider (repeatable)")] = None,
    html_path: Annotated[
        Optional[Path], typer.Option("--html", help="write a self-contained HTML report (heatmaps, tokens)")
    ] = None,
    png_path: Annotated[
        Optional[Path], typer.Option("--png", help="write a PNG figure: attribution bars + rollout (needs 'plot' extra)")
    ] = None,
    input_map: InputMapOption = None,
    self_check_tolerance: ToleranceOption = DEFAULT_TOLERANCE,
    attribution_only: Annotated[
        bool, typer.Option("--attribution-only", help="--json holds the target's attribution, not every layer's "
                           "S x S matrices (for long inputs)")
    ] = False,
    target_text: Annotated[
        Optional[str], typer.Option("--target-text", help="encoder-decoder: the output to explain, teacher-forced "
                                    "(default: the model's greedy output)")
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="encoder-decoder: most tokens generated without --target-text")
    ] = 32,
    words: Annotated[
        bool, typer.Option("--words", help="words instead of subword pieces (the table; --json adds the word keys)")
    ] = False,
    encoder: EncoderOption = None,
    decoder: DecoderOption = None,
    decoder_start_token_id: StartTokenOption = None,
    logit: LogitOption = False,
    class_: ClassOption = None,
    target_token: TargetTokenOption = None,
    foil: FoilOption = None,
    per_head: PerHeadOption = False,
    routes: RoutesOption = False,
    threshold: ThresholdOption = None,
    renormalize: RenormalizeOption = False,
    lens: LensOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Explain a text: each token's contribution to the target position after all layers.

    For a decoder (causal LM) the target defaults to the last token, whose output predicts the next
    token; that prediction and its probability are printed too. Only the target's row is carried
    through the layers unless --json (without --attribution-only), --html or --png needs them all.
    With --logit, also the logit of a class or next token (or its difference from --foil's) as one
    signed part per token plus named parts (docs/logit.md). With --routes, also the routes to the
    prediction through heads and feed-forward blocks, pruned at --threshold (docs/routes.md).
    """
    with user_errors():
        if attribution_only and (html_path is not None or png_path is not None):
            raise InputError("--attribution-only cannot go with --html or --png: they draw every layer's matrices")
        full = (json_path is not None and not attribution_only) or html_path is not None or png_path is not None
        target = _target_option(target)
        explainer = _explainer(model, input_map, self_check_tolerance, tokenizer=tokenizer, providers=provider,
                               encoder=encoder, decoder=decoder, decoder_start_token_id=decoder_start_token_id,
                               device=device)
        query = _logit_query(explainer, logit, class_, target_token, foil, per_head)
        if query is not None and target is not None and getattr(explainer, "causal", False):
            if not isinstance(target, int):
                raise InputError("--logit on a language model reads the next token at one position: --target N")
            query = replace(query, position=target)  # a decoder's --target is where the next token is read
        extra = {} if query is None else {"logit": query}
        route_query = _route_query(explainer, routes, threshold, renormalize, target, lens)
        if route_query is not None:
            extra["routes"] = route_query
        explanation = explainer.explain(text, target_text, full=full, targets=None if target is None else [target],
                                        max_new_tokens=max_new_tokens, **extra)
        if target is None and explanation.default_target == "mean":
            out.print(escape(f"target: the mean of all {len(explanation.tokens)} tokens (the model is mean-pooled: "
                             f"{explainer.pooling.source.relative_to(explainer.files.folder)}; --target 0 for the "
                             "first token)"), soft_wrap=True)
        # everything that can be refused is made before anything is written
        view = _checked(lambda: explanation.table(target, words=words))
        record = None if json_path is None else _checked(
            lambda: explanation.to_record(target, full=not attribution_only, words=words))
        page = None if html_path is None else _checked(
            lambda: explanation.report_html(model=_model_name(model), target=target))
        if png_path is not None:
            _checked(lambda: explanation.png_target(target))
        if json_path is not None:
            with _writing(json_path):
                json_path.write_text(json.dumps(record, allow_nan=False))
        written = _write_pictures(explanation, target, html_path, page, png_path)
    print_table(view)
    if getattr(explanation, "logit", None) is not None:
        print_table(explanation.logit.table(list(explanation.tokens)))
    if getattr(explanation, "routes", None) is not None:
        print_table(explanation.routes_table())
    if json_path is not None:
        out.print(escape(f"wrote {json_path}"), soft_wrap=True)
    for path in written:
        out.print(escape(f"wrote {path}"), soft_wrap=True)


def _logit_query(explainer, logit: bool, class_: Optional[str], target_token: Optional[str], foil: Optional[str],
                 per_head: bool):
    """The LogitQuery the options ask for (--class, --target-token, --foil and --per-head imply --logit),
    checked against the model: classes for a classifier, tokens for a decoder; None without them."""
    from alti_onnx.results.logit import LogitQuery

    if not (logit or class_ is not None or target_token is not None or foil is not None or per_head):
        return None
    if class_ is not None and target_token is not None:
        raise InputError("--class (a classifier's) and --target-token (a language model's) cannot go together")
    decoder = bool(getattr(explainer, "causal", False))
    if class_ is not None and decoder:
        raise InputError("--class is for classifiers; this is a language model: give --target-token TOKEN|ID")
    if target_token is not None and not decoder:
        raise InputError("--target-token is for language models; this model is not one: give --class LABEL|INDEX")
    if per_head and not decoder:
        raise InputError("--per-head is for language models (ALTI-Logit's per-layer terms, by head)")
    kind = "class" if class_ is not None else "token" if target_token is not None else None
    return LogitQuery(target=class_ if class_ is not None else target_token, foil=foil, per_head=per_head, kind=kind)


def _route_query(explainer, routes: bool, threshold: Optional[float], renormalize: bool, target,
                 lens: Optional[int] = None):
    """The RouteQuery the options ask for (--threshold, --renormalize and --lens imply --routes), None
    without them; the prediction's position is --target's where one position is given."""
    if not (routes or threshold is not None or renormalize or lens is not None):
        return None
    from alti_onnx.decomposition.routes import THRESHOLD
    from alti_onnx.results.routes import RouteQuery

    return RouteQuery(threshold=THRESHOLD if threshold is None else threshold, renormalize=renormalize,
                      position=target,  # --target N or mean: the routes lead where ALTI's attribution does
                      **({} if lens is None else {"lens": lens}))


def _logit_fields(explainer, logit: bool, class_: Optional[str], target_token: Optional[str], foil: Optional[str],
                  per_head: bool, target) -> Optional[dict]:
    """``batch``'s logit options as the JSON-friendly fields of a LogitQuery (they enter the job's
    identity); checked against the model when ``explainer`` is given (on Ray, each actor checks)."""
    if not (logit or class_ is not None or target_token is not None or foil is not None or per_head):
        return None
    if class_ is not None and target_token is not None:
        raise InputError("--class (a classifier's) and --target-token (a language model's) cannot go together")
    parsed = _target_option(target)
    kind = "class" if class_ is not None else "token" if target_token is not None else None
    if explainer is None:  # on Ray: each actor checks the query against the model (LogitQuery.kind)
        return {"target": class_ if class_ is not None else target_token, "foil": foil, "per_head": per_head,
                "position": parsed if isinstance(parsed, int) else None, "kind": kind}
    query = _logit_query(explainer, logit, class_, target_token, foil, per_head)
    decoder = bool(getattr(explainer, "causal", False))
    if decoder and parsed is not None and not isinstance(parsed, int):
        raise InputError("--logit on a language model reads the next token at one position: --target N")
    if not hasattr(explainer, "logit_decomposer"):
        raise InputError("--logit explains classifiers and decoders in one graph; an encoder-decoder's logits are "
                         "not decomposed yet")
    explainer.logit_decomposer()  # a model without logits is refused before any record is written
    return {"target": query.target, "foil": query.foil, "per_head": query.per_head,
            "position": parsed if decoder and isinstance(parsed, int) else None, "kind": kind}


def _model_name(model: Path) -> str:
    """The model's name on its report: its folder's."""
    return Path(model).parent.name if Path(model).suffix == ".onnx" else Path(model).name


def _write_pictures(explanation, target, html_path: Optional[Path], page: Optional[str],
                    png_path: Optional[Path]) -> list[Path]:
    """The --html report (made already) and the --png figure (alti_onnx.report), when asked for."""
    written: list[Path] = []
    if html_path is not None:
        with _writing(html_path):
            html_path.write_text(page, encoding="utf-8")
        written.append(html_path)
    if png_path is not None:
        with _writing(png_path):
            written.append(_checked(lambda: explanation.write_png(png_path, target=target)))
    return written


def _checked(make):
    """What ``make()`` returns; an IndexError or ValueError it raises (a target the explanation does not
    have, a view its layout does not offer) is one InputError line."""
    try:
        return make()
    except (IndexError, ValueError) as exc:
        raise InputError(str(exc)) from None


def _explainer(model: Path, input_map: Optional[list[str]], tolerance: float, **kwargs):
    """The Explainer the commands share, from the CLI's spelling of its options."""
    from alti_onnx.explainer import Explainer
    from alti_onnx.runtime.model_inputs import parse_input_map

    return Explainer(model, input_map=parse_input_map(input_map or []), self_check_tolerance=tolerance, **kwargs)


def _require_folder(path: Path) -> None:
    """The folder ``path`` would be written to exists (or can be made) and is a folder."""
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failure to write ``path`` (missing or read-only folder, a file in the way) into one line."""
    try:
        yield
    except OSError as exc:
        blocker = next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is not a directory" if blocker is not None else exc.strerror or str(exc)
        raise OutputPathError(f"cannot write {path}: {reason}") from None


def _target_option(value: Optional[str]):
    """--target: a token position (negative counts from the end) or 'mean' (``results.record.Target``)."""
    from alti_onnx.results.record import parse_target

    try:
        return parse_target(value)
    except ValueError:
        raise InputError(f"--target takes a token position or 'mean', got {value!r}") from None


def print_table(view) -> None:
    """An explanation's table (``results.base.TableView``): its rows, float cells drawn as bars."""
    for line in view.headline:
        out.print(Text(line, style="bold"))
    table = Table(title=Text(view.title), title_justify="left")
    for column in view.columns:
        table.add_column(column, justify="right" if column in ("pos", "attribution", "source share", "logit part")
                         else "left")
    for number, row in enumerate(view.rows):  # a negative share (a logit part against) is a red bar
        cells = [Text("█" * round(view.bar_width * abs(cell)), style="cyan" if cell >= 0 else "red")
                 if isinstance(cell, float) else Text(cell) for cell in row]
        table.add_row(*cells, style="bold" if number == view.highlight else "")
    out.print(table)
    out.print(view.footer)


@app.command()
def demo(
    text: Annotated[str, typer.Option("--text", "-t", help="the text to explain")] = DEFAULT_TEXT,
) -> None:
    """Explain a text with the default model (scripts/demo.sh builds it on first use).

    The default model is all-MiniLM-L6-v2 fine-tuned as a Rotten Tomatoes sentiment classifier by
    the repository's recipe (models/sentiment.py), cached under ~/.cache/alti-onnx.
    """
    with user_errors():
        model_dir = _default_model()
    explain(model_dir, text=text, target=None, json_path=None, tokenizer=None, provider=None, html_path=None,
            png_path=None, input_map=None, self_check_tolerance=DEFAULT_TOLERANCE, attribution_only=False,
            target_text=None, max_new_tokens=32, words=False, encoder=None, decoder=None, decoder_start_token_id=None)


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="export directory (model.onnx + tokenizer.json) or .onnx file")],
    port: Annotated[int, typer.Option("--port", help="port on 127.0.0.1 (0: any free port)")] = 8000,
    threshold: Annotated[float, typer.Option("--threshold", help="routes: the default smallest edge weight kept "
                                             "(the page can change it)")] = 0.04,
    device: DeviceOption = "auto",
) -> None:
    """Serve a page on this machine (127.0.0.1 only) that explains the texts typed into it: the report
    with the logit decomposition and the routes, the model loaded once. Ctrl-C stops it."""
    from alti_onnx.serve import serve as serve_model

    with user_errors():
        serve_model(model, port=port, threshold=threshold, device=device,
                    announce=lambda line: out.print(escape(line), soft_wrap=True, highlight=False))


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="export directory of a sequence classifier (output 'logits'), or a language model for --task evidence")],
    data: Annotated[Path, typer.Option("--data", help="TSV with a 'text' column, or one sentence per line; --task evidence: a folder of .csv cases")],
    n: Annotated[int, typer.Option("--n", min=1, help="evaluate the first N sentences (--task evidence: N cases per phenomenon)")] = 500,
    out_dir: Annotated[Path, typer.Option("--out", help="where results.md, results.json, faithfulness.png go")] = Path(
        "evaluation"
    ),
    hf_model: Annotated[
        Optional[Path], typer.Option("--hf-model", help="Hugging Face dir of the same weights, for the gradient methods")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="seed of the random baseline")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="onnxruntime batch size for the perturbed inputs")] = 64,
    input_map: InputMapOption = None,
    self_check_tolerance: ToleranceOption = DEFAULT_TOLERANCE,
    task: Annotated[str, typer.Option("--task", help="faithfulness (a classifier: AOPC) or evidence (a language model: "
                                      "the MRR of the evidence word, --data a folder of cases)")] = "faithfulness",
    protocol: Annotated[str, typer.Option("--protocol", help="faithfulness: deyoung (AOPC, the mean over the bins) or "
                                          "paper (the ALTI authors' aupc.py)")] = "deyoung",
) -> None:
    """Faithfulness of ALTI, the logit decomposition and the baselines: comprehensiveness and sufficiency
    on N sentences; or, with --task evidence, whether a language model's next-token explanations rank
    the evidence word first (N cases per phenomenon)."""
    from importlib.util import find_spec

    from alti_onnx.evaluation import evaluate as run_evaluation
    from alti_onnx.evaluation import markdown_table, read_texts, write_report

    with user_errors():
        if task not in ("faithfulness", "evidence"):
            raise InputError(f"--task takes faithfulness or evidence, got {task!r}")
        if protocol not in ("deyoung", "paper"):
            raise InputError(f"--protocol takes deyoung or paper, got {protocol!r}")
        if task == "evidence" and protocol != "deyoung":
            raise InputError("--protocol is for --task faithfulness (the evidence task reports reciprocal ranks)")
        if task == "evidence":
            _evaluate_evidence(model, data, n, out_dir, hf_model, seed, batch_size, input_map, self_check_tolerance)
            return
        if find_spec("matplotlib") is None:  # say so before the minutes of work, not after
            raise ExportUnavailableError("evaluate draws faithfulness.png with matplotlib: pip install 'alti-onnx[plot]'")
        _require_folder(out_dir / "results.md")  # likewise an output folder that cannot be made
        if hf_model is not None and not (hf_model / "config.json").is_file():
            raise InputError(f"--hf-model {hf_model} is not a Hugging Face model directory (no config.json)")
        dataset = read_texts(data, n)
        explainer = _explainer(model, input_map, self_check_tolerance)
        if explainer.takes_target_text:
            raise InputError(f"evaluation needs a sequence classifier; {model} is an encoder-decoder export")
        if hf_model is None:
            hf_model = _default_hf_model(model)
        result = run_evaluation(
            explainer, dataset.texts, labels=dataset.labels, hf_model=hf_model, seed=seed, batch_size=batch_size,
            progress=True, protocol=protocol,
        )
        result.meta["data"] = str(data)
        with _writing(out_dir / "results.md"):
            paths = write_report(result, out_dir, title=f"Faithfulness of {model.name}")
    print(markdown_table(result, per_bin=False))
    out.print(escape(f"{len(result.texts)} sentences in {result.meta['seconds']} s; wrote {', '.join(map(str, paths.values()))}"), soft_wrap=True)


def _evaluate_evidence(model: Path, data: Path, n: int, out_dir: Path, hf_model: Optional[Path], seed: int,
                       batch_size: int, input_map, tolerance: float) -> None:
    """``evaluate --task evidence``: the MRR table, written to OUT/evidence.md and OUT/evidence.json."""
    from alti_onnx.evaluation.evidence import evaluate_evidence, read_cases

    _require_folder(out_dir / "evidence.md")
    if hf_model is not None and not (hf_model / "config.json").is_file():
        raise InputError(f"--hf-model {hf_model} is not a Hugging Face model directory (no config.json)")
    cases = read_cases(data, n)
    explainer = _explainer(model, input_map, tolerance)
    result = evaluate_evidence(explainer, cases, hf_model=hf_model, batch_size=min(batch_size, 32), seed=seed)
    table = result.markdown()
    with _writing(out_dir / "evidence.md"):
        (out_dir / "evidence.md").write_text(f"# Linguistic evidence: {model.name}\n\n{table}", encoding="utf-8")
        (out_dir / "evidence.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    print(table)
    out.print(escape(f"{sum(result.cases.values())} cases ({sum(result.skipped.values())} skipped) in "
                     f"{result.meta['seconds']} s; wrote {out_dir / 'evidence.md'}, {out_dir / 'evidence.json'}"),
              soft_wrap=True)


def _default_model() -> Path:
    """The default model's export, from the cache: the repository's recipe builds it (scripts/demo.sh
    does, from a checkout); the package never imports the recipes."""
    from alti_onnx.defaults import default_model_dir

    if not (default_model_dir() / "model.onnx").exists():
        raise ExportUnavailableError(
            f"the default model is not built ({default_model_dir()}): from a checkout of the alti-onnx repository, "
            "bash scripts/demo.sh builds it; or explain your own export: alti-onnx explain MODEL_DIR --text \"...\""
        )
    return default_model_dir()


def _default_hf_model(model: Path) -> Optional[Path]:
    """The checkpoint of the default classifier when MODEL is its export (for the gradient baselines)."""
    from alti_onnx.defaults import default_hf_model_dir, default_model_dir

    try:
        is_default = Path(model).resolve() in (default_model_dir().resolve(), (default_model_dir() / "model.onnx").resolve())
    except OSError:
        return None
    return default_hf_model_dir() if is_default and default_hf_model_dir().is_dir() else None


@app.command()
def bench(
    model: Annotated[Path, typer.Argument(help="export directory or .onnx file")],
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the results as JSON")] = None,
    lengths: Annotated[str, typer.Option(help="comma-separated sequence lengths")] = "32,128,512",
    batch_sizes: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "1,32",
    provider: Annotated[Optional[list[str]], typer.Option(help="onnxruntime provider (repeatable)")] = None,
    input_map: InputMapOption = None,
    attribution_only: Annotated[
        bool, typer.Option("--attribution-only", help="time the target-only explanation (the default target's row)")
    ] = False,
    logit: Annotated[bool, typer.Option("--logit", help="the explanation decomposes the prediction's logit too; "
                                        "ALTI alone is timed beside it")] = False,
    routes: Annotated[bool, typer.Option("--routes", help="time the routes to the default target alone (no ALTI; "
                                         "docs/routes.md)")] = False,
    device: DeviceOption = "auto",
    corpus: Annotated[Optional[Path], typer.Option("--corpus", help="time `batch` over this corpus (a batch input) "
                                                   "next to the plain forward on the same texts, in texts/s")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="with --corpus: its first N texts")] = None,
) -> None:
    """Time the plain forward pass and the explanation (medians), with the peak memory of each; with
    --corpus, the throughput of `batch` over a corpus next to the plain forward's."""
    from alti_onnx.bench import run_benchmark, to_json
    from alti_onnx.runtime.model_inputs import parse_input_map

    with user_errors():
        roles = parse_input_map(input_map or [])
        seq_lens = _positive_ints(lengths, "--lengths")
        sizes = _positive_ints(batch_sizes, "--batch-sizes", most=MAX_BENCH_BATCH)
        from alti_onnx.runtime.model_files import locate_model

        if tuple(locate_model(model).graphs) != ("model",):
            raise InputError(f"bench times a model in one graph; {model} is an encoder-decoder export")
        if logit and routes:
            raise InputError("bench times --logit or --routes, not both at once")
        if corpus is not None and (logit or routes or attribution_only):
            raise InputError("bench --corpus times `batch` as it runs by default: not with --logit, --routes or "
                             "--attribution-only")
        if limit is not None and corpus is None:
            raise InputError("--limit goes with --corpus")
        if corpus is not None:
            _bench_corpus(model, corpus, sizes, provider, device, limit, roles, json_path)
            return
        # one-line errors before any worker
        with _explainer(model, input_map, DEFAULT_TOLERANCE, providers=provider, device=device) as explainer:
            limit = explainer.text_encoder.max_length
            ran_on = explainer.device.name  # what "auto" resolved to, for the record
            if routes:
                explainer.routes("a")
            if logit:  # an operator the decomposition cannot read is one line here, not a worker's traceback
                from alti_onnx.results.logit import LogitQuery

                explainer.explain("a", logit=LogitQuery())
        if limit is not None and max(seq_lens) > limit:
            raise InputError(f"--lengths asks for {max(seq_lens)} tokens, the model takes at most {limit}")
        if json_path is not None:
            _require_folder(json_path)  # before minutes of measuring, not after
        results = run_benchmark(
            model, seq_lens, sizes, provider, input_map=roles, attribution_only=attribution_only, logit=logit,
            routes=routes, device=device, progress=(lambda s, b: err.print(f"measuring S={s} B={b} ...", highlight=False)) if err.is_terminal else None,
        )
        if json_path is not None:
            with _writing(json_path):
                json_path.write_text(json.dumps(to_json(results, model, provider, ran_on), indent=2, allow_nan=False) + "\n")
    table = Table(title=Text(f"alti-onnx bench {model}"), title_justify="left")
    columns = ["S", "batch", "forward ms", "explain ms", "explain/fwd", "peak MB fwd/explain"]
    for column in columns + (["ALTI ms", "explain/ALTI"] if logit else []):
        table.add_column(column, justify="right")
    for r in results:
        cells = [str(r.seq_len), str(r.batch_size), f"{r.forward_s * 1e3:.1f}", f"{r.explain_s * 1e3:.1f}",
                 f"{r.ratio:.2f}x", f"{r.forward_peak_rss_mb:.0f} / {r.peak_rss_mb:.0f}"]
        if logit:
            cells += ["-", "-"] if r.alti_s is None else [f"{r.alti_s * 1e3:.1f}", f"{r.explain_s / r.alti_s:.2f}x"]
        table.add_row(*cells)
    out.print(table)


def _bench_corpus(model: Path, corpus: Path, sizes: list[int], provider, device: str, limit: Optional[int], roles,
                  json_path: Optional[Path]) -> None:
    """``bench --corpus``: one measurement per batch size, a table, and the JSON record."""
    from alti_onnx.bench import measure_corpus, to_json
    from alti_onnx.corpus.run import require_corpus

    require_corpus(corpus)
    if json_path is not None:
        _require_folder(json_path)
    results = []
    for size in sizes:
        if err.is_terminal:
            err.print(f"measuring batch size {size} ...", highlight=False)
        results.append(measure_corpus(model, corpus, size, provider, device, limit, input_map=roles))
    if json_path is not None:
        with _writing(json_path):
            record = to_json(results, model, provider, results[0].device)
            record["corpus"] = str(corpus)
            json_path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    table = Table(title=Text(f"alti-onnx bench {model} --corpus {corpus}"), title_justify="left")
    for column in ["batch", "texts", "forward texts/s", "batch texts/s", "batch/fwd"]:
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(str(r.batch_size), str(r.texts), f"{r.forward_texts_per_s:.0f}", f"{r.batch_texts_per_s:.0f}",
                      f"{r.ratio:.2f}x")
    out.print(table)


#: The largest batch bench builds (a synthetic batch of this many texts must fit in memory).
MAX_BENCH_BATCH = 4096


def _positive_ints(text: str, option: str, most: int | None = None) -> list[int]:
    """``--lengths 32,128``: one or more positive integers (at most ``most``)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise InputError(f"{option} expects comma-separated positive integers, got {text!r}")
    if most is not None and max(values) > most:
        raise InputError(f"{option} takes at most {most}, got {max(values)}")
    return values


@app.command()
def batch(
    model: Annotated[Path, typer.Argument(help="export directory (model.onnx + tokenizer.json) or .onnx file")],
    input_path: Annotated[Path, typer.Option("--input", help=".jsonl (strings or {'text', 'id'}) or a text file")],
    output_path: Annotated[
        str, typer.Option("--output", help="results as JSON lines, resumed if a run of the same job left some; - for stdout")
    ],
    batch_size: Annotated[int, typer.Option(min=1, help="texts per onnxruntime run")] = 32,
    target: Annotated[Optional[str], typer.Option(help="position whose attribution is stored, or 'mean' (default 0; "
                                                  "'mean' for a mean-pooled sentence encoder)")] = None,
    full: Annotated[bool, typer.Option(help="also store every layer's contributions and rollout")] = False,
    words: Annotated[bool, typer.Option("--words", help="also store the word-level attribution (and, with --full, "
                                        "matrices)")] = False,
    pairs_per_run: Annotated[
        int, typer.Option(min=1, help="token pairs per onnxruntime run (texts x padded length^2): bounds memory")
    ] = 32 * 128 * 128,  # corpus.PAIRS_PER_RUN (not imported here: the CLI starts without onnx)
    chunk_size: Annotated[
        Optional[int], typer.Option(min=1, help="texts written (and synced) at a time (default 512, 32 with --full)")
    ] = None,
    input_map: InputMapOption = None,
    self_check_tolerance: ToleranceOption = DEFAULT_TOLERANCE,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, help="encoder-decoder: most tokens generated for a record "
                          "without a 'target'")
    ] = 32,
    ray: Annotated[
        Optional[str], typer.Option("--ray", help="run on Ray: 'local' (a cluster on this machine, loopback only) or "
                                    "a cluster's address; --output is then a directory of shards")
    ] = None,
    actors: Annotated[int, typer.Option(min=1, help="with --ray: Explainers running at once")] = 1,
    cpus_per_actor: Annotated[float, typer.Option(min=0, help="with --ray: CPUs each actor takes")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option(min=0, help="with --ray: GPUs each actor takes")] = 0.0,
    encoder: EncoderOption = None,
    decoder: DecoderOption = None,
    decoder_start_token_id: StartTokenOption = None,
    logit: LogitOption = False,
    class_: ClassOption = None,
    target_token: TargetTokenOption = None,
    foil: FoilOption = None,
    per_head: PerHeadOption = False,
    routes: RoutesOption = False,
    threshold: ThresholdOption = None,
    renormalize: RenormalizeOption = False,
    lens: LensOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Explain a corpus into JSON lines; rerunning after an interruption resumes without loss or duplicates.

    Each input line gets one record in its place: the explanation, or an 'error' saying why not. For an
    encoder-decoder export a line may be {"text": SOURCE, "target": TARGET}: the target is explained
    teacher-forced, and without one the model's greedy output. With --logit each record also holds
    the logit decomposition; a line's own "class" or "target_token" and "foil" replace the options'.
    With --routes each record also holds its routes to the prediction, and the run ends with which
    heads and feed-forward blocks the corpus relies on: a table, OUTPUT.routes.json and a layer x head
    heatmap OUTPUT.routes.png (docs/routes.md).
    """
    if ray is not None:
        with user_errors():
            if device != "auto":
                raise InputError("--device is for a batch on this machine; on Ray each actor takes auto (a GPU where "
                                 "--gpus-per-actor gives it one)")
            query = _logit_fields(None, logit, class_, target_token, foil, per_head, target)
            route_fields = _route_fields(routes, threshold, renormalize, target, lens)
        _batch_on_ray(model, input_path, output_path, ray, actors, cpus_per_actor, gpus_per_actor, batch_size=batch_size,
                      target=target, full=full, words=words, max_new_tokens=max_new_tokens, pairs_per_run=pairs_per_run,
                      self_check_tolerance=self_check_tolerance, input_map=input_map, encoder=encoder, decoder=decoder,
                      decoder_start_token_id=decoder_start_token_id, logit=query, routes=route_fields)
        if route_fields is not None:
            with user_errors():
                _route_summary(model, Path(output_path))
        return
    from rich.progress import Progress

    from alti_onnx.corpus.inputs import count_lines
    from alti_onnx.corpus.run import explain_corpus, require_corpus

    streaming = output_path == "-" or (Path(output_path).exists() and not Path(output_path).is_file())
    report = err if streaming else out  # records may own stdout (-, /dev/stdout, a pipe)
    with user_errors():
        target = _target_option(target)
        require_corpus(input_path)
        explainer = _explainer(model, input_map, self_check_tolerance, encoder=encoder, decoder=decoder,
                               decoder_start_token_id=decoder_start_token_id, device=device)
        query = _logit_fields(explainer, logit, class_, target_token, foil, per_head, target)
        route_fields = _route_fields(routes, threshold, renormalize, target, lens)
        # Off when stderr is no terminal: its closing blank line would break the one-line error contract.
        with Progress(console=err, transient=True, disable=not err.is_terminal) as progress, _writing(Path(output_path)):
            task = progress.add_task("explaining", total=count_lines(input_path))
            summary = explain_corpus(
                explainer, input_path, output_path, batch_size=batch_size, target=target, full=full,
                on_record=lambda done: progress.update(task, completed=done), pairs_per_run=pairs_per_run,
                chunk_size=chunk_size, max_new_tokens=max_new_tokens, words=words, logit=query,
                routes=route_fields,
            )
        if summary.written and summary.failed == summary.written:
            raise InputError(f"every one of the {summary.written} texts failed, the first: {summary.first_error}")
    report.print(escape(
        f"{summary.written} records written to {'stdout' if output_path == '-' else output_path} ({summary.skipped} already "
        f"there, {summary.failed} with errors)"), soft_wrap=True)
    if route_fields is not None and output_path != "-" and not streaming:
        with user_errors():
            _route_summary(model, Path(output_path), explainer)
    elif route_fields is not None:
        err.print("(no corpus summary of the routes: the records went to a stream, not a file to read back)")


def _route_fields(routes: bool, threshold: Optional[float], renormalize: bool, target,
                  lens: Optional[int] = None) -> Optional[dict]:
    """``batch``'s route options as the JSON-friendly fields of a RouteQuery (they enter the job's identity).
    A corpus run leaves the logit lens out unless --lens asks (it is most of a language model's record)."""
    if not (routes or threshold is not None or renormalize or lens is not None):
        return None
    from alti_onnx.decomposition.routes import THRESHOLD
    from alti_onnx.results.routes import RouteQuery

    parsed = _target_option(target)
    query = RouteQuery(threshold=THRESHOLD if threshold is None else threshold, renormalize=renormalize,
                       position=parsed, lens=0 if lens is None else lens)  # checked here, before any record
    return {"threshold": query.threshold, "renormalize": query.renormalize, "position": query.position,
            "lens": query.lens}


def _route_summary(model: Path, output: Path, explainer=None) -> None:
    """Which heads and feed-forward blocks the corpus relies on: the table, OUTPUT.routes.json and the heatmap."""
    from alti_onnx.corpus.route_summary import read_output_records, summarize_routes, write_heatmap
    from alti_onnx.runtime.model_files import locate_model

    graphs = locate_model(model).graphs
    if "model" not in graphs:
        out.print("(the corpus summary is made for models in one graph; an encoder-decoder's records hold its routes)")
        return
    if explainer is None:
        from alti_onnx.runtime.prepared import prepare

        blocks = prepare(graphs["model"]).analysis.blocks
    else:
        blocks = explainer.blocks
    try:
        summary = summarize_routes(read_output_records(output), len(blocks), max(b.num_heads for b in blocks))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"the routes of {output} cannot be summarized: {exc}") from None
    base = output.parent / output.name
    json_path = base.with_name(base.name + ".routes.json")
    with _writing(json_path):
        json_path.write_text(json.dumps(summary.to_dict(), allow_nan=False))
    table = Table(title=Text(f"components on a route to the prediction, over {summary.texts} texts"),
                  title_justify="left")
    for column in ("component", "share of texts", "mean weight"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for name, share, weight in summary.top_components():
        table.add_row(name, f"{share:.2f}", f"{weight:.3f}")
    out.print(table)
    out.print(escape(f"wrote {json_path}"), soft_wrap=True)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        out.print("(no heatmap: matplotlib, the 'plot' extra, is not installed)")
        return
    png_path = base.with_name(base.name + ".routes.png")
    with _writing(png_path):
        write_heatmap(summary, png_path, f"{_model_name(model)}: share of {summary.texts} texts with the component "
                                         "on a route")
    out.print(escape(f"wrote {png_path}"), soft_wrap=True)


def _batch_on_ray(model: Path, input_path: Path, output_path: str, address: str, actors: int, cpus_per_actor: float,
                  gpus_per_actor: float, **options) -> None:
    """``batch --ray``: the corpus explained by Ray actors into shards (alti_onnx.corpus.distributed). A local
    cluster runs in a network namespace of its own, whose only interface is loopback."""
    import os
    import subprocess
    import sys

    with user_errors():
        if output_path == "-":
            raise InputError("--ray writes a directory of shards (--output DIR), not standard output")
        from alti_onnx.corpus.distributed import (
            local_cluster,
            loopback_only_command,
            only_loopback,
            plan_shards,
            run_shards,
        )
        from alti_onnx.runtime.model_inputs import parse_input_map

        # checked (and the output claimed) before any cluster starts: bad input is one line, not Ray's logs
        plan = plan_shards(model, input_path, output_path, self_check_tolerance=options.pop("self_check_tolerance"),
                           input_map=parse_input_map(options.pop("input_map") or []),
                           target=_target_option(options.pop("target")), **options)
        if address == "local" and not only_loopback():
            command = loopback_only_command(sys.argv)
            if command is None:
                raise InputError("--ray local needs Linux's unshare to keep Ray's servers on 127.0.0.1 (Ray itself "
                                 "listens on every interface); start a cluster and pass its address instead")
            raise typer.Exit(subprocess.run(command, check=False).returncode)
        import ray

        if address == "local":
            local_cluster(num_cpus=os.cpu_count())
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        try:
            summary = run_shards(plan, actors, cpus_per_actor, gpus_per_actor)
        finally:
            ray.shutdown()
        if summary.written and summary.failed == summary.written:
            raise InputError(f"every one of the {summary.written} texts failed, the first: {summary.first_error}")
    out.print(escape(f"{summary.written} records written to {output_path} in {summary.shards - summary.skipped} shards "
                     f"({summary.skipped} shards already there, {summary.failed} records with errors)"), soft_wrap=True)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning about the user's model (``errors.ModelWarning``) as one 'warning:' line on stderr."""
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def run(argv: list[str] | None = None) -> int:
    """The console script's exit code. What typer shows as a boxed usage panel (an unknown command, a
    missing or invalid option) is one line on stderr too, like every other error."""
    import warnings

    warnings.showwarning = _one_line_warning
    warnings.filterwarnings("ignore")  # libraries' warnings are not the user's concern ...
    warnings.filterwarnings("always", category=ModelWarning)  # ... the model's are
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="alti-onnx", standalone_mode=False)
    except Exception as exc:
        describe, code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
        if describe is None or code is None:  # not a usage error: a bug, shown as such
            raise
        message = " ".join(describe().split())
        if not message and getattr(exc, "ctx", None) is not None:  # no arguments at all: the help
            out.print(exc.ctx.get_help())
            return code
        err.print(f"error: {escape(message)}", highlight=False, soft_wrap=True)
        return code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    from .console import main

    main()
