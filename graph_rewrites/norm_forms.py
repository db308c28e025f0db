"""Every spelling of LayerNorm and RMSNorm that exporters write, rewritten into one canonical op.

The block matcher reads only ``LayerNormalization(x, scale, bias, axis=-1, epsilon)`` and
``RMSNormalization(x, scale, axis=-1, epsilon)``. Exporters spell the same function many ways:

- PyTorch below opset 17 and onnxruntime's unfusing: ``(x - mean) / sqrt(mean((x - mean)^2) + eps)``;
- TensorFlow and Keras (``tf.nn.moments`` + ``tf.nn.batch_normalization``): the scale and shift folded
  into ``x * s + (beta - mean * s)`` or ``x * s + (-mean * s + beta)`` with ``s = gamma / sqrt(var + eps)``,
  each mean a ``GlobalAveragePool`` of a rank-3 tensor (tf2onnx);
- Flax: the variance as ``max(mean(x^2) - mean(x)^2, 0)``;
- RMSNorm: ``x / sqrt(mean(x^2) + eps)`` with Div, Reciprocal or ``Pow(-0.5)`` (Llama, Qwen, SmolLM).

Recognition runs in stages, each a set of small onnxscript rewrite rules (pattern, check, rewrite):
the statistics first (a mean over the last axis, the variance, the standard deviation and its
inverse, the mean square), as ops of this module's own domain; then the norms as patterns over
those; then the scale and shift that follow as Mul/Add by constants are folded into the norm.
Small patterns keep onnxscript's commuted variants few. The rules rewrite the analysis copy only:
the model that runs keeps its own ops, and every replacement keeps the name of the value it
replaces, so names found on the copy exist in the model.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxscript.optimizer
from onnxscript.rewriter import pattern

from .domains import is_default_domain

#: The domain of the statistics ops that exist only on the analysis copy.
DOMAIN = "graph_rewrites.norm"
CANONICAL_NORMS = ("LayerNormalization", "RMSNormalization")


# --------------------------------------------------------------------------- statistics
class MeanOverLastAxis(pattern.RewriteRuleClassBase):
    """``ReduceMean(x, axes=[last], keepdims=1)`` (axes as attribute or input) -> ``Mean(x)``."""

    def pattern(self, op, x):
        return op.ReduceMean(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["mean"])

    def check(self, context, x, mean, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not _reduces_last_axis(mean.producer()):
            result.fail("not a keepdims mean over the last axis", mean)
        return result

    def rewrite(self, op, x, **_):
        return op.Mean(x, _domain=DOMAIN)


class GlobalPoolMean(pattern.RewriteRuleClassBase):
    """``GlobalAveragePool(x)`` of a rank-3 ``[B, S, D]`` tensor averages D (tf2onnx) -> ``Mean(x)``."""

    def pattern(self, op, x):
        return op.GlobalAveragePool(x)

    def check(self, context, x, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if _rank(x) != 3:
            result.fail("GlobalAveragePool averages the last axis only of a rank-3 tensor", x)
        return result

    def rewrite(self, op, x, **_):
        return op.Mean(x, _domain=DOMAIN)


class CenteredVariance(pattern.RewriteRuleClassBase):
    """``Mean((x - Mean(x))^2)`` -> ``Variance(x)`` (the centered x may feed other nodes)."""

    def __init__(self, name: str, square: str):
        super().__init__(name)
        self._square = square

    def pattern(self, op, centered):
        squared = op.Mul(centered, centered) if self._square == "Mul" else op.Pow(centered, self._square_exponent())
        return op.Mean(squared, _domain=DOMAIN)

    def _square_exponent(self):
        return 2.0 if self._square == "Pow float" else 2

    def check(self, context, centered, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._x = _centered_input(centered)
        if self._x is None:
            result.fail("not the square of x - Mean(x)", centered)
        return result

    def rewrite(self, op, **_):
        return op.Variance(self._x, _domain=DOMAIN)


class SecondMomentVariance(pattern.RewriteRuleClassBase):
    """``Mean(x * x) - Mean(x)^2`` -> ``Variance(x)`` (Flax; ``Max(Variance, 0)`` is dropped next)."""

    def pattern(self, op, x, mean):
        return op.Sub(op.Mean(op.Mul(x, x), _domain=DOMAIN), op.Mul(mean, mean))

    def check(self, context, x, mean, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not _is_mean_of(mean, x):
            result.fail("the subtracted square is not Mean(x)^2", mean)
        return result

    def rewrite(self, op, x, **_):
        return op.Variance(x, _domain=DOMAIN)


class ClippedVariance(pattern.RewriteRuleClassBase):
    """``Max(Variance(x), 0)`` -> ``Variance(x)``: a variance is never negative."""

    def pattern(self, op, x, zero):
        return op.Max(op.Variance(x, _domain=DOMAIN), zero)

    def check(self, context, zero, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if _scalar(zero) != 0.0:
            result.fail("not a clip at zero", zero)
        return result

    def rewrite(self, op, x, **_):
        return op.Variance(x, _domain=DOMAIN)


class StandardDeviation(pattern.RewriteRuleClassBase):
    """``Sqrt(stat(x) + eps)`` -> ``Std(x, epsilon)`` (LayerNorm, from Variance) or
    ``RootMeanSquare(x, epsilon)`` (RMSNorm, from the mean square)."""

    def __init__(self, name: str, statistic: str):
        super().__init__(name)
        self._statistic = statistic

    def pattern(self, op, x, epsilon):
        return op.Sqrt(op.Add(self._of(op, x), epsilon))

    def _of(self, op, x):
        return op.Variance(x, _domain=DOMAIN) if self._statistic == "Variance" else _mean_square(op, x)

    def check(self, context, epsilon, **_) -> pattern.MatchResult:
        return _epsilon_check(self, epsilon)

    def rewrite(self, op, x, **_):
        name = "Std" if self._statistic == "Variance" else "RootMeanSquare"
        return getattr(op, name)(x, _domain=DOMAIN, epsilon=self._epsilon)


class InverseStandardDeviation(pattern.RewriteRuleClassBase):
    """``1 / Std``: Reciprocal(Std), Div(1, Std), or Pow(var + eps, -0.5) -> ``InverseStd(x, epsilon)``
    (and the same for RootMeanSquare)."""

    def __init__(self, name: str, statistic: str, spelling: str):
        super().__init__(name)
        self._statistic, self._spelling = statistic, spelling

    def pattern(self, op, x, epsilon, one):
        if self._spelling == "Pow":
            base = op.Variance(x, _domain=DOMAIN) if self._statistic == "Std" else _mean_square(op, x)
            return op.Pow(op.Add(base, epsilon), -0.5)
        deviation = getattr(op, self._statistic)(x, _domain=DOMAIN, _outputs=["deviation"])
        return op.Reciprocal(deviation) if self._spelling == "Reciprocal" else op.Div(one, deviation)

    def check(self, context, one=None, epsilon=None, deviation=None, **_) -> pattern.MatchResult:
        if self._spelling == "Pow":
            return _epsilon_check(self, epsilon)
        result = pattern.MatchResult()
        if self._spelling == "Div" and _scalar(one) != 1.0:
            result.fail("not 1 / deviation", one)
        self._epsilon = deviation.producer().attributes["epsilon"].as_float()
        return result

    def rewrite(self, op, x, **_):
        return getattr(op, f"Inverse{self._statistic}")(x, _domain=DOMAIN, epsilon=self._epsilon)


# --------------------------------------------------------------------------- norms
class CenteredLayerNorm(pattern.RewriteRuleClassBase):
    """``(x - Mean(x)) / Std(x)`` or ``(x - Mean(x)) * InverseStd(x)`` -> LayerNormalization, unit scale."""

    def __init__(self, name: str, divide: bool):
        super().__init__(name)
        self._divide = divide

    def pattern(self, op, x):
        centered = op.Sub(x, op.Mean(x, _domain=DOMAIN))
        if self._divide:
            return op.Div(centered, op.Std(x, _domain=DOMAIN, _outputs=["statistic"]))
        return op.Mul(centered, op.InverseStd(x, _domain=DOMAIN, _outputs=["statistic"]))

    def check(self, context, x, **_) -> pattern.MatchResult:
        return _width_check(self, x)

    def rewrite(self, op, x, statistic, **_):
        epsilon = statistic.producer().attributes["epsilon"].as_float()
        return op.LayerNormalization(x, _constant(op, np.ones(self._width or 1)), axis=-1, epsilon=epsilon)


class FoldedLayerNorm(pattern.RewriteRuleClassBase):
    """``x * s + (beta - Mean(x) * s)`` with ``s = InverseStd(x) * gamma`` (tf.nn.batch_normalization,
    tf2onnx), or with the shift written ``-Mean(x) * s + beta`` (Keras 3) -> LayerNormalization."""

    def __init__(self, name: str, negated_mean: bool):
        super().__init__(name)
        self._negated_mean = negated_mean

    def pattern(self, op, x, gamma, beta):
        mean = op.Mean(x, _domain=DOMAIN)
        scale = op.Mul(op.InverseStd(x, _domain=DOMAIN, _outputs=["statistic"]), gamma)
        if self._negated_mean:
            shift = op.Add(op.Mul(op.Neg(mean), scale), beta)
        else:
            shift = op.Sub(beta, op.Mul(mean, scale))
        return op.Add(op.Mul(x, scale), shift)

    def check(self, context, x, gamma, beta, **_) -> pattern.MatchResult:
        result = _width_check(self, x)
        if result:
            self._gamma, self._beta = _vector(gamma, self._width), _vector(beta, self._width)
            if self._gamma is None or self._beta is None:
                result.fail("gamma and beta are not constant vectors over the normalized axis", gamma)
        return result

    def rewrite(self, op, x, statistic, **_):
        epsilon = statistic.producer().attributes["epsilon"].as_float()
        return op.LayerNormalization(x, _constant(op, self._gamma), _constant(op, self._beta), axis=-1, epsilon=epsilon)


class RootMeanSquareNorm(pattern.RewriteRuleClassBase):
    """``x / RootMeanSquare(x)`` or ``x * InverseRootMeanSquare(x)`` -> RMSNormalization, unit scale."""

    def __init__(self, name: str, divide: bool):
        super().__init__(name)
        self._divide = divide

    def pattern(self, op, x):
        if self._divide:
            return op.Div(x, op.RootMeanSquare(x, _domain=DOMAIN, _outputs=["statistic"]))
        return op.Mul(x, op.InverseRootMeanSquare(x, _domain=DOMAIN, _outputs=["statistic"]))

    def check(self, context, x, **_) -> pattern.MatchResult:
        return _width_check(self, x)

    def rewrite(self, op, x, statistic, **_):
        epsilon = statistic.producer().attributes["epsilon"].as_float()
        return op.RMSNormalization(x, _constant(op, np.ones(self._width or 1)), axis=-1, epsilon=epsilon)


class ScaleIntoNorm(pattern.RewriteRuleClassBase):
    """``norm(x) * gamma`` (a Cast between allowed) -> the norm with its scale (and bias) times gamma."""

    def __init__(self, name: str, op_type: str, cast: bool):
        super().__init__(name)
        self._op_type, self._cast = op_type, cast

    def pattern(self, op, x, gamma):
        normed = getattr(op, self._op_type)(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["normed"])
        if self._cast:
            normed = op.Cast(normed, _allow_other_attributes=True)
        return op.Mul(normed, gamma)

    def check(self, context, normed, gamma, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._node = normed.producer()
        self._gamma = _vector(gamma, _last_dim(self._node.inputs[0]))
        if self._gamma is None or _constant_array(self._node.inputs[1]) is None:
            result.fail("not a constant per-channel scale", gamma)
        return result

    def rewrite(self, op, x, **_):
        inputs = list(self._node.inputs)
        for k in range(1, len(inputs)):  # scale, and the bias when there is one
            if inputs[k] is not None:
                inputs[k] = _constant(op, _constant_array(inputs[k]) * self._gamma)
        return getattr(op, self._op_type)(*inputs, **_attributes(self._node))


class BiasIntoNorm(pattern.RewriteRuleClassBase):
    """``LayerNormalization(x) + beta`` -> the LayerNorm with its bias plus beta."""

    def pattern(self, op, x, beta):
        normed = op.LayerNormalization(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["normed"])
        return op.Add(normed, beta)

    def check(self, context, normed, beta, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._node = normed.producer()
        self._beta = _vector(beta, _last_dim(self._node.inputs[0]))
        if self._beta is None or _constant_array(self._node.inputs[1]) is None:
            result.fail("not a constant per-channel shift", beta)
        return result

    def rewrite(self, op, x, **_):
        inputs = list(self._node.inputs) + [None] * (3 - len(self._node.inputs))
        old = 0.0 if inputs[2] is None else _constant_array(inputs[2])
        return op.LayerNormalization(inputs[0], inputs[1], _constant(op, self._beta + old), **_attributes(self._node))


#: A rule and the ops it cannot match without (a stage only runs the rules whose ops the graph has:
#: a full pass of the 64 commuted FoldedLayerNorm variants costs a second on a 30-layer model).
Rule = tuple[frozenset[str], pattern.RewriteRule]


def _stages() -> list[list[Rule]]:
    """The rules of each stage, in the order the stages must run (each to a fixed point)."""
    def needs(*ops: str) -> frozenset[str]:
        return frozenset(ops)

    statistics = [
        (needs("ReduceMean"), MeanOverLastAxis.rule("mean over the last axis")),
        (needs("GlobalAveragePool"), GlobalPoolMean.rule("GlobalAveragePool mean")),
        *((needs("Mean"), CenteredVariance.rule(f"centered variance ({s})", square=s)) for s in ("Mul", "Pow float", "Pow int")),
        (needs("Mean", "Sub"), SecondMomentVariance.rule("second-moment variance")),
        (needs("Variance", "Max"), ClippedVariance.rule("variance clipped at 0")),
    ]
    deviations = [
        (needs("Variance", "Sqrt"), StandardDeviation.rule("sqrt(var + eps)", statistic="Variance")),
        (needs("Mean", "Sqrt"), StandardDeviation.rule("sqrt(mean square + eps)", statistic="MeanSquare")),
        (needs("Variance", "Pow"), InverseStandardDeviation.rule("Pow(var + eps, -0.5)", statistic="Std", spelling="Pow")),
        (needs("Mean", "Pow"), InverseStandardDeviation.rule("Pow(mean square + eps, -0.5)", statistic="RootMeanSquare", spelling="Pow")),
        *(
            (needs(statistic, spelling), InverseStandardDeviation.rule(f"{spelling} of {statistic}", statistic=statistic, spelling=spelling))
            for statistic in ("Std", "RootMeanSquare")
            for spelling in ("Reciprocal", "Div")
        ),
    ]
    norms = [
        (needs("Std"), CenteredLayerNorm.rule("centered LayerNorm (Div)", divide=True)),
        (needs("InverseStd"), CenteredLayerNorm.rule("centered LayerNorm (Mul)", divide=False)),
        (needs("InverseStd", "Neg"), FoldedLayerNorm.rule("folded LayerNorm (-mean * s + beta)", negated_mean=True)),
        (needs("InverseStd"), FoldedLayerNorm.rule("folded LayerNorm (beta - mean * s)", negated_mean=False)),
        (needs("RootMeanSquare"), RootMeanSquareNorm.rule("RMSNorm (Div)", divide=True)),
        (needs("InverseRootMeanSquare"), RootMeanSquareNorm.rule("RMSNorm (Mul)", divide=False)),
    ]
    affine = [
        *((needs(t), ScaleIntoNorm.rule(f"scale into {t}", op_type=t, cast=c)) for t in CANONICAL_NORMS for c in (False, True)),
        (needs("LayerNormalization"), BiasIntoNorm.rule("bias into LayerNormalization")),
    ]
    return [statistics, deviations, norms, affine]


_STAGES: list[list[Rule]] = []
#: Commuted rule sets, by the rules chosen (commuting a pattern is itself costly).
_RULE_SETS: dict[tuple[int, ...], pattern.RewriteRuleSet] = {}


def canonicalize_norms(model: ir.Model) -> int:
    """Rewrite every recognized norm spelling of ``model`` (in place) into its canonical op; returns
    the number of rewrites. ``model`` must carry shapes (ranks and the normalized width come from them)."""
    if not _STAGES:
        _STAGES.extend(_stages())
    total = 0
    for stage in _STAGES:
        # Rules of a stage build on each other (a Mean, then a Variance of it): choose again after each pass.
        while (rules := _rule_set(stage, {node.op_type for node in model.graph})) is not None:
            count = rules.apply_to_model(model)
            if count == 0:
                break
            total += count
        # A replaced statistic can leave dead readers of its inputs (the centered x of a folded
        # LayerNorm); they would count as outside uses and block the next stage's match.
        onnxscript.optimizer.remove_unused_nodes(model)
    return total


def _rule_set(stage: list[Rule], present: set[str]) -> pattern.RewriteRuleSet | None:
    """The commuted rule set of the stage's rules whose ops are all ``present`` (None: no rule can match)."""
    chosen = tuple(id(rule) for needed, rule in stage if needed <= present)
    if not chosen:
        return None
    if chosen not in _RULE_SETS:
        _RULE_SETS[chosen] = pattern.RewriteRuleSet([rule for _, rule in stage if id(rule) in chosen], commute=True)
    return _RULE_SETS[chosen]


