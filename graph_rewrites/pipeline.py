"""The one road from a model file to what its users need: load once, unfuse, infer shapes once,
analyse (fold constants and canonicalize norms on the analysis copy, find the blocks), then either
split the model per layer or instrument it.

``inspect``, ``instrument``, the prepared-model cache and the benchmark all start here, so a model
is read, unfused and analysed the same way whoever asks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from .analyze import analyze_attention, inferred_types_of, with_inferred_shapes
from .block import AttentionAnalysis, AttentionBlock
from .exposure import instrument
from .model_io import load_model
from .segments import Segment, split_model
from .unfusing import runnable_proto, unfused_ir


@dataclass(frozen=True)
class AnalysedModel:
    """A model taken through the passes: ``model`` is the unfused graph that runs (weights left in
    their files beside ``source``), ``analysis`` every Softmax accounted for, ``types`` the type of
    every tensor shape inference can tell (inferred once, for the analysis and the split)."""

    source: Path
    model: onnx.ModelProto
    analysis: AttentionAnalysis
    types: dict[str, onnx.TypeProto]

    @property
    def base_dir(self) -> Path:
        return self.source.parent

    def blocks(self) -> list[AttentionBlock]:
        """The blocks, when every attention-like Softmax is one (else the error naming the first miss)."""
        return self.analysis.require_complete()

    def instrumented(self) -> onnx.ModelProto:
        """The model with every block's intermediates as extra outputs."""
        return instrument(self.model, self.blocks())

    def segments(self) -> Iterator[Segment]:
        """The model split into one segment per block (and the head), made one at a time."""
        return split_model(self.model, [b.tensor_names() for b in self.analysis.blocks], self.types)


def analyse_file(path: str | Path) -> AnalysedModel:
    """Load ``path`` (weights stay on disk: any size), unfuse it and find its blocks. The model is
    converted to onnx-ir once: a fused export for unfusing, that same IR then becoming the analysis
    copy (and serialized once, as the graph that runs); a plain one for the analysis copy alone."""
    source = Path(path)
    loaded = load_model(source, load_weights=False)
    converted = unfused_ir(loaded)  # converted to onnx-ir only when there is something to unfuse
    model = loaded if converted is None else runnable_proto(converted)
    inferred = with_inferred_shapes(model)
    analysis = analyze_attention(model, base_dir=source.parent, inferred=inferred, converted=converted)
    return AnalysedModel(source, model, analysis, inferred_types_of(inferred))
