"""The self-check every explanation runs per block: the decomposition rebuilds what the model computed."""

from __future__ import annotations

from alti_onnx.decomposition.arrays import namespace
from alti_onnx.decomposition.contributions import LayerContributions
from alti_onnx.errors import InputError, SelfCheckError

INT8_HINT = (
    "the model is dynamically quantized (int8 weights, activations quantized at run time), so the float "
    "decomposition with the dequantized W_O misses the activation rounding; pass --self-check-tolerance 2e-2 "
    "(API: self_check_tolerance=2e-2) to accept that error, or explain the float export"
)


def require_tolerance(tolerance: object) -> float:
    """The self-check tolerance a caller gave, refused unless a positive, finite number."""
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < float("inf")):
        raise InputError(f"the self-check tolerance must be a positive number, got {tolerance!r}")
    return float(tolerance)


def check_layer(where: str, computed: LayerContributions, tokens: list[str], tolerance: float,
                int8: bool = False) -> None:
    """The decomposition rebuilds the block output within ``tolerance`` (relative to the output's
    magnitude, at least 1), and every token receives some contribution (a row of zeros would be
    normalized into nothing, silently). ``where`` names the block ("layer 3")."""
    error, scale = computed.reconstruction_error, max(1.0, computed.output_scale)
    if not error <= tolerance * scale:
        raise SelfCheckError(
            f"self-check failed: {where}'s decomposition differs from the model's block output "
            f"by {error:.3g} (tolerance {tolerance * scale:.3g}); "
            + (INT8_HINT if int8 else "the graph is not what the block description says")
        )
    xp = namespace(computed.contributions)
    empty = xp.nonzero(xp.sum(computed.contributions, axis=-1) == 0)[0]
    if empty.shape[0]:
        first = int(empty[0])
        raise SelfCheckError(
            f"self-check failed: in {where}, token {first} ({tokens[first]!r}) receives no positive "
            f"contribution from any token (every one of its transformed vectors is as far from the block "
            f"output as the output is from zero): a degenerate block, nothing to attribute"
        )
