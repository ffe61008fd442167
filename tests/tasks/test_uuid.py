"""UUID task: deterministic data, sequence/labels layout, metrics, and evaluation against an oracle model."""
from __future__ import annotations

import json
import re
import uuid

import pytest
import torch
from torch import nn

from runner.tokenizer import byte_tokenizer
from tasks import UnknownTaskError, build_task
from tasks.base import TaskDataError
from tasks.supervised import PaddingCollator, pad_token_id_of
from tasks.uuid import (UUIDTask, char_accuracy, exact_match, make_uuid_pairs, mean_char_accuracy,
                        read_pairs_jsonl)

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_pairs_are_deterministic_uuid4_strings():
    pairs = make_uuid_pairs(50, seed=7)
    assert pairs == make_uuid_pairs(50, seed=7)
    assert pairs != make_uuid_pairs(50, seed=8)
    assert make_uuid_pairs(10, seed=7) == pairs[:10]  # a longer list extends a shorter one
    for key, value in pairs:
        assert UUID4.match(key) and UUID4.match(value) and len(value) == 36
        assert uuid.UUID(value).version == 4
    assert len({v for _, v in pairs}) == 50


def test_char_accuracy_is_position_wise_over_the_target():
    target = "0123456789abcdef0123456789abcdef0123"
    assert char_accuracy(target, target) == 1.0
    assert char_accuracy("", target) == 0.0
    assert char_accuracy(target[:18], target) == 0.5  # missing positions count as wrong
    assert char_accuracy(target + "zzz", target) == 1.0  # extra characters are ignored
    shifted = "x" + target[:-1]  # every character one position late: position-wise almost nothing matches
    assert char_accuracy(shifted, target) == sum(a == b for a, b in zip(shifted, target)) / 36
    assert char_accuracy("0" * 36, target) == pytest.approx(3 / 36)
    assert mean_char_accuracy([target, ""], [target, target]) == 0.5
    assert exact_match([target, target[:-1]], [target, target]) == 0.5
    with pytest.raises(ValueError):
        char_accuracy("a", "")
    with pytest.raises(ValueError):
        mean_char_accuracy(["a"], ["a", "b"])


def test_sequence_layout_and_loss_masking():
    tok = byte_tokenizer()
    key, value = make_uuid_pairs(1, seed=0)[0]
    row = UUIDTask({"n_pairs": 1}).encode(tok, key, value)
    assert row["input_ids"] == [tok.bos_token_id] + list(f"{key}:{value}".encode()) + [tok.eos_token_id]
    assert row["labels"] == row["input_ids"]  # the paper: loss on the whole sequence
    value_only = UUIDTask({"n_pairs": 1, "loss_on": "value"}).encode(tok, key, value)
    n_prompt = 1 + len(key) + 1
    assert value_only["labels"][:n_prompt] == [-100] * n_prompt
    assert value_only["labels"][n_prompt:] == list(value.encode()) + [tok.eos_token_id]


def test_prepare_and_collate():
    tok = byte_tokenizer()
    data = UUIDTask({"n_pairs": 5, "data_seed": 1}).prepare(tok)
    assert len(data.train) == 5 and data.info["n_train"] == 5
    batch = data.collator([data.train[0], {"input_ids": [1, 2], "labels": [1, 2]}])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, 75)
    assert batch["attention_mask"][1].tolist() == [1, 1] + [0] * 73
    assert batch["labels"][1, 2:].eq(-100).all() and batch["input_ids"][1, 2:].eq(tok.pad_token_id).all()
    assert isinstance(data.collator, PaddingCollator)   # the one collator of every task


def test_eval_sample_is_fixed_and_a_subset():
    task = UUIDTask({"n_pairs": 20, "eval_n": 6, "data_seed": 3})
    sample = task.eval_pairs()
    assert len(sample) == 6 and sample == task.eval_pairs() and set(sample) <= set(task.pairs())
    assert UUIDTask({"n_pairs": 20}).eval_pairs() == make_uuid_pairs(20, 0)


class OracleLM(nn.Module):
    """Predicts the true next byte of ``[<s>] key ":" value </s>`` for known keys (and ``wrong`` elsewhere).

    ``forward(input_ids (B, T), attention_mask (B, T)) -> .logits (B, T, V)``; ``generate`` = greedy decoding, with
    left-padded prompts like the task's.
    """

    def __init__(self, tok, pairs, corrupt_value_positions=()):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.vocab = len(tok)
        self.sequences = {}
        for key, value in pairs:
            value = list(value)
            for i in corrupt_value_positions:
                value[i] = "z"
            ids = [tok.bos_token_id] + list(f"{key}:{''.join(value)}".encode()) + [tok.eos_token_id]
            self.sequences[tuple(ids[: 1 + len(key) + 1])] = ids

    def _next(self, prefix):
        for prompt, ids in self.sequences.items():
            if tuple(prefix[: len(prompt)]) == prompt and len(prefix) < len(ids):
                return ids[len(prefix)]
        return ord("?")

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b in range(input_ids.shape[0]):
            row = input_ids[b][attention_mask[b].bool()].tolist()
            offset = int((attention_mask[b] == 0).sum()) if attention_mask[b, 0] == 0 else 0
            for t in range(len(row)):
                logits[b, offset + t, self._next(row[: t + 1])] = 1.0
        return type("Out", (), {"logits": logits})()

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, **kwargs):
        out = input_ids.clone()
        done = torch.zeros(out.shape[0], dtype=torch.bool)
        for _ in range(max_new_tokens):
            mask = torch.cat([attention_mask, torch.ones(out.shape[0], out.shape[1] - input_ids.shape[1],
                                                         dtype=torch.long)], dim=1)
            nxt = self.forward(out, mask).logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            done |= nxt == eos_token_id
            out = torch.cat([out, nxt[:, None]], dim=1)
        return out


