"""How each kind of attention block turns its decomposition into its output (docs/alti.md).

For every kind, T[i, j] = sum_h A^h[i, j] (v^h_j W_O^h) + [i == j] x_j and the attention output is
a_i = sum_j sum_h A^h[i, j] v^h_j W_O^h + b_O. A kind says what the block outputs (y), how to rebuild
it from a and x, and how its norm (if any) acts on T: every norm here is linear in T once a per-row
scale s_i is fixed, so T~[i, j] = s_i T'[i, j] is built from a scaled W_O (``mixing_weight``) and
scaled residual vectors x~ (``residual_vectors``), and the distances are divided by s_i.

- ``post`` (BERT, RoBERTa, DeBERTa, ALBERT, MPNet): y = LN(x + a); s_i = sigma(x_i + a_i),
  W~ = gamma (W_O - row means), x~ = gamma (x - mean x).
- ``pre`` (GPT-2, Llama, Qwen, Mistral, T5, ModernBERT): y = x + a, the residual sum; s_i = 1.
- ``sandwich`` (Gemma 2 and 3): y = x + n(a), a norm on the attention output alone (RMSNorm; a
  LayerNorm is centred as well); s_i = the norm's divisor of a_i, W~ = gamma W_O (centred for a
  LayerNorm), x~_j = s_j x_j.
- ``parallel`` (GPT-NeoX, Phi-2, GPT-J, Falcon): y = x + a as for pre-LN, but no tensor of the model
  holds it (the MLP's output is added in the same sum), so the model's y is rebuilt from the exposed
  residual and attention output: the self-check then tests the decomposition against the graph's
  attention output.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from graph_rewrites import AttentionBlock
from graph_rewrites.block import BLOCK_KINDS

from .arrays import Array, block_array, namespace


class BlockKind(Protocol):
    def output(self, block: AttentionBlock, attention: Array, residual: Array) -> Array:
        """y rebuilt from the attention output a (bias included) and the residual x, float64 [S, D]."""

    def row_scale(self, block: AttentionBlock, attention: Array, residual: Array) -> Array:
        """s_i, [S]: T~[i, j] = s_i T'[i, j]."""

    def mixing_weight(self, block: AttentionBlock) -> np.ndarray:
        """W_O as it acts on T~, [H*dh, D] float64 (NumPy: the namespace's copy is ``arrays.block_array``'s)."""

    def residual_vectors(self, block: AttentionBlock, residual: Array, scale: Array) -> Array:
        """x~, [S, D] float64: the residual term of T~[j, j]."""

    def model_output(self, block: AttentionBlock, exposed: Array, residual: Array) -> Array:
        """The model's own y, from the block's exposed output tensor."""


def _sigma(u: Array, epsilon: float, centred: bool) -> Array:
    """The norm's divisor per row: sqrt(var + eps) for a LayerNorm, sqrt(mean square + eps) for RMSNorm."""
    xp = namespace(u)
    second = xp.var(u, axis=-1) if centred else xp.mean(u * u, axis=-1)
    return xp.sqrt(second + epsilon)


def _gamma(block: AttentionBlock, like: Array) -> Array:
    """The norm's scale gamma, float64, in the namespace of ``like``."""
    return block_array(block, "norm_weight", namespace(like), np.float64, lambda: block.norm_weight)


def _beta(block: AttentionBlock, like: Array) -> Array | float:
    """The norm's bias beta (0.0 for a norm without one), float64, in the namespace of ``like``."""
    if block.norm_bias is None:
        return 0.0
    return block_array(block, "norm_bias", namespace(like), np.float64, lambda: block.norm_bias)


def _normalized(u: Array, block: AttentionBlock) -> Array:
    """The block's norm applied to u: gamma (u - mean u) / sigma + beta, or gamma u / rms for RMSNorm."""
    xp = namespace(u)
    centred = not block.norm_rms
    shifted = u - xp.mean(u, axis=-1, keepdims=True) if centred else u
    return _gamma(block, u) * shifted / _sigma(u, block.norm_epsilon, centred)[..., None] + _beta(block, u)


def _scaled_weight(block: AttentionBlock) -> np.ndarray:
    """gamma W_O, centred over the output features first when the norm subtracts the mean."""
    weight = block.out_proj_weight
    if not block.norm_rms:
        weight = weight - weight.mean(-1, keepdims=True)
    return weight * block.norm_weight


class PostLN:
    def output(self, block, attention, residual):
        return _normalized(residual + attention, block)

    def row_scale(self, block, attention, residual):
        return _sigma(residual + attention, block.norm_epsilon, not block.norm_rms)

    def mixing_weight(self, block):
        return _scaled_weight(block)

    def residual_vectors(self, block, residual, scale):
        xp = namespace(residual)
        centred = residual if block.norm_rms else residual - xp.mean(residual, axis=-1, keepdims=True)
        return centred * _gamma(block, residual)

    def model_output(self, block, exposed, residual):
        return exposed


class PreLN:
    def output(self, block, attention, residual):
        return residual + attention

    def row_scale(self, block, attention, residual):
        xp = namespace(residual)
        return xp.ones(residual.shape[:-1], dtype=xp.float64)

    def mixing_weight(self, block):
        return block.out_proj_weight

    def residual_vectors(self, block, residual, scale):
        return residual

    def model_output(self, block, exposed, residual):
        return exposed


class Sandwich:
    def output(self, block, attention, residual):
        return residual + _normalized(attention, block)

    def row_scale(self, block, attention, residual):
        return _sigma(attention, block.norm_epsilon, not block.norm_rms)

    def mixing_weight(self, block):
        return _scaled_weight(block)

    def residual_vectors(self, block, residual, scale):
        return residual * scale[..., None]

    def model_output(self, block, exposed, residual):
        return exposed


class Parallel(PreLN):
    def model_output(self, block, exposed, residual):
        return residual + exposed


_STRATEGIES: dict[str, BlockKind] = {"post": PostLN(), "pre": PreLN(), "sandwich": Sandwich(), "parallel": Parallel()}
#: One strategy for every kind the graph's residual forms produce (``graph_rewrites.block.BLOCK_KINDS``):
#: a kind added there without its strategy here fails at import, not on the first model of that kind.
KINDS: dict[str, BlockKind] = {kind: _STRATEGIES[kind] for kind in BLOCK_KINDS}


def kind_of(block: AttentionBlock) -> BlockKind:
    return KINDS[block.kind]
