"""UUID memorization (paper §3 and §5.1, Table 2): can an adapter store many new random facts?

Data: N pairs ``(key, value)`` of uuid4 strings (36 characters, e.g. ``"1b4e28ba-2fa1-41d2-883f-0016d3cca427"``),
generated deterministically from ``data_seed`` (``uuid.UUID(int=rng.getrandbits(128), version=4)``), or read from a
JSONL file with ``{"key": ..., "value": ...}`` rows. One training sequence per pair: ``[<s>] key ":" value </s>``,
loss on the whole sequence as in the paper (``loss_on: value`` scores only the value and ``</s>``).

Metrics (flat names):
- ``char_acc``: greedy generation of the value from ``[<s>] key ":"``; position-wise character accuracy against the
  target (36 positions for a uuid; a short generation counts its missing positions as wrong), averaged over pairs.
- ``exact_match``: fraction of pairs whose generated value equals the target exactly.
- ``char_acc_tf``: teacher-forced accuracy: fraction of value tokens (``</s>`` excluded) that are the argmax of the
  model's next-token distribution given the true prefix. With a byte-level tokenizer a token is a character, so this is
  the teacher-forced character accuracy.
Evaluation runs on all pairs or on a fixed sample of ``eval_n`` of them (seeded by ``data_seed``), batched.
"""
from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

from tasks.base import Task, TaskData, TaskDataError
from tasks.supervised import PaddingCollator, pad_token_id_of

# torch is imported inside the functions that need it: a bad task config fails before the slow import.

UUID_LENGTH = 36
_LOSS_ON = ("sequence", "value")


def make_uuid_pairs(n_pairs: int, seed: int) -> list[tuple[str, str]]:
    """``n_pairs`` pairs ``(key, value)`` of uuid4 strings, the same for the same ``seed``."""
    rng = random.Random(seed)

    def draw() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    return [(draw(), draw()) for _ in range(n_pairs)]


def char_accuracy(prediction: str, target: str) -> float:
    """Fraction of the ``len(target)`` positions where ``prediction`` has the target's character.

    Position-wise: a missing character (short prediction) is wrong, extra characters are ignored.
    """
    if not target:
        raise ValueError("char_accuracy: empty target")
    matches = sum(p == t for p, t in zip(prediction, target))
    return matches / len(target)