# --------------------------------------------------------------------------- helpers
def _mean_square(op, x):
    squared = pattern.OrValue([op.Mul(x, x), op.Pow(x, 2.0), op.Pow(x, 2)], tag_var="square")
    return op.Mean(squared, _domain=DOMAIN)


def _epsilon_check(rule, epsilon: ir.Value) -> pattern.MatchResult:
    result = pattern.MatchResult()
    value = _scalar(epsilon)
    if value is None or value < 0:
        result.fail("epsilon is not a non-negative scalar constant", epsilon)
    rule._epsilon = value
    return result


def _width_check(rule, x: ir.Value) -> pattern.MatchResult:
    """Records the normalized width (None when shape inference lost it: a unit scale of one element
    then stands for all, and the scale folded in next sets the width)."""
    rule._width = _last_dim(x)
    return pattern.MatchResult()


def _centered_input(centered: ir.Value) -> ir.Value | None:
    """x when ``centered`` is ``Sub(x, Mean(x))``."""
    sub = centered.producer()
    if sub is None or sub.op_type != "Sub" or not is_default_domain(sub.domain):
        return None
    x, mean = sub.inputs
    return x if _is_mean_of(mean, x) else None


def _is_mean_of(mean: ir.Value, x: ir.Value) -> bool:
    producer = mean.producer()
    return producer is not None and producer.domain == DOMAIN and producer.op_type == "Mean" and producer.inputs[0] is x


