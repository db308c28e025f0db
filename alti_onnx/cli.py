"""The ``alti-onnx`` command line: a thin layer over the Python API.

Errors caused by the user's files or input print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .errors import USER_ERRORS, OutputPathError
from .export import ExportUnavailableError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ALTI explanations for transformer models in ONNX.")
out = Console()
err = Console(stderr=True)

DEFAULT_TEXT = "The movie was surprisingly good, with a clever plot and warm performances."


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the project's user-facing errors into one line on stderr and exit code 2."""
    try:
        yield
    except (*USER_ERRORS, ExportUnavailableError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


@app.command()
def export(
    hf_model_dir: Annotated[Path, typer.Argument(help="Hugging Face model directory")],
    out_dir: Annotated[Path, typer.Argument(help="where model.onnx and tokenizer.json go")],
    task: Annotated[Optional[str], typer.Option(help="optimum task, e.g. feature-extraction")] = None,
) -> None:
    """Export a Hugging Face checkpoint to ONNX with optimum (needs the 'export' extra)."""
    from .export import export_model

    with user_errors():
        if not hf_model_dir.exists():
            raise ExportUnavailableError(f"model directory not found: {hf_model_dir}")
        export_model(hf_model_dir, out_dir, task=task)
    out.print(escape(f"exported {hf_model_dir} -> {out_dir}"), soft_wrap=True)


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="export directory or .onnx file")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List the attention blocks found in the graph."""
    from graph_rewrites import find_attention_blocks, load_model

    from .explainer import locate_model

    with user_errors():
        blocks = find_attention_blocks(load_model(locate_model(model).onnx))
    if as_json:
        print(json.dumps([b.summary() for b in blocks], indent=2))
        return
    table = Table(title=Text(f"{len(blocks)} attention blocks in {model}"))
    for column in ("layer", "heads", "head size", "width", "norm", "probs", "values", "block output"):
        table.add_column(column)
    for b in blocks:
        table.add_row(
            str(b.layer), str(b.num_heads), str(b.head_size), str(b.hidden_size), f"{b.norm_placement}-LN",
            b.probs, b.values, b.output,
        )
    out.print(table)


@app.command()
def instrument(
    model: Annotated[Path, typer.Argument(help="export directory or .onnx file")],
    output: Annotated[Path, typer.Argument(help="where to write the rewritten .onnx")],
) -> None:
    """Write the model with every attention block's intermediates as extra outputs."""
    from graph_rewrites import find_attention_blocks, load_model, save_model
    from graph_rewrites import instrument as expose

    from .explainer import locate_model

    with user_errors():
        original = load_model(locate_model(model).onnx)
        blocks = find_attention_blocks(original)
        with _writing(output):
            save_model(expose(original, blocks), output)
    out.print(escape(f"wrote {output}: {len(blocks)} blocks, {sum(len(b.tensor_names()) for b in blocks)} extra outputs"), soft_wrap=True)


@app.command()
def explain(
    model: Annotated[Path, typer.Argument(help="export directory (model.onnx + tokenizer.json) or .onnx file")],
    text: Annotated[str, typer.Option("--text", "-t", help="the text to explain")],
    target: Annotated[Optional[int], typer.Option(help="position whose attribution is shown (default 0)")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the full explanation as JSON")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="tokenizer.json, if not beside the model")] = None,
    provider: Annotated[Optional[list[str]], typer.Option(help="onnxruntime provider (repeatable)")] = None,
) -> None:
    """Explain a text: each token's contribution to the target position after all layers."""
    from .explainer import Explainer

    with user_errors():
        explanation = Explainer(model, tokenizer=tokenizer, providers=provider).explain(text)
        target = explanation.default_target if target is None else target
        attribution = _attribution(explanation, target)
        if json_path is not None:
            with _writing(json_path):
                json_path.write_text(explanation.to_json(target))
    if explanation.prediction is not None:
        p = explanation.prediction
        out.print(Text(f"prediction: {p.label} (probability {p.probability:.4f})", style="bold"))
    print_attribution(explanation.tokens, attribution, target, explanation.reconstruction_error)
    if json_path is not None:
        out.print(escape(f"wrote {json_path}"), soft_wrap=True)


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failure to write ``path`` (missing or read-only folder, a file in the way) into one line."""
    try:
        yield
    except OSError as exc:
        blocker = next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is not a directory" if blocker is not None else exc.strerror or str(exc)
        raise OutputPathError(f"cannot write {path}: {reason}") from None


def _attribution(explanation, target: int):
    from .errors import InputError

    try:
        return explanation.attribution(target)
    except IndexError as exc:
        raise InputError(str(exc)) from None


def print_attribution(tokens: list[str], attribution, target: int, errors) -> None:
    """A table of tokens with their attribution to ``target`` as numbers and bars."""
    table = Table(title=Text(f"ALTI attribution to position {target} ({tokens[target]!r})"), title_justify="left")
    table.add_column("pos", justify="right")
    table.add_column("token")
    table.add_column("attribution", justify="right")
    table.add_column("")
    peak = float(max(attribution.max(), 1e-12))
    for position, (token, value) in enumerate(zip(tokens, attribution)):
        bar = "█" * max(0, round(30 * float(value) / peak))
        style = "bold" if position == target else ""
        table.add_row(str(position), Text(token), f"{value:.4f}", Text(bar, style="cyan"), style=style)
    out.print(table)
    out.print(f"self-check: max reconstruction error {max(errors):.2e} over {len(errors)} layers")


@app.command()
def demo(
    text: Annotated[str, typer.Option("--text", "-t", help="the text to explain")] = DEFAULT_TEXT,
) -> None:
    """Explain a text with the default model, built and cached on first use.

    The default model is all-MiniLM-L6-v2 fine-tuned as a Rotten Tomatoes sentiment classifier
    (models/sentiment.py); building it the first time fine-tunes it on the CPU (minutes).
    """
    with user_errors():
        try:
            from models.sentiment import build_sentiment_classifier
        except ImportError as exc:
            raise ExportUnavailableError(f"the model recipes need the 'export' extra: {exc}") from None
        model_dir = build_sentiment_classifier()
    explain(model_dir, text=text, target=None, json_path=None, tokenizer=None, provider=None)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