def test_evaluate_scores_an_oracle_and_a_corrupted_oracle(tmp_path):
    tok = byte_tokenizer()
    task = UUIDTask({"n_pairs": 5, "data_seed": 2, "eval_batch_size": 2})
    perfect = task.evaluate(OracleLM(tok, task.pairs()), tok, output_dir=tmp_path)
    assert perfect == {"char_acc": 1.0, "exact_match": 1.0, "char_acc_tf": 1.0}
    rows = [json.loads(line) for line in (tmp_path / "uuid_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(r["correct"] and r["generation"] == r["target"] for r in rows)

    corrupted = OracleLM(tok, task.pairs(), corrupt_value_positions=(0, 35))  # 'z' is never a hex character
    metrics = task.evaluate(corrupted, tok)
    assert metrics["char_acc"] == pytest.approx(34 / 36) and metrics["char_acc_tf"] == pytest.approx(34 / 36)
    assert metrics["exact_match"] == 0.0


def test_evaluate_a_small_real_model_returns_metrics_in_range():
    from runner.models import build_model, load_model_config

    model, tok = build_model(load_model_config("tiny_scratch"), seed=0)
    metrics = UUIDTask({"n_pairs": 3}).evaluate(model, tok)
    assert set(metrics) == {"char_acc", "exact_match", "char_acc_tf"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert model.training  # restored


def test_jsonl_data_and_its_errors(tmp_path):
    good = tmp_path / "pairs.jsonl"
    good.write_text('{"key": "a", "value": "b"}\n\n{"key": "c", "value": "d"}\n')
    assert read_pairs_jsonl(good) == [("a", "b"), ("c", "d")]
    assert UUIDTask({"n_pairs": 1, "data_path": str(good)}).pairs() == [("a", "b")]
    missing = tmp_path / "missing_field.jsonl"
    missing.write_text('{"key": "a", "value": "b"}\n{"key": "c"}\n')
    with pytest.raises(TaskDataError, match=r"missing_field.jsonl:2 has no 'value' field"):
        read_pairs_jsonl(missing)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TaskDataError, match="empty dataset"):
        UUIDTask({"n_pairs": None, "data_path": str(empty)}).pairs()
    with pytest.raises(TaskDataError, match="does not exist"):
        UUIDTask({"n_pairs": 2, "data_path": str(tmp_path / "nope.jsonl")}).pairs()


@pytest.mark.parametrize("cfg,match", [
    ({"n_pairs": 0}, "empty dataset"), ({"n_pairs": -3}, "empty dataset"), ({"n_pairs": 2.5}, "integer"),
    ({"n_pairs": 4, "loss_on": "keys"}, "loss_on"), ({"n_pairs": 4, "eval_n": 0}, "eval_n"),
])
def test_bad_task_config_is_one_line_error(cfg, match):
    with pytest.raises(TaskDataError, match=match) as info:
        UUIDTask(cfg)
    assert "\n" not in str(info.value)


def test_registry_builds_uuid_and_lists_valid_names():
    assert isinstance(build_task({"name": "uuid", "n_pairs": 2}), UUIDTask)
    with pytest.raises(UnknownTaskError, match="valid tasks: continual_pretrain, instruct, math, pretrain, uuid"):
        build_task({"name": "nope"})


def test_one_pad_id_rule_for_every_task():
    """pad id, else eos id, else a one-line TaskDataError (uuid used to pad with id 0, a real token)."""
    import tasks.uuid
    from tasks.base import TaskDataError

    class Tok:
        def __init__(self, pad, eos):
            self.pad_token_id, self.eos_token_id = pad, eos

    assert pad_token_id_of(Tok(5, 7)) == 5 and pad_token_id_of(Tok(None, 7)) == 7
    with pytest.raises(TaskDataError, match="neither a pad nor an eos token"):
        pad_token_id_of(Tok(None, None))
    assert not hasattr(tasks.uuid, "_pad_id") and not hasattr(tasks.uuid, "UUIDCollator")
    with pytest.raises(TaskDataError, match="neither a pad nor an eos token"):
        UUIDTask({"name": "uuid", "n_pairs": 2}).prepare(Tok(None, None))
