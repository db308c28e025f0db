"""How a block's attention output joins the residual stream: the residual forms, declared.

Past the shared attention core (Softmax -> probs x values -> head merge -> output projection ->
residual add, ``attention``), what surrounds the residual Add tells the block's kind
(docs/alti.md, "Block kinds"). Each form below is one small check that reads those surroundings
and returns the block's reading, or the reason it does not fit. ``FORMS`` tries them in order; when
none fits, every form's reason is reported. The kinds they produce are ``block.BLOCK_KINDS``, the
kinds the decomposition has a strategy for (a test holds the two equal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx_ir as ir

from .block import BlockKind
from .layer_norm import LAYER_NORM_OPS, LayerNormMatch, norm_reading
from .walk import backward, consumers, is_standard, same


@dataclass(frozen=True)
class Surroundings:
    """What the attention core found around the residual Add, which every form reads.

    ``values``/``grouped``: the values the probabilities multiply, and the same before grouped-query
    heads are repeated; ``source``: what the value projection reads (None when the walk got lost);
    ``pre``: the norm of x that ``source`` is (values projected from a norm); ``residual``: x;
    ``summed``: the Add bringing x in; ``attention``: a (b_O included); ``attention_norm``: a norm of
    a alone before that Add; ``parallel``: a is added with another branch of the same x.
    """

    values: ir.Value
    grouped: ir.Value
    source: ir.Value | None
    pre: LayerNormMatch | None
    residual: ir.Value
    summed: ir.Value
    attention: ir.Value
    attention_norm: LayerNormMatch | None
    parallel: bool
    width: int


@dataclass(frozen=True)
class FormMatch:
    """A block as one form reads it: its kind, the tensors it exposes, and the norm the decomposition uses."""

    kind: BlockKind
    values: ir.Value
    output: ir.Value
    norm_input: ir.Value | None
    norm: LayerNormMatch | None
    cross: bool = False


@dataclass(frozen=True)
class ResidualForm:
    """One way a block's output is made: ``read`` returns the block's reading, or why it is not this form."""

    name: str
    kind: BlockKind
    read: Callable[[Surroundings], FormMatch | str]


def _sandwich(s: Surroundings) -> FormMatch | str:
    """y = x + n(a): a norm of the attention output alone before the Add (Gemma 2 and 3)."""
    if s.attention_norm is None:
        return "no norm of the attention output alone before the residual add"
    return FormMatch("sandwich", s.grouped, s.summed, None, s.attention_norm)


def _parallel(s: Surroundings) -> FormMatch | str:
    """y = x + a + mlp(n'(x)): no tensor holds x + a, so the block exposes a (GPT-NeoX, Phi-2, Falcon)."""
    if not s.parallel:
        return "the attention output is not added with another branch of the same residual input"
    return FormMatch("parallel", s.grouped, s.attention, None, s.pre)


def _pre_ln(s: Surroundings) -> FormMatch | str:
    """y = x + a with v = n(x) W_V + b_V: values projected from a norm of the residual input."""
    if s.pre is None:
        return "the values are not projected from a LayerNorm or RMSNorm"
    if not same(s.pre.input, s.residual):
        return "the norm the values are projected from does not read the residual input"
    return FormMatch("pre", s.grouped, s.summed, None, s.pre)


def _from_memory(s: Surroundings) -> bool:
    """Whether the values come from a memory (an encoder's output) that the residual stream does not feed."""
    return s.source is not None and not same(s.source, s.residual) and independent_of(s.source, s.residual)


def _cross_pre(s: Surroundings) -> FormMatch | str:
    """Cross-attention whose sum goes on down the stream (T5, M2M100: the norm came before)."""
    if not _from_memory(s):
        return "the values are not projected from a memory the residual stream does not feed"
    norm = post_norm(s.summed, s.width)
    if isinstance(norm, LayerNormMatch) and not carried_on(s.summed, norm):
        return "the residual sum is read only by a LayerNorm (post-LN cross-attention)"
    return FormMatch("pre", s.grouped, s.summed, None, None, cross=True)


def _cross_post(s: Surroundings) -> FormMatch | str:
    """Cross-attention followed by a LayerNorm of the sum (BART, Marian)."""
    if not _from_memory(s):
        return "the values are not projected from a memory the residual stream does not feed"
    norm = post_norm(s.summed, s.width)
    if not isinstance(norm, LayerNormMatch):
        return norm
    return FormMatch("post", s.grouped, norm.output, s.summed, norm, cross=True)


def _values_from_x(s: Surroundings) -> str | None:
    """Why the values are not projected from x itself (None when they are, or the walk got lost)."""
    if s.source is not None and not same(s.source, s.residual):
        return ("the values are projected neither from the residual input (post-LN) nor from a LayerNorm or RMSNorm "
                "of it (pre-LN)")
    return None


def _pre_ln_without_norm(s: Surroundings) -> FormMatch | str:
    """y = x + a, attention reading x without a norm, the sum going on down the stream past the norm
    that feeds the MLP (ModernBERT's first layer)."""
    if (why := _values_from_x(s)) is not None:
        return why
    norm = post_norm(s.summed, s.width)
    if not isinstance(norm, LayerNormMatch):
        return norm
    if not carried_on(s.summed, norm):
        return "the residual sum is read only by the LayerNorm after it"
    return FormMatch("pre", s.grouped, s.summed, None, None)


def _post_ln(s: Surroundings) -> FormMatch | str:
    """y = LN(x + a): values projected from x and a sum read only by the LayerNorm whose output is y."""
    if (why := _values_from_x(s)) is not None:
        return why
    norm = post_norm(s.summed, s.width)
    if not isinstance(norm, LayerNormMatch):
        return norm
    if carried_on(s.summed, norm):
        return "the residual sum goes on down the stream past the LayerNorm"
    return FormMatch("post", s.values, norm.output, s.summed, norm)


#: Every residual form, in the order they are tried (the first that fits is the block's).
FORMS: tuple[ResidualForm, ...] = (
    ResidualForm("sandwich", "sandwich", _sandwich),
    ResidualForm("parallel", "parallel", _parallel),
    ResidualForm("pre-LN", "pre", _pre_ln),
    ResidualForm("cross-attention (pre-LN)", "pre", _cross_pre),
    ResidualForm("cross-attention (post-LN)", "post", _cross_post),
    ResidualForm("pre-LN without a norm", "pre", _pre_ln_without_norm),
    ResidualForm("post-LN", "post", _post_ln),
)

#: The block kinds the forms produce, in the order first produced (``block.BLOCK_KINDS`` lists the same).
FORM_KINDS: tuple[str, ...] = tuple(dict.fromkeys(form.kind for form in FORMS))


def read_form(surroundings: Surroundings) -> FormMatch | list[tuple[str, str]]:
    """The first form that fits, or every form's name with the reason it does not."""
    reasons = []
    for form in FORMS:
        found = form.read(surroundings)
        if isinstance(found, FormMatch):
            return found
        reasons.append((form.name, found))
    return reasons


def carried_on(summed: ir.Value, norm: LayerNormMatch) -> bool:
    """Whether ``summed`` is read by more than the norm (and the pass-through ops on the way to it):
    the un-normalized sum goes on down the residual stream."""
    value, norm_node = summed, norm.output.producer()
    while True:
        users = consumers(value)
        if any(user is not norm_node and not is_standard(user, "Identity", "Cast", "Dropout") for user in users):
            return True
        if len(users) != 1 or users[0] is norm_node:
            return False
        value = users[0].outputs[0]


def independent_of(source: ir.Value, stream: ir.Value) -> bool:
    """Whether ``source`` is computed without ``stream`` (walking back through every producer): the
    values of a cross-attention block read an encoder's output, which no decoder tensor feeds."""
    target, seen, todo = backward(stream), set(), [source]
    while todo:
        value = todo.pop()
        if value is None or id(value) in seen:
            continue
        seen.add(id(value))
        if value is target or backward(value) is target:
            return False
        producer = value.producer()
        if producer is not None:
            todo.extend(producer.inputs)
    return True


def post_norm(summed: ir.Value, width: int) -> LayerNormMatch | str:
    """The LayerNorm that reads the residual sum (through pass-through ops), or why there is none."""
    value = summed
    while (norm := norm_reading(value, width, LAYER_NORM_OPS)) is None:
        users = consumers(value)
        if len(users) != 1 or not is_standard(users[0], "Identity", "Cast", "Dropout"):
            found = ", ".join(n.op_type for n in consumers(summed)) or "nothing"
            return (f"expected a LayerNorm of the residual sum (post-LN block), or values projected from a norm of "
                    f"the residual input (pre-LN block), found {found} after the sum")
        value = users[0].outputs[0]
    return norm
