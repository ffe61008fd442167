"""task=pretrain: packing, the train/validation split, the streamed C4 path, perplexity at several lengths."""
import math
import random
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from runner.tokenizer import byte_tokenizer
from tasks.base import TaskDataError
from tasks.corpora import pack_token_chunks
from tasks.pretrain import PretrainTask, StreamingChunks, iter_token_chunks

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pretrain"


def _local_task(**kw):
    cfg = dict(name="pretrain", corpus="local", data_files=[str(FIXTURES / "texts")], seq_len=64,
               eval_lengths=[16, 32, 128], val_fraction=0.2, max_eval_tokens=4096, eval_batch_size=4)
    cfg.update(kw)
    return PretrainTask(cfg)


def test_streaming_packing_equals_list_packing():
    rng = random.Random(0)
    docs = [[rng.randrange(50) for _ in range(rng.randint(0, 40))] for _ in range(30)]
    for seq_len in (1, 7, 64):
        assert list(iter_token_chunks(docs, seq_len, 99)) == pack_token_chunks(docs, seq_len, 99)
    chunks = pack_token_chunks(docs, 7, 99)
    stream = [t for d in docs for t in (*d, 99)]
    assert [t for c in chunks for t in c] == stream[: len(chunks) * 7]


def test_local_corpus_is_packed_and_split_without_overlap():
    tok = byte_tokenizer()
    task = _local_task()
    data = task.prepare(tok)
    texts = [p.read_text() for p in sorted((FIXTURES / "texts").glob("*.txt"))]
    stream = [t for x in texts for t in (*tok(x, add_special_tokens=False)["input_ids"], tok.eos_token_id)]
    n_val = int(len(stream) * 0.2)
    rows = data.train["input_ids"]
    assert all(len(r) == 64 for r in rows) and len(rows) == (len(stream) - n_val) // 64
    assert [t for r in rows for t in r] == stream[: len(rows) * 64]
    assert task.validation_tokens() == stream[len(stream) - n_val:]
    assert sum(t == tok.eos_token_id for t in stream) == 3  # one EOS after each document
    batch = data.collator([data.train[0], data.train[1]])
    assert batch["input_ids"].shape == (2, 64) and torch.equal(batch["labels"], batch["input_ids"])
    assert int(batch["attention_mask"].sum()) == 128


def test_streamed_hf_corpus_in_the_c4_schema():
    tok = byte_tokenizer()
    task = PretrainTask(dict(name="pretrain", corpus="hf", hf_name=str(FIXTURES / "c4_mini"), hf_config=None,
                             streaming=True, seq_len=128, eval_lengths=[64], max_val_docs=None))
    data = task.prepare(tok)
    assert isinstance(data.train, StreamingChunks)
    import json

    def encoded(split):
        rows = [json.loads(l) for l in (FIXTURES / "c4_mini" / f"{split}.jsonl").read_text().splitlines()]
        return [tok(r["text"], add_special_tokens=False)["input_ids"] for r in rows]

    assert [r["input_ids"] for r in data.train] == pack_token_chunks(encoded("train"), 128, tok.eos_token_id)
    assert task.validation_tokens() == [t for d in encoded("validation") for t in (*d, tok.eos_token_id)]


