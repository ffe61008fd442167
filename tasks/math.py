"""task=math: MetaMathQA fine-tuning with the Alpaca prompt, evaluated zero-shot on GSM8K and MATH.

Training rows (meta-math/MetaMathQA: ``query``, ``response``, ``type``, ``original_question``) become
``[BOS] alpaca_prompt(query) | " " response [EOS]`` with the loss on the response and EOS only (``labels`` = -100 on
the prompt), cut at ``max_length`` (512) tokens. Bad rows are skipped and counted in ``TaskData.info``:
``n_skipped_missing_field`` (no query/response or not a string), ``n_skipped_empty`` (blank query/response), plus the
over-length rules of ``tasks.supervised.build_examples`` (``overlong=truncate`` default, or ``skip``).

Evaluation (``cfg.eval.suites``), each a metric of the result record, with MetaMath's evaluation protocol (prompt +
"Let's think step by step.", its stop strings and budgets, integer GSM8K answers; every setting a switch, see
``tasks.evaluation.metamath_protocol``):
- ``gsm8k``: the repository's lm-eval task ``mora_gsm8k`` (openai/gsm8k "main" test, or a local JSONL in that schema);
- ``math``: ``mora_math`` over the seven EleutherAI/hendrycks_math subjects (or a local JSONL in that schema),
  micro-averaged over problems;
- ``lm_eval:<name>`` (e.g. ``lm_eval:gsm8k``, ``lm_eval:minerva_math``): lm-eval's stock task, reported as
  ``<name>/<metric>`` for every numeric metric lm-eval returns (its own prompt and few-shot defaults).
Every generation is written to ``<output_dir>/<suite>.jsonl`` (the runner passes ``<run folder>/samples``) with the extracted answer and correctness.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from tasks.alpaca_prompt import RESPONSE_SEPARATOR, alpaca_prompt
from tasks.base import Task, TaskData, TaskDataError
from tasks.data_source import config_value, load_rows, subsample_rows
from tasks.supervised import EOS, PaddingCollator, build_dataset, pad_token_id_of


def metamath_segments(row: Mapping[str, Any]) -> list | str:
    """Segments of one MetaMathQA row, or the skip reason ("missing_field" / "empty")."""
    query, response = row.get("query"), row.get("response")
    if not isinstance(query, str) or not isinstance(response, str):
        return "missing_field"
    if not query.strip() or not response.strip():
        return "empty"
    return [(alpaca_prompt(query), False), (RESPONSE_SEPARATOR + response.strip(), True), (EOS, True)]


class MathTask(Task):
    name = "math"

    def prepare(self, tokenizer) -> TaskData:
        cfg = self.cfg
        rows = load_rows(hf_name=config_value(cfg, "dataset", "meta-math/MetaMathQA"), config=config_value(cfg, "dataset_config"),
                         split=config_value(cfg, "split", "train"), data_path=config_value(cfg, "data_path"),
                         what="MetaMathQA training data", key="task.data_path")
        rows = subsample_rows(rows, cfg)
        train, info = build_dataset(rows, metamath_segments, tokenizer, max_length=int(config_value(cfg, "max_length", 512)),
                                    overlong=config_value(cfg, "overlong", "truncate"), desc="MetaMathQA")
        info = {"n_skipped_missing_field": 0, "n_skipped_empty": 0, **info, "n_rows": len(rows)}
        if len(train) == 0:
            raise TaskDataError(f"MetaMathQA training data: no usable example among {len(rows)} rows ({info})")
        return TaskData(train=train, collator=PaddingCollator(pad_token_id_of(tokenizer)), eval=None, info=info)

    def evaluate(self, model, tokenizer, output_dir: Path | None = None) -> dict[str, float]:
        from tasks.evaluation.math_eval import evaluate_math_suites

        return evaluate_math_suites(model, tokenizer, config_value(self.cfg, "eval", {}), output_dir)


