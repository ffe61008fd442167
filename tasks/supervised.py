"""Supervised fine-tuning examples: text segments → ``input_ids`` and ``labels`` with the prompt masked.

A training example is a list of segments ``(text, scored)``; ``EOS`` stands for the tokenizer's end-of-sequence
token. ``labels[i] = input_ids[i]`` for tokens of scored segments and ``-100`` elsewhere (the causal-LM shift happens
inside the model). Two tokenizations, chosen automatically:

- fast tokenizers: the whole example is tokenized ONCE as one string (EOS written as ``tokenizer.eos_token``, which
  fast tokenizers read as the special token), exactly as the text would be tokenized at inference time; a token is
  scored when the character it starts at belongs to a scored segment (``return_offsets_mapping``). This avoids the
  spurious word-start markers SentencePiece tokenizers (LLaMA) add when a segment is tokenized on its own.
- otherwise (slow tokenizers, or an EOS string the tokenizer does not read back as the EOS id): each segment is
  tokenized on its own (no special tokens) and the pieces are concatenated.
Both prepend BOS exactly when the tokenizer itself does (``tokenizer_adds_bos``: LLaMA's does, the repository's byte
tokenizer does not), so training sees what lm-eval and ``generate`` see at evaluation; ``add_bos=True/False`` forces
it. For a byte-level tokenizer the two tokenizations give identical results.

Over-long examples (``len > max_length``) follow ``overlong``:
- ``"truncate"`` (default): keep the first ``max_length`` tokens (what the paper's "cut-off" means);
- ``"skip"``: drop the example.
An example whose kept part contains no scored token is dropped in both cases. ``build_examples`` /
``build_dataset`` count every row once in ``info`` (kept as is, kept truncated, or skipped with its reason) so nothing
is silently lost.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from tasks.base import TaskDataError

IGNORE_INDEX = -100


class _Eos:
    def __repr__(self) -> str:
        return "EOS"


EOS = _Eos()
Segment = tuple[object, bool]   # (str | EOS, scored)


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def n_scored(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` (default special tokens) starts with its BOS id."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def tokenize_segments(tokenizer, segments: Sequence[Segment], max_length: int | None = None,
                      add_bos: bool | None = None, method: str = "auto") -> TokenizedExample:
    """Token ids and labels of ``segments`` (see module docstring). ``input_ids``: (L,), ``labels``: (L,).
    ``method``: "auto" | "offsets" | "segments"."""
    if method not in ("auto", "offsets", "segments"):
        raise ValueError(f"method must be auto, offsets or segments, got {method!r}")
    if add_bos is None:
        add_bos = tokenizer_adds_bos(tokenizer)
    if method != "segments" and getattr(tokenizer, "is_fast", False):
        example = _tokenize_with_offsets(tokenizer, segments, add_bos)
        if example is not None:
            return _truncate(example, max_length)
        if method == "offsets":
            raise ValueError("the tokenizer does not read its eos_token string back as the EOS id")
    return _truncate(_tokenize_by_segment(tokenizer, segments, add_bos), max_length)


def _truncate(example: TokenizedExample, max_length: int | None) -> TokenizedExample:
    if max_length is not None and len(example.input_ids) > max_length:
        return TokenizedExample(example.input_ids[:max_length], example.labels[:max_length], True)
    return example


def _tokenize_with_offsets(tokenizer, segments: Sequence[Segment], add_bos: bool) -> TokenizedExample | None:
    eos_text, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    pieces, scored_spans, pos, n_eos = [], [], 0, 0
    for text, scored in segments:
        if text is EOS:
            if eos_text is None or eos_id is None:
                raise ValueError("the tokenizer has no eos token; an EOS segment cannot be encoded")
            text, n_eos = eos_text, n_eos + 1
        if scored and text:
            scored_spans.append((pos, pos + len(text)))
        pieces.append(text)
        pos += len(text)
    enc = tokenizer("".join(pieces), add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    if ids.count(eos_id) < n_eos:
        return None
    labels = []
    for token, (start, end) in zip(ids, offsets):
        inside = any(a <= start < b for a, b in scored_spans)
        labels.append(token if inside else IGNORE_INDEX)
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None:
        ids, labels = [bos] + ids, [IGNORE_INDEX] + labels
    return TokenizedExample(ids, labels, False)


def _tokenize_by_segment(tokenizer, segments: Sequence[Segment], add_bos: bool) -> TokenizedExample:
    ids: list[int] = []
    labels: list[int] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None:
        ids.append(bos)
        labels.append(IGNORE_INDEX)
    for text, scored in segments:
        if text is EOS:
            if tokenizer.eos_token_id is None:
                raise ValueError("the tokenizer has no eos_token_id; an EOS segment cannot be encoded")
            piece = [tokenizer.eos_token_id]
        else:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        ids.extend(piece)
        labels.extend(piece if scored else [IGNORE_INDEX] * len(piece))
    return TokenizedExample(ids, labels, False)


def build_examples(tokenizer, segment_lists: Iterable[Sequence[Segment] | None], max_length: int,
                   overlong: str = "truncate", add_bos: bool | None = None) -> tuple[list[dict], dict]:
    """Rows ``{"input_ids", "labels", "attention_mask"}`` and counts ``{"n_train", "n_truncated",
    "n_skipped_overlong", "n_skipped_no_target"}``. ``None`` entries (rows rejected upstream) are passed through
    as already counted by the caller."""
    if overlong not in ("truncate", "skip"):
        raise ValueError(f"overlong must be 'truncate' or 'skip', got {overlong!r}")
    rows, info = [], {"n_truncated": 0, "n_skipped_overlong": 0, "n_skipped_no_target": 0}
    if add_bos is None:
        add_bos = tokenizer_adds_bos(tokenizer)
    for segments in segment_lists:
        if segments is None:
            continue
        ex = tokenize_segments(tokenizer, segments, max_length=None, add_bos=add_bos)
        if len(ex.input_ids) > max_length:
            if overlong == "skip":
                info["n_skipped_overlong"] += 1
                continue
            ex = TokenizedExample(ex.input_ids[:max_length], ex.labels[:max_length], True)
        if ex.n_scored == 0:
            info["n_skipped_no_target"] += 1
            continue
        info["n_truncated"] += ex.truncated
        rows.append({"input_ids": ex.input_ids, "labels": ex.labels, "attention_mask": [1] * len(ex.input_ids)})
    info["n_train"] = len(rows)
    return rows, info


class PaddingCollator:
    """Right-pads ``input_ids`` (with ``pad_token_id``), ``attention_mask`` (0) and ``labels`` (-100) to the
    longest row of the batch. Returns ``{"input_ids": (B, L), "attention_mask": (B, L), "labels": (B, L)}``."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        length = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for r in rows:
            n = len(r["input_ids"])
            pad = length - n
            batch["input_ids"].append(list(r["input_ids"]) + [self.pad_token_id] * pad)
            batch["attention_mask"].append(list(r.get("attention_mask", [1] * n)) + [0] * pad)
            batch["labels"].append(list(r["labels"]) + [IGNORE_INDEX] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def pad_token_id_of(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (padding is masked out of attention and loss either way)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise TaskDataError("the tokenizer has neither a pad nor an eos token to pad batches with")
    return pad


def build_dataset(rows, segments_of, tokenizer, max_length: int, overlong: str = "truncate",
                  add_bos: bool | None = None, desc: str = "tokenizing"):
    """Like ``build_examples`` but streamed through ``datasets.Dataset.map`` (Arrow storage, not Python lists), for
    corpora of hundreds of thousands of long examples.

    ``rows``: a ``datasets.Dataset``; ``segments_of(row)`` returns the row's segments or a skip-reason string (counted
    as ``n_skipped_<reason>``). Returns ``(dataset with input_ids/labels/attention_mask, info)``; ``info`` has the same
    counts as ``build_examples`` plus the skip reasons."""
    if overlong not in ("truncate", "skip"):
        raise ValueError(f"overlong must be 'truncate' or 'skip', got {overlong!r}")
    if add_bos is None:
        add_bos = tokenizer_adds_bos(tokenizer)

    def encode(row):
        empty = {"input_ids": [], "labels": [], "attention_mask": []}
        segments = segments_of(row)
        if isinstance(segments, str):
            return {**empty, "status": f"skipped_{segments}"}
        ex = tokenize_segments(tokenizer, segments, max_length=None, add_bos=add_bos)
        status = "ok"
        if len(ex.input_ids) > max_length:
            if overlong == "skip":
                return {**empty, "status": "skipped_overlong"}
            ex, status = TokenizedExample(ex.input_ids[:max_length], ex.labels[:max_length], True), "truncated"
        if ex.n_scored == 0:
            return {**empty, "status": "skipped_no_target"}
        return {"input_ids": ex.input_ids, "labels": ex.labels, "attention_mask": [1] * len(ex.input_ids),
                "status": status}

    encoded = rows.map(encode, remove_columns=rows.column_names, desc=desc)
    statuses = encoded["status"]
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    info = {"n_truncated": counts.pop("truncated", 0), "n_skipped_overlong": counts.pop("skipped_overlong", 0),
            "n_skipped_no_target": counts.pop("skipped_no_target", 0)}
    n_ok = counts.pop("ok", 0)
    info.update({f"n_{reason}": n for reason, n in sorted(counts.items())})
    keep = [i for i, status in enumerate(statuses) if status in ("ok", "truncated")]
    dataset = encoded.select(keep).remove_columns("status")
    info["n_train"] = n_ok + info["n_truncated"]
    return dataset, info