class _BigramLM(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: a model whose perplexity is easy to compute by hand."""

    def __init__(self, vocab, scale):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g) * scale)

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids])


def _reference_ppl(table, tokens, length, max_tokens):
    n = min(len(tokens) // length, max(1, max_tokens // length))
    logp = torch.log_softmax(table.double(), dim=-1)
    total, count = 0.0, 0
    for c in range(n):
        chunk = tokens[c * length:(c + 1) * length]
        for a, b in zip(chunk[:-1], chunk[1:]):
            total -= float(logp[a, b])
            count += 1
    return math.exp(total / count)


def test_perplexity_at_several_lengths_on_a_fixture(tmp_path):
    tok = byte_tokenizer()
    task = _local_task(max_eval_tokens=200)
    task.prepare(tok)
    vocab = len(tok)
    uniform = task.evaluate(_BigramLM(vocab, 0.0), tok)
    assert set(uniform) == {"val_loss", "val_ppl", "ppl@16", "ppl@32", "ppl@128"}
    for key in ("val_ppl", "ppl@16", "ppl@32", "ppl@128"):
        assert uniform[key] == pytest.approx(vocab, rel=1e-5)
    model = _BigramLM(vocab, 1.0).train()
    metrics = task.evaluate(model, tok, output_dir=tmp_path)
    assert model.training  # evaluation restores the mode
    tokens = task.validation_tokens()
    for length in (16, 32, 128):
        assert metrics[f"ppl@{length}"] == pytest.approx(_reference_ppl(model.table, tokens, length, 200), rel=1e-4)
    assert metrics["val_ppl"] == pytest.approx(_reference_ppl(model.table, tokens, 64, 200), rel=1e-4)
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert (tmp_path / "pretrain_eval.json").is_file()


@pytest.mark.parametrize("cfg,match", [
    (dict(corpus="web"), "task.corpus='web'"),
    (dict(corpus="local", data_files=None), "needs task.data_files"),
    (dict(seq_len=0), "task.seq_len must be a positive integer"),
    (dict(eval_lengths=[1, 16]), "length < 2: 1"),
    (dict(val_fraction=1.5), "val_fraction=1.5"),
])
def test_rejected_configs(cfg, match):
    with pytest.raises(TaskDataError, match=match):
        _local_task(**cfg).prepare(byte_tokenizer())


def test_validation_too_short_for_the_longest_length():
    with pytest.raises(TaskDataError, match="fewer than the longest evaluation length 100000"):
        _local_task(eval_lengths=[100000]).prepare(byte_tokenizer())


def test_missing_hub_dataset_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(TaskDataError, match="allenai/c4"):
        PretrainTask(dict(name="pretrain", corpus="hf", hf_name="allenai/c4", hf_config="en",
                          max_val_docs=10)).prepare(byte_tokenizer())
    assert time.time() - start < 30


# ---------------------------------------------------------------------------------------------- through train.py
def _pretrain_overrides(run_id):
    return ["experiment=cpu/pretrain", "adapter=remora", "r=4", "task.corpus=local",
            f"task.data_files=[{FIXTURES / 'texts'}]", "task.seq_len=32", "task.eval_lengths=[16,64]",
            "task.max_eval_tokens=256", "task.val_fraction=0.2", "trainer.batch_size=4", "trainer.micro_batch_size=4",
            "trainer.max_steps=6", "trainer.save_steps=2", "trainer.eval_steps=2", "trainer.logging_steps=1",
            "trainer.warmup_steps=0", "trainer.num_threads=1", "adapter.restart.merge_every=2",
            "adapter.restart.restart_warmup=1", "logger=none", "lr=0.01", f"run_id={run_id}"]


def test_remora_pretrain_killed_after_a_merge_resumes_to_the_same_result(compose_run_config, tmp_path):
    from transformers import TrainerCallback

    from moRA.restart import STATE_FILE
    from runner.record import load_record
    from runner.run import run_experiment

    class Killed(Exception):
        pass

    class KillAtStep5(TrainerCallback):  # dies right after the step-4 merge + checkpoint, before step 6
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                raise Killed()

    reference = load_record(run_experiment(compose_run_config(*_pretrain_overrides("straight"))).record_path)
    assert {"val_loss", "val_ppl", "ppl@16", "ppl@64"} <= set(reference["final"])
    with pytest.raises(Killed):
        run_experiment(compose_run_config(*_pretrain_overrides("killed")), extra_callbacks=[KillAtStep5()])
    import json

    saved = json.loads((tmp_path / "outputs" / "killed" / "checkpoint-4" / STATE_FILE).read_text())
    # two merges of the default cycle sharing ↔ contiguous (Appendix B) bring the layers back to sharing
    assert saved["merges_done"] == 2 and set(saved["layer_types"].values()) == {"sharing"}
    resumed = load_record(run_experiment(compose_run_config(*_pretrain_overrides("killed"),
                                                             "resume=true")).record_path)
    assert resumed["final"] == pytest.approx(reference["final"], rel=1e-5)
    assert [p["step"] for p in resumed["history"] if "val_ppl" in p] == [2, 4, 6]


def test_streamed_chunks_are_split_between_dataloader_workers():
    tok = byte_tokenizer()
    task = PretrainTask(dict(name="pretrain", corpus="hf", hf_name=str(FIXTURES / "c4_mini"), hf_config=None,
                             streaming=True, seq_len=64, eval_lengths=[], max_val_docs=None))
    data = task.prepare(tok)
    single = [tuple(r["input_ids"]) for r in data.train]
    loader = torch.utils.data.DataLoader(data.train, batch_size=None, num_workers=2)
    multi = [tuple(int(t) for t in r["input_ids"]) for r in loader]
    assert len(set(multi)) == len(multi)  # no chunk twice
    total = sum(len(c) for c in single)
    assert abs(sum(len(c) for c in multi) - total) <= 2 * 64  # the same tokens, up to each worker's remainder