def _reduces_last_axis(node: ir.Node) -> bool:
    """A keepdims mean over exactly the last axis of its input."""
    rank = _rank(node.inputs[0])
    keepdims = node.attributes.get("keepdims")
    if keepdims is not None and keepdims.as_int() == 0:
        return False
    axes_attr = node.attributes.get("axes")
    if axes_attr is not None:
        axes = list(axes_attr.as_ints())
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        const = _constant_array(node.inputs[1])
        axes = None if const is None else [int(a) for a in np.ravel(const)]
    else:
        axes = None
    return axes is not None and len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))


def _rank(value: ir.Value) -> int | None:
    return None if value.shape is None else value.shape.rank()


def _last_dim(value: ir.Value) -> int | None:
    if value.shape is None or value.shape.rank() == 0:
        return None
    last = value.shape[-1]
    return last if isinstance(last, int) else None


def _constant_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _scalar(value: ir.Value | None) -> float | None:
    array = _constant_array(value)
    return float(array.reshape(())) if array is not None and array.size == 1 else None


def _vector(value: ir.Value, width: int | None) -> np.ndarray | None:
    """A constant that broadcasts as one number per channel of the last axis, as [width] float64
    (``width`` None: the constant's own last dim)."""
    array = _constant_array(value)
    if array is None or array.dtype.kind != "f":
        return None
    if width is None:
        width = array.shape[-1] if array.ndim else 1
    if array.size not in (1, width) or (array.ndim and array.shape[-1] not in (1, width)):
        return None
    return np.broadcast_to(array.astype(np.float64).reshape(-1), (width,)).copy()


def _constant(op, array: np.ndarray):
    return op.Constant(value=ir.tensor(np.asarray(array, dtype=np.float32)))


def _attributes(node: ir.Node) -> dict[str, object]:
    return {name: attr.value for name, attr in node.attributes.items()}