def mean_char_accuracy(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Mean of :func:`char_accuracy` over pairs."""
    if len(predictions) != len(targets) or not targets:
        raise ValueError(f"mean_char_accuracy: {len(predictions)} predictions for {len(targets)} targets")
    return sum(char_accuracy(p, t) for p, t in zip(predictions, targets)) / len(targets)


def exact_match(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Fraction of predictions equal to their target."""
    if len(predictions) != len(targets) or not targets:
        raise ValueError(f"exact_match: {len(predictions)} predictions for {len(targets)} targets")
    return sum(p == t for p, t in zip(predictions, targets)) / len(targets)


def read_pairs_jsonl(path: str | Path) -> list[tuple[str, str]]:
    """``(key, value)`` pairs from a JSONL file of ``{"key": str, "value": str}`` rows (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"uuid: task.data_path={str(path)!r} does not exist")
    pairs = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskDataError(f"uuid: {path}:{line_no} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise TaskDataError(f"uuid: {path}:{line_no} is not a JSON object")
            for field in ("key", "value"):
                if field not in row:
                    raise TaskDataError(f"uuid: {path}:{line_no} has no {field!r} field (rows need 'key' and 'value')")
                if not isinstance(row[field], str) or not row[field]:
                    raise TaskDataError(f"uuid: {path}:{line_no} field {field!r} must be a non-empty string")
            pairs.append((row["key"], row["value"]))
    return pairs


class UUIDTask(Task):
    """UUID memorization. Config (``configs/task/uuid.yaml``): ``n_pairs``, ``data_seed``, ``data_path``,
    ``loss_on`` (sequence | value), ``eval_n`` (null = all pairs), ``eval_batch_size``."""

    name = "uuid"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.n_pairs = cfg.get("n_pairs", 64)
        self.data_seed = int(cfg.get("data_seed", 0))
        self.data_path = cfg.get("data_path")
        self.loss_on = str(cfg.get("loss_on", "sequence"))
        self.eval_n = cfg.get("eval_n")
        self.eval_batch_size = int(cfg.get("eval_batch_size", 256))
        if self.loss_on not in _LOSS_ON:
            raise TaskDataError(f"uuid: task.loss_on={self.loss_on!r} is not one of {', '.join(_LOSS_ON)}")
        if self.n_pairs is not None and (isinstance(self.n_pairs, bool) or not isinstance(self.n_pairs, int)):
            raise TaskDataError(f"uuid: task.n_pairs must be an integer, got {self.n_pairs!r}")
        if self.n_pairs is not None and self.n_pairs <= 0:
            raise TaskDataError(f"uuid: empty dataset (task.n_pairs={self.n_pairs}); use task.n_pairs >= 1")
        if self.n_pairs is None and self.data_path is None:
            raise TaskDataError("uuid: task.n_pairs=null needs task.data_path (generated data needs a count)")
        if self.eval_n is not None and (not isinstance(self.eval_n, int) or self.eval_n <= 0):
            raise TaskDataError(f"uuid: task.eval_n must be null or a positive integer, got {self.eval_n!r}")
        if self.eval_batch_size <= 0:
            raise TaskDataError(f"uuid: task.eval_batch_size must be positive, got {self.eval_batch_size}")
        self._pairs: list[tuple[str, str]] | None = None
        if self.data_path is not None:
            self.pairs()  # read and check the file now: bad data fails before any model is built

    # ---- data -------------------------------------------------------------------------------------------------
    def pairs(self) -> list[tuple[str, str]]:
        """The training pairs (generated from ``data_seed`` or the first ``n_pairs`` rows of ``data_path``)."""
        if self._pairs is None:
            if self.data_path is not None:
                pairs = read_pairs_jsonl(self.data_path)
                if self.n_pairs is not None:
                    pairs = pairs[: self.n_pairs]
                if not pairs:
                    raise TaskDataError(f"uuid: empty dataset: task.data_path={str(self.data_path)!r} has no rows")
            else:
                pairs = make_uuid_pairs(self.n_pairs, self.data_seed)
            self._pairs = pairs
        return self._pairs

    def eval_pairs(self) -> list[tuple[str, str]]:
        """All pairs, or a fixed sample of ``eval_n`` of them (same sample at every evaluation)."""
        pairs = self.pairs()
        if self.eval_n is None or self.eval_n >= len(pairs):
            return pairs
        indices = sorted(random.Random(self.data_seed + 1).sample(range(len(pairs)), self.eval_n))
        return [pairs[i] for i in indices]

    @staticmethod
    def prompt_ids(tokenizer, key: str) -> list[int]:
        """Token ids of ``[<s>] key ":"`` (``<s>`` when the tokenizer has one)."""
        ids = tokenizer(key + ":", add_special_tokens=False)["input_ids"]
        return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + list(ids)

    @staticmethod
    def value_ids(tokenizer, value: str) -> list[int]:
        """Token ids of the value (no special tokens; ``</s>`` is appended by the caller)."""
        return list(tokenizer(value, add_special_tokens=False)["input_ids"])

    def encode(self, tokenizer, key: str, value: str) -> dict[str, list[int]]:
        """One training row: ``input_ids`` = prompt + value + ``</s>``; ``labels`` = the same, or -100 over the
        prompt when ``loss_on == "value"``."""
        prompt = self.prompt_ids(tokenizer, key)
        target = self.value_ids(tokenizer, value) + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
        input_ids = prompt + target
        labels = list(input_ids) if self.loss_on == "sequence" else [-100] * len(prompt) + target
        return {"input_ids": input_ids, "labels": labels}

    def prepare(self, tokenizer) -> TaskData:
        import datasets

        collator = PaddingCollator(pad_token_id_of(tokenizer))   # no pad id: fails before the data is built
        pairs = self.pairs()
        rows = [self.encode(tokenizer, k, v) for k, v in pairs]
        train = datasets.Dataset.from_dict(
            {"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]}
        )
        n_tokens = sum(len(r["input_ids"]) for r in rows)
        return TaskData(
            train=train,
            collator=collator,
            eval=None,
            info={"n_train": len(rows), "n_eval": len(self.eval_pairs()), "train_tokens_per_epoch": n_tokens},
        )

    # ---- evaluation -------------------------------------------------------------------------------------------
    def greedy_values(self, model, tokenizer, keys: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy continuation of ``[<s>] key ":"`` for each key, decoded (special tokens dropped, whitespace
        stripped). Prompts are left-padded into batches of ``eval_batch_size``."""
        import torch

        device = next(model.parameters()).device
        pad_id = pad_token_id_of(tokenizer)
        outputs: list[str] = []
        from tasks.evaluation.progress import progress

        for start in progress(range(0, len(keys), self.eval_batch_size), "uuid greedy"):
            prompts = [self.prompt_ids(tokenizer, k) for k in keys[start : start + self.eval_batch_size]]
            length = max(len(p) for p in prompts)
            input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
            for i, p in enumerate(prompts):
                input_ids[i, length - len(p) :] = torch.as_tensor(p)
                attention_mask[i, length - len(p) :] = 1
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row in generated[:, length:]:
                outputs.append(tokenizer.decode(row.tolist(), skip_special_tokens=True).strip())
        return outputs

    def teacher_forced_accuracy(self, model, tokenizer, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Per pair: fraction of value tokens predicted (argmax) correctly given the true prefix."""
        import torch

        device = next(model.parameters()).device
        pad_id = pad_token_id_of(tokenizer)
        scores: list[float] = []
        from tasks.evaluation.progress import progress

        for start in progress(range(0, len(pairs), self.eval_batch_size), "uuid teacher-forced"):
            chunk = pairs[start : start + self.eval_batch_size]
            prompts = [self.prompt_ids(tokenizer, k) for k, _ in chunk]
            values = [self.value_ids(tokenizer, v) for _, v in chunk]
            length = max(len(p) + len(v) for p, v in zip(prompts, values))
            input_ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for i, (p, v) in enumerate(zip(prompts, values)):
                input_ids[i, : len(p) + len(v)] = torch.as_tensor(p + v)
                attention_mask[i, : len(p) + len(v)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            predicted = logits.argmax(dim=-1).cpu()  # (B, T): predicted[i, t] is the guess for token t + 1
            for i, (p, v) in enumerate(zip(prompts, values)):
                guesses = predicted[i, len(p) - 1 : len(p) + len(v) - 1]
                scores.append((guesses == torch.as_tensor(v)).float().mean().item())
        return scores

    def evaluate(self, model, tokenizer, output_dir: Path | None = None) -> dict[str, float]:
        import torch

        pairs = self.eval_pairs()
        was_training = model.training
        model.eval()
        try:
            max_new = max(len(self.value_ids(tokenizer, v)) for _, v in pairs) + 1
            with torch.no_grad():
                generations = self.greedy_values(model, tokenizer, [k for k, _ in pairs], max_new)
                tf_scores = self.teacher_forced_accuracy(model, tokenizer, pairs)
        finally:
            model.train(was_training)
        targets = [v for _, v in pairs]
        metrics = {
            "char_acc": mean_char_accuracy(generations, targets),
            "exact_match": exact_match(generations, targets),
            "char_acc_tf": sum(tf_scores) / len(tf_scores),
        }
        if output_dir is not None:
            output_dir = Path(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            tmp = output_dir / "uuid_samples.jsonl.tmp"
            with tmp.open("w", encoding="utf-8") as f:
                for (key, value), gen, tf in zip(pairs, generations, tf_scores):
                    f.write(json.dumps({
                        "prompt": key + ":", "target": value, "generation": gen,
                        "char_acc": char_accuracy(gen, value), "correct": gen == value, "char_acc_tf": tf,
                    }) + "\n")
            tmp.replace(output_dir / "uuid_samples.jsonl")
        return metrics
