"""Reading the sentences to evaluate: a TSV with a ``text`` column, or one sentence per line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alti_onnx.errors import InputError

__all__ = ["Dataset", "read_texts"]


@dataclass(frozen=True)
class Dataset:
    """Sentences in file order, and their gold labels when the file has an integer ``label`` column."""

    texts: list[str]
    labels: list[int] | None = None


def read_texts(path: str | Path, n: int | None = None) -> Dataset:
    """The first ``n`` non-empty sentences of ``path``.

    A file whose first line, split on tabs, contains a ``text`` column is a TSV with a header (the
    Rotten Tomatoes split files: ``label<TAB>rating<TAB>text``; no quoting, the text column takes
    the rest of the line when it is the last one); anything else is plain text, one sentence a line.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"data file not found: {path}")
    if not path.is_file():
        raise InputError(f"data file {path} is not a regular file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text: {exc}") from None
    header = lines[0].split("\t") if lines else []
    texts: list[str] = []
    labels: list[int] | None = None
    if "text" in header:
        column = header.index("text")
        label_column = header.index("label") if "label" in header else None
        labels = [] if label_column is not None else None
        for line in lines[1:]:
            fields = line.split("\t", len(header) - 1)
            if len(fields) <= column or not fields[column].strip():
                continue
            texts.append(fields[column].strip())
            if labels is not None:
                value = fields[label_column].strip() if label_column < len(fields) else ""
                try:
                    label = int(value)
                except ValueError:
                    label = -1
                if label < 0:
                    raise InputError(f"{path}: the label of {texts[-1][:40]!r} is {value!r}, not a class index")
                labels.append(label)
            if n is not None and len(texts) >= n:
                break
    else:
        for line in lines:
            if line.strip():
                texts.append(line.strip())
            if n is not None and len(texts) >= n:
                break
    if not texts:
        raise InputError(f"no sentences in {path}")
    return Dataset(texts, labels if labels is not None and len(labels) == len(texts) else None)
