"""``evaluate --task evidence``: does a next-token explanation rank first the word that is the evidence?

Each case (one CSV per phenomenon, from the ALTI-Logit authors' release) is a prefix,
the correct next word, a foil and the evidence word in the prefix ("Some organizations" -> "aren't"
rather than "isn't": the evidence is "organizations"). Every method attributes the contrast, the
logit of the correct word's first token minus the foil's, at the prefix's last token; the score of
a method on a case is the reciprocal rank of the evidence among the prefix's non-special tokens (a
word of several tokens counts by its best-ranked token; a word found several times, by every
occurrence's), averaged per phenomenon (MRR). Cases whose two words start with the same token, or
whose evidence is missing or not found in the prefix, are skipped and counted.

Methods: contrastive ALTI-Logit (docs/logit.md); erasure, the drop of the contrast when one token is
deleted (one forward pass per token); gradient x input of the contrast in PyTorch (the ``bench``
extra and ``--hf-model``); and a seeded random ranking as the floor.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alti_onnx.errors import InputError
from alti_onnx.results.logit import LogitQuery

from .predict import OnnxNextToken

__all__ = ["EVIDENCE_METHODS", "EvidenceCase", "EvidenceResult", "read_cases", "evaluate_evidence"]

EVIDENCE_METHODS = ("ALTI-Logit (contrastive)", "erasure", "gradient x input", "random")
#: Columns of the release's files: the prefix, the correct and the foil next word, the evidence.
_COLUMNS = ("one_prefix_prefix", "one_prefix_word_good", "one_prefix_word_bad", "target")


@dataclass(frozen=True)
class EvidenceCase:
    phenomenon: str
    prefix: str
    good: str
    bad: str
    evidence: str


@dataclass
class EvidenceResult:
    """MRR per phenomenon and method, and what was evaluated."""

    mrr: dict[str, dict[str, float]]
    cases: dict[str, int]
    skipped: dict[str, int]
    accuracy: dict[str, float]  #: how often the model prefers the correct word (logit contrast > 0)
    reasons: dict[str, str] = field(default_factory=dict)  #: methods not computed, and why
    meta: dict = field(default_factory=dict)

    def markdown(self) -> str:
        methods = [m for m in EVIDENCE_METHODS if m not in self.reasons]
        rows = ["| phenomenon | cases | model prefers the correct word | " + " | ".join(f"MRR {m}" for m in methods)
                + " |", "|---|---:|---:|" + "---:|" * len(methods)]
        for phenomenon, scores in self.mrr.items():
            rows.append(f"| {phenomenon} | {self.cases[phenomenon]} | {self.accuracy[phenomenon]:.3f} | "
                        + " | ".join(f"{scores[m]:.3f}" for m in methods) + " |")
        notes = [f"- {m}: {why}" for m, why in self.reasons.items()]
        return "\n".join(rows + ([""] + notes if notes else [])) + "\n"

    def to_dict(self) -> dict:
        return {"mrr": self.mrr, "cases": self.cases, "skipped": self.skipped, "accuracy": self.accuracy,
                "not_computed": self.reasons, **self.meta}


def read_cases(folder: str | Path, n: int | None = None) -> list[EvidenceCase]:
    """Every ``*.csv`` of ``folder`` (the first ``n`` rows of each), its name the phenomenon."""
    folder = Path(folder)
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not files:
        raise InputError(f"--data {folder}: no .csv files of evidence cases (one per phenomenon, with the columns "
                         f"{', '.join(_COLUMNS)})")
    cases = []
    for path in files:
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise InputError(f"{path} lacks the column(s) {', '.join(missing)}")
                for number, row in enumerate(reader):
                    if n is not None and number >= n:
                        break
                    # a short row leaves columns None: a case of its own that is skipped (and counted)
                    cases.append(EvidenceCase(path.stem, *(row[c] or "" for c in _COLUMNS)))
        except UnicodeDecodeError as exc:
            raise InputError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at {exc.start})") from None
        except csv.Error as exc:
            raise InputError(f"{path} is not a CSV file: {exc}") from None
    return cases


def evaluate_evidence(explainer, cases: Sequence[EvidenceCase], *, hf_model: str | Path | None = None,
                      batch_size: int = 32, seed: int = 0) -> EvidenceResult:
    """MRR of the evidence word per phenomenon for each method (module docstring)."""
    if not getattr(explainer, "causal", False):
        raise InputError("the evidence task explains a causal language model's next token; this model is not one")
    started = time.perf_counter()
    tokenizer = explainer.tokenizer
    kept, skipped = [], {}
    limit = explainer.text_encoder.max_length
    for case in cases:
        found = _prepared(tokenizer, case, limit)
        if found is None:
            skipped[case.phenomenon] = skipped.get(case.phenomenon, 0) + 1
        else:
            kept.append(found)
    if not kept:
        raise InputError("no evidence case left to evaluate (every one skipped)")
    ranks: dict[str, list[float]] = {method: [] for method in EVIDENCE_METHODS}
    reasons: dict[str, str] = {}
    scores = _alti_logit(explainer, kept, batch_size)
    erasure, contrasts = _erasure(explainer, kept, batch_size)
    gradients = _gradient_x_input(hf_model, kept)
    if isinstance(gradients, str):
        reasons["gradient x input"] = gradients
    rng = np.random.default_rng(seed)
    for k, case in enumerate(kept):
        found = {"ALTI-Logit (contrastive)": scores[k], "erasure": erasure[k],
                 "random": rng.permutation(len(case.ids)).astype(np.float64)}
        if not isinstance(gradients, str):
            found["gradient x input"] = gradients[k]
        for method, attribution in found.items():
            ranks[method].append(_reciprocal_rank(attribution, case.evidence, case.candidates))
    phenomena = list(dict.fromkeys(case.phenomenon for case in kept))
    mrr = {p: {m: float(np.mean([r for r, c in zip(ranks[m], kept) if c.phenomenon == p]))
               for m in EVIDENCE_METHODS if m not in reasons} for p in phenomena}
    count = {p: sum(c.phenomenon == p for c in kept) for p in phenomena}
    accuracy = {p: float(np.mean([contrasts[k] > 0 for k, c in enumerate(kept) if c.phenomenon == p])) for p in phenomena}
    meta = {"model": str(explainer.files.onnx), "seed": seed, "seconds": round(time.perf_counter() - started, 1),
            "hf_model": None if hf_model is None else str(hf_model)}
    return EvidenceResult(mrr, count, skipped, accuracy, reasons, meta)


@dataclass(frozen=True)
class _Case:
    phenomenon: str
    prefix: str
    ids: list[int]
    good: int
    bad: int
    evidence: list[int]  #: token positions of the evidence word
    candidates: list[int]  #: the prefix's non-special positions


def _prepared(tokenizer, case: EvidenceCase, limit: int | None = None) -> _Case | None:
    """The case in tokens, or None when it cannot be scored (see the module docstring). The next
    word's first token is read from the prefix and the word encoded together (the token right after
    the prefix's): tokenizers that mark a word's start (SentencePiece's "▁") spell it as in text."""
    evidence = case.evidence.strip()
    if not evidence or evidence == "NA" or not case.prefix.strip() or not case.good.strip() or not case.bad.strip():
        return None
    encoding = tokenizer.encode(case.prefix)
    if limit is not None and len(encoding.ids) + 1 > limit:
        return None
    own = [token for token, mark in zip(encoding.ids, encoding.special_tokens_mask) if not mark]
    good, bad = (_next_token(tokenizer, case.prefix, own, word) for word in (case.good, case.bad))
    if good is None or bad is None or good == bad:
        return None
    spans = [m.span() for m in re.finditer(rf"(?<!\w){re.escape(evidence)}(?!\w)", case.prefix)]
    special = encoding.special_tokens_mask
    positions = [k for k, (start, end) in enumerate(encoding.offsets)
                 if not special[k] and any(start < b and a < end for a, b in spans)]
    if not positions:
        return None
    candidates = [k for k in range(len(encoding.ids)) if not special[k]]
    return _Case(case.phenomenon, case.prefix, list(encoding.ids), good, bad, positions, candidates)


def _next_token(tokenizer, prefix: str, head: list[int], word: str) -> int | None:
    """The first token of `` word`` after ``prefix`` (whose tokens, specials left out, are ``head``),
    as the tokenizer encodes the two together (None when the prefix's own tokens change, or nothing
    follows them). Special tokens a template appends (a classifier's [SEP]) are left out: the causal
    models this explains prepend theirs."""
    together = tokenizer.encode(prefix + " " + word.strip())
    ids = [token for token, mark in zip(together.ids, together.special_tokens_mask) if not mark]
    if ids[:len(head)] != head or len(ids) == len(head):
        return None
    return int(ids[len(head)])


def _reciprocal_rank(attribution: np.ndarray, evidence: list[int], candidates: list[int]) -> float:
    """1 / the rank of the evidence's best token among the candidates (highest first; ties: earlier first)."""
    order = sorted(candidates, key=lambda k: -float(attribution[k]))  # stable: ties keep position order
    return 1.0 / (1 + min(order.index(k) for k in evidence))


def _alti_logit(explainer, cases: list[_Case], batch_size: int) -> list[np.ndarray]:
    found: list[np.ndarray | None] = [None] * len(cases)
    order = np.argsort([len(c.ids) for c in cases], kind="stable")
    for start in range(0, len(order), batch_size):
        chunk = [int(k) for k in order[start:start + batch_size]]
        queries = [LogitQuery(target=cases[k].good, foil=cases[k].bad) for k in chunk]
        explained = explainer.explain([cases[k].prefix for k in chunk], full=False, logit=queries)
        for k, explanation in zip(chunk, explained):
            if explanation.input_ids != cases[k].ids:
                raise RuntimeError(f"the explainer tokenized {cases[k].prefix!r} differently from the tokenizer")
            found[k] = explanation.logit.attribution
    return found  # type: ignore[return-value]


def _erasure(explainer, cases: list[_Case], batch_size: int) -> tuple[list[np.ndarray], list[float]]:
    """Per case, each token's drop of the contrast when it is deleted; and the full contrast."""
    model = OnnxNextToken(explainer.files.onnx, explainer.text_encoder.pad_id, providers=explainer.providers,
                          batch_size=batch_size, input_map=explainer.input_map)
    sequences = [c.ids for c in cases] + [c.ids[:k] + c.ids[k + 1:] for c in cases for k in c.candidates]
    logits = model(sequences)
    full = [float(logits[n, c.good] - logits[n, c.bad]) for n, c in enumerate(cases)]
    drops, row = [], len(cases)
    for n, case in enumerate(cases):
        drop = np.full(len(case.ids), -np.inf)
        for k in case.candidates:
            drop[k] = full[n] - float(logits[row, case.good] - logits[row, case.bad])
            row += 1
        drops.append(drop)
    return drops, full


def _gradient_x_input(hf_model: str | Path | None, cases: list[_Case]) -> list[np.ndarray] | str:
    """(d contrast / d e_j) . e_j on the word embeddings, in PyTorch; or why it was not computed."""
    if hf_model is None:
        return "not computed: no Hugging Face checkpoint of the weights given (--hf-model)"
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        return f"not computed: PyTorch/transformers not installed ({exc}); install the 'bench' extra"
    try:
        model = AutoModelForCausalLM.from_pretrained(str(hf_model), attn_implementation="eager").float().eval()
    except Exception as exc:  # noqa: BLE001 - transformers raises many types
        return f"not computed: could not load {hf_model}: {exc}"
    table = model.get_input_embeddings()
    found = []
    for case in cases:
        embeds = table(torch.tensor([case.ids])).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds).logits[0, -1]
        (logits[case.good] - logits[case.bad]).backward()
        found.append((embeds.grad[0] * embeds[0]).sum(-1).detach().numpy().astype(np.float64))
    return found
