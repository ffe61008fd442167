"""task=instruct: Tülu-v2 instruction tuning (loss on assistant turns), evaluated on MMLU 0-shot and 5-shot.

Training rows (allenai/tulu-v2-sft-mixture: ``dataset``, ``id``, ``messages`` = [{role, content}]) are rendered in
the Tülu chat format by ``tasks.chat_format`` (EOS after every assistant turn; only assistant contents + EOS are
scored) and cut at ``max_length`` (2048) tokens. Rows that cannot be rendered are skipped and counted in
``TaskData.info`` as ``n_skipped_<reason>`` (missing_messages, unknown_role, empty_content, no_assistant_turn);
over-length rows follow ``overlong`` (truncate | skip, see ``tasks.supervised``).

Evaluation (metrics ``mmlu_0shot`` and ``mmlu_5shot``, accuracy over all questions):
- ``eval.mmlu.source=lm_eval``: lm-eval's stock ``mmlu`` group (cais/mmlu from the hub or the HF cache);
- ``eval.mmlu.source=local``: the repository's ``mora_mmlu`` task (same prompt and few-shot rule as lm-eval's
  ``mmlu``) on local files in the cais/mmlu schema: ``eval.mmlu.test_path`` and ``eval.mmlu.dev_path``.
``eval.mmlu.source=auto`` (default) uses the local files when ``test_path`` is set, lm-eval's ``mmlu`` otherwise.
Per-question log-likelihoods, the predicted and gold letters go to ``<output_dir>/mmlu_<k>shot.jsonl`` (the runner passes ``<run folder>/samples``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from tasks.base import Task, TaskData, TaskDataError
from tasks.chat_format import tulu_segments, validate_messages
from tasks.data_source import config_value, load_rows, subsample_rows
from tasks.supervised import PaddingCollator, build_dataset, pad_token_id_of


def _messages_of(row: Mapping) -> Any:
    messages = row.get("messages")
    if isinstance(messages, str):  # some local copies store the list as a JSON string
        try:
            messages = json.loads(messages)
        except ValueError:
            return None
    return messages


def tulu_row_segments(row: Mapping) -> list | str:
    """Segments of one Tülu row, or the skip reason (see ``chat_format.validate_messages``)."""
    messages = _messages_of(row)
    reason = validate_messages(messages)
    return reason if reason is not None else tulu_segments(messages)


class InstructTask(Task):
    name = "instruct"

    def prepare(self, tokenizer) -> TaskData:
        cfg = self.cfg
        rows = load_rows(hf_name=config_value(cfg, "dataset", "allenai/tulu-v2-sft-mixture"),
                         config=config_value(cfg, "dataset_config"), split=config_value(cfg, "split", "train"),
                         data_path=config_value(cfg, "data_path"), what="Tülu v2 SFT mixture", key="task.data_path")
        rows = subsample_rows(rows, cfg)
        train, info = build_dataset(rows, tulu_row_segments, tokenizer, max_length=int(config_value(cfg, "max_length", 2048)),
                                    overlong=config_value(cfg, "overlong", "truncate"), desc="Tülu v2")
        info["n_rows"] = len(rows)
        if len(train) == 0:
            raise TaskDataError(f"Tülu v2 SFT mixture: no usable conversation among {len(rows)} rows ({info})")
        return TaskData(train=train, collator=PaddingCollator(pad_token_id_of(tokenizer)), eval=None, info=info)

    def evaluate(self, model, tokenizer, output_dir: Path | None = None) -> dict[str, float]:
        from tasks.evaluation.mmlu_eval import evaluate_mmlu

        return evaluate_mmlu(model, tokenizer, config_value(self.cfg, "eval", {}), output_dir)
