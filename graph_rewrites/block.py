"""The description of one attention block that the rewrites hand to their users."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from .errors import PatternNotFoundError, UnmatchedAttentionError

#: Where the block's norm sits (docs/alti.md): after the residual sum (post), before attention only
#: (pre), before attention and on the attention output before the residual add (sandwich), or
#: before attention and an MLP that run side by side, both added to the residual (parallel).
BlockKind = Literal["post", "pre", "sandwich", "parallel"]
#: The kinds as values: what the residual forms produce (``residual_forms.FORMS``, held equal by a
#: test) and what the decomposition has one strategy for. Kept here, away from onnx-ir, so that a
#: cached start imports no graph code.
BLOCK_KINDS: tuple[str, ...] = get_args(BlockKind)

#: The steps of the attention-block pattern, in the order the matcher takes them.
STEPS = ("softmax", "probs x values", "head merge", "output projection", "residual add", "norm")


@dataclass(frozen=True)
class AttentionBlock:
    """Where one attention block's intermediates live in the graph, and its constant parameters.

    Tensor fields hold graph tensor names (found structurally, never matched on); the rewrite
    exposes the ones ``tensor_names`` lists as graph outputs. Shapes at run time:

    - ``probs``: attention probabilities, the Softmax output, [B, H, S, S];
    - ``values``: per-head value vectors that multiply ``probs``, [B, H_kv, S, head_size];
    - ``residual``: the block input that the residual connection adds back, [B, S, D];
    - ``norm_input``: the residual sum fed to the post-attention norm (post-LN only), [B, S, D];
      described, not exposed (see ``tensor_names``);
    - ``output``: the block output: the norm's output (post), the residual sum (pre, sandwich), or
      the attention output before anything is added to it (parallel: no tensor holds x + a).

    A cross-attention block (``cross``: an encoder-decoder's decoder) attends from the decoder's
    residual stream [B, T, D] to a memory of J positions that the stream does not feed (the
    encoder's output): ``probs`` is [B, H, T, J] and ``values`` [B, H_kv, J, head_size].

    ``norm_weight``/``norm_bias``/``norm_epsilon``/``norm_rms`` describe the norm the decomposition
    uses: post, the LayerNorm after the residual sum; sandwich, the norm on the attention output.
    For pre and parallel blocks they describe the norm before attention whose output feeds the
    values (LayerNorm, or RMSNorm with a zero bias): described only, the values already carry it.

    ``out_proj_weight`` is oriented so that ``merged_heads @ out_proj_weight`` is the projection,
    with rows ``h*head_size:(h+1)*head_size`` belonging to head h.
    """

    layer: int
    num_heads: int | None
    head_size: int | None
    kind: BlockKind
    probs: str
    values: str
    residual: str
    output: str
    norm_input: str | None
    out_proj_weight: np.ndarray = field(repr=False)
    out_proj_bias: np.ndarray | None = field(repr=False)
    norm_weight: np.ndarray | None = field(default=None, repr=False)
    norm_bias: np.ndarray | None = field(default=None, repr=False)
    norm_epsilon: float | None = None
    norm_rms: bool = False
    cross: bool = False

    @property
    def hidden_size(self) -> int:
        return int(self.out_proj_weight.shape[1])

    def tensor_names(self) -> list[str]:
        """The graph tensors this block needs at run time, in a fixed order.

        ``norm_input`` is deliberately left out: the decomposition does not need it (it is the
        residual plus the projection), and making the residual sum a graph output stops
        onnxruntime from fusing Add + LayerNormalization into SkipLayerNormalization, which
        changes the model's own outputs in their last bits (seen on torch's dynamo exports).
        """
        return [self.probs, self.values, self.residual, self.output]

    def summary(self) -> dict[str, object]:
        """A JSON-friendly description (no weights)."""
        return {
            "layer": self.layer,
            "num_heads": self.num_heads,
            "head_size": self.head_size,
            "hidden_size": self.hidden_size,
            "kind": self.kind,
            "cross": self.cross,
            "probs": self.probs,
            "values": self.values,
            "residual": self.residual,
            "norm_input": self.norm_input,
            "output": self.output,
            "out_proj_bias": self.out_proj_bias is not None,
            "norm_epsilon": self.norm_epsilon,
        }


@dataclass(frozen=True)
class UnmatchedSoftmax:
    """A Softmax of the graph that is not an attention block: where the pattern stopped, and why.

    ``attention_like``: its scores are a product of two activations or its output multiplies one,
    so it is most likely a block the matcher could not read, and explaining without it would
    silently drop a layer.
    """

    node: str
    step: str
    reason: str
    attention_like: bool

    def summary(self) -> dict[str, object]:
        return {"node": self.node, "step": self.step, "reason": self.reason, "attention_like": self.attention_like}


@dataclass(frozen=True)
class AttentionAnalysis:
    """Every Softmax of a model, accounted for: the matched blocks in layer order, and the rest."""

    blocks: list[AttentionBlock]
    unmatched: list[UnmatchedSoftmax]

    @property
    def missed(self) -> list[UnmatchedSoftmax]:
        """The unmatched Softmax nodes that look like attention."""
        return [u for u in self.unmatched if u.attention_like]

    def require_complete(self) -> list[AttentionBlock]:
        """The blocks, when every attention-like Softmax is one; else the error naming the first miss."""
        if self.missed:
            miss = self.missed[0]
            raise UnmatchedAttentionError(miss.step, miss.node, miss.reason, len(self.blocks), len(self.missed))
        if not self.blocks:
            if not self.unmatched:
                raise PatternNotFoundError(
                    "softmax", "the graph",
                    "it has no Softmax node (fused attention operators must be rewritten first: graph_rewrites.unfuse)",
                )
            furthest = max(self.unmatched, key=lambda u: STEPS.index(u.step))
            raise PatternNotFoundError(furthest.step, f"{furthest.node} ({len(self.unmatched)} Softmax node(s) tried)", furthest.reason)
        return self.blocks
