"""task=continual_pretrain: domain-adaptive continual pretraining (AdaptLLM-style), evaluated on AdaptLLM's suites.

Training data: the raw text corpus of ``domain`` (biomed | finance), named in ``corpora.<domain>`` by a Hugging
Face dataset (``dataset``, ``config``, ``split``, ``text_field``) or by local files (``data_path``: .txt files — one
document per file — or .jsonl/.json/.parquet with ``text_field``). Documents are tokenized, joined with EOS and cut
into chunks of ``seq_len`` tokens (``tasks.corpora.pack_token_chunks``); the loss is on every token. Empty or
non-string documents are skipped and counted (``n_skipped_empty_docs``). ``n_eval_chunks`` chunks (taken from the
end) are held out as ``TaskData.eval`` for a validation loss. ``pack_block_docs`` bounds memory for large corpora
(see ``packed_chunks``).

Evaluation: ``tasks.evaluation.adaptllm.evaluate_suite`` on the merged model: ``<domain>/<task>`` for each task of
the suite and ``biomed_avg`` / ``finance_avg``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from tasks.base import Task, TaskData, TaskDataError
from tasks.data_source import config_value
from tasks.supervised import PaddingCollator, pad_token_id_of

DOMAINS = ("biomed", "finance")


def corpus_texts(corpus: Mapping, domain: str) -> list:
    """The raw documents of the configured corpus (local files first, else the hub dataset)."""
    from tasks.corpora import hf_texts, local_texts
    from tasks.data_source import load_rows

    key = f"task.corpora.{domain}.data_path"
    data_path = config_value(corpus, "data_path")
    max_docs = config_value(corpus, "max_docs")
    text_field = config_value(corpus, "text_field", "text")
    if data_path:
        path = Path(str(data_path)).expanduser()
        if path.suffix == ".txt" or (path.is_dir() and any(path.rglob("*.txt"))):
            docs = local_texts([str(path)])
        else:
            rows = load_rows(hf_name=None, data_path=str(path), what=f"{domain} corpus", key=key)
            if text_field not in rows.column_names:
                raise TaskDataError(f"{domain} corpus: {key}={data_path} has no field {text_field!r} "
                                    f"(fields: {rows.column_names}); set task.corpora.{domain}.text_field")
            docs = rows[text_field]
        return list(docs[:max_docs] if max_docs else docs)
    name = config_value(corpus, "dataset")
    if not name:
        raise TaskDataError(f"{domain} corpus: set task.corpora.{domain}.dataset or {key}")
    try:
        return hf_texts(name, config_value(corpus, "config"), config_value(corpus, "split", "train"), text_field,
                        streaming=bool(config_value(corpus, "streaming", True)), max_docs=max_docs)
    except TaskDataError as exc:
        raise TaskDataError(f"{domain} corpus: {exc}; with a local copy set {key}=<.txt files or "
                            f".jsonl/.parquet with field {text_field!r}>") from None


def packed_chunks(docs: list[str], tokenizer, seq_len: int, block_docs: int | None = None):
    """A ``datasets.Dataset`` of ``seq_len``-token chunks (``input_ids``, ``labels`` = ``input_ids``,
    ``attention_mask``; int32 Arrow storage) from ``docs`` joined with EOS by ``tasks.corpora.pack_token_chunks``.

    ``block_docs=None`` packs the whole corpus as one stream (only the final remainder, < ``seq_len`` tokens, is
    dropped). ``block_docs=N`` packs every N consecutive documents on their own through ``datasets.map`` (the
    Hugging Face ``run_clm`` recipe): memory stays bounded for billion-token corpora, at the cost of < ``seq_len``
    dropped tokens per block."""
    import datasets

    from tasks.corpora import pack_token_chunks

    eos = tokenizer.eos_token_id
    features = datasets.Features({name: datasets.Sequence(datasets.Value("int32"))
                                  for name in ("input_ids", "labels", "attention_mask")})

    def pack(texts: list[str]) -> dict:
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        chunks = pack_token_chunks(ids, seq_len, eos)
        return {"input_ids": chunks, "labels": chunks, "attention_mask": [[1] * seq_len for _ in chunks]}

    if block_docs is None:
        return datasets.Dataset.from_dict(pack(docs), features=features)
    if not isinstance(block_docs, int) or block_docs <= 0:
        raise ValueError(f"task.pack_block_docs must be a positive integer or null, got {block_docs!r}")
    texts = datasets.Dataset.from_dict({"text": docs})
    return texts.map(lambda batch: pack(batch["text"]), batched=True, batch_size=block_docs,
                     remove_columns=["text"], features=features, desc="packing")


class ContinualPretrainTask(Task):
    name = "continual_pretrain"

    @property
    def domain(self) -> str:
        domain = config_value(self.cfg, "domain", "biomed")
        if domain not in DOMAINS:
            raise ValueError(f"task.domain={domain!r} is not one of {list(DOMAINS)}")
        return domain

    def prepare(self, tokenizer) -> TaskData:
        domain = self.domain
        corpus = config_value(config_value(self.cfg, "corpora", {}), domain, {})
        docs = corpus_texts(corpus, domain)
        good = [d for d in docs if isinstance(d, str) and d.strip()]
        info: dict[str, Any] = {"n_docs": len(good), "n_skipped_empty_docs": len(docs) - len(good)}
        del docs
        seq_len = int(config_value(self.cfg, "seq_len", 2048))
        if tokenizer.eos_token_id is None:
            raise ValueError("continual_pretrain: the tokenizer has no eos_token_id to separate documents")
        block = config_value(self.cfg, "pack_block_docs")
        chunks = packed_chunks(good, tokenizer, seq_len, block)
        n_eval = int(config_value(self.cfg, "n_eval_chunks", 0))
        if len(chunks) <= n_eval:
            raise TaskDataError(f"{domain} corpus: {len(good)} documents give {len(chunks)} chunks of {seq_len} "
                                f"tokens, not enough for training plus n_eval_chunks={n_eval}")
        train = chunks.select(range(len(chunks) - n_eval))
        held_out = chunks.select(range(len(chunks) - n_eval, len(chunks))) if n_eval else None
        info.update(n_train=len(train), n_eval=n_eval, seq_len=seq_len, n_tokens=len(train) * seq_len)
        return TaskData(train=train, eval=held_out, collator=PaddingCollator(pad_token_id_of(tokenizer)), info=info)

    def evaluate(self, model, tokenizer, output_dir: Path | None = None) -> dict[str, float]:
        from tasks.evaluation.adaptllm import evaluate_suite
        from tasks.evaluation.eval_model import evaluation_model

        eval_cfg = config_value(self.cfg, "eval", {})
        with evaluation_model(model, config_value(eval_cfg, "merge", "copy")) as eval_model:
            return evaluate_suite(eval_model, tokenizer, self.domain, eval_cfg, output_dir)
