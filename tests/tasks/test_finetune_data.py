"""Prompt rendering and label masking (exact, token by token) of task=instruct and task=math on fixture rows;
the skip rules for malformed rows; the one-line offline failures."""
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest

from runner.tokenizer import BOS_ID, EOS_ID, byte_tokenizer
from tasks.alpaca_prompt import alpaca_prompt
from tasks.base import TaskDataError
from tasks.chat_format import render_tulu, tulu_prompt, tulu_segments, validate_messages
from tasks.data_source import load_rows
from tasks.instruct import InstructTask
from tasks.math import MathTask, metamath_segments
from tasks.supervised import EOS, IGNORE_INDEX, PaddingCollator, build_examples, tokenize_segments

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TULU = FIXTURES / "tulu" / "tulu_v2_sft_mixture.jsonl"
METAMATH = FIXTURES / "metamath" / "metamathqa.jsonl"


def _bytes(text):
    return list(text.encode("utf-8"))


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer(model_max_length=4096)


@pytest.mark.parametrize("method", ["offsets", "segments"])
def test_tulu_rendering_and_masking_token_by_token(tok, method):
    rows = [json.loads(line) for line in TULU.read_text().splitlines()]
    messages = rows[1]["messages"]   # system, user, assistant, user, assistant
    assert render_tulu(messages) == ("<|system|>\nYou are a helpful assistant.\n<|user|>\nSay hi.\n<|assistant|>\n"
                                     "Hi!</s>\n<|user|>\nNow say bye.\n<|assistant|>\nBye!</s>")
    ex = tokenize_segments(tok, tulu_segments(messages), method=method)
    prefix1 = "<|system|>\nYou are a helpful assistant.\n<|user|>\nSay hi.\n<|assistant|>\n"
    between = "\n<|user|>\nNow say bye.\n<|assistant|>\n"
    expected_ids = _bytes(prefix1) + _bytes("Hi!") + [EOS_ID] + _bytes(between) + _bytes("Bye!") + [EOS_ID]
    expected_labels = ([IGNORE_INDEX] * len(_bytes(prefix1)) + _bytes("Hi!") + [EOS_ID]
                       + [IGNORE_INDEX] * len(_bytes(between)) + _bytes("Bye!") + [EOS_ID])
    assert ex.input_ids == expected_ids
    assert ex.labels == expected_labels
    assert tulu_prompt(messages[:2]) == "<|system|>\nYou are a helpful assistant.\n<|user|>\nSay hi.\n<|assistant|>\n"


def test_tulu_invalid_rows_are_named():
    assert validate_messages([]) == "missing_messages"
    assert validate_messages([{"role": "user", "content": "hi"}]) == "no_assistant_turn"
    assert validate_messages([{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]) == \
        "unknown_role"
    assert validate_messages([{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]) == \
        "empty_content"


@pytest.mark.parametrize("method", ["offsets", "segments"])
def test_metamath_prompt_and_masking_token_by_token(tok, method):
    row = json.loads(METAMATH.read_text().splitlines()[0])
    prompt = alpaca_prompt(row["query"])
    assert prompt == ("Below is an instruction that describes a task. Write a response that appropriately completes "
                      "the request.\n\n### Instruction:\nTom has 3 apples and buys 2 more. How many apples does he "
                      "have?\n\n### Response:")
    ex = tokenize_segments(tok, metamath_segments(row), method=method)
    response = " " + row["response"]
    assert ex.input_ids == _bytes(prompt) + _bytes(response) + [EOS_ID]     # the byte tokenizer adds no BOS
    assert ex.labels == [IGNORE_INDEX] * len(_bytes(prompt)) + _bytes(response) + [EOS_ID]
    with_bos = tokenize_segments(tok, metamath_segments(row), add_bos=True, method=method)
    assert with_bos.input_ids == [BOS_ID] + ex.input_ids and with_bos.labels == [IGNORE_INDEX] + ex.labels
    assert metamath_segments({"query": "q", "response": ""}) == "empty"
    assert metamath_segments({"response": "r"}) == "missing_field"


def test_offsets_tokenization_scores_by_character_span():
    """Whole-string tokenization (as SentencePiece/BPE tokenizers need): a token is scored when the character it
    STARTS at lies in a scored segment, so a token straddling the prompt/response boundary stays unscored."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"A": 0, ": x": 1, "y": 2, "</s>": 3, "<s>": 4, "?": 5}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("A|: x|y"), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")
    ex = tokenize_segments(tok, [("A:", False), (" xy", True), (EOS, True)], add_bos=True, method="offsets")
    assert ex.input_ids == [4, 0, 1, 2, 3]                      # <s> A ": x" y </s>
    assert ex.labels == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 2, 3]
    seg = tokenize_segments(tok, [("A:", False), (" xy", True), (EOS, True)], add_bos=True, method="segments")
    assert seg.input_ids != ex.input_ids                         # per-segment tokenization differs here


def test_overlong_rules(tok):
    segs = [("prompt-" * 10, False), ("answer", True)]          # 70 prompt bytes + 6 answer bytes = 76 (no BOS)
    rows, info = build_examples(tok, [segs, None], max_length=75, overlong="truncate")
    assert len(rows[0]["input_ids"]) == 75 and info["n_truncated"] == 1
    assert rows[0]["labels"][-6:] == [IGNORE_INDEX] + _bytes("answe")
    rows, info = build_examples(tok, [segs], max_length=75, overlong="skip")
    assert rows == [] and info["n_skipped_overlong"] == 1
    rows, info = build_examples(tok, [segs], max_length=20, overlong="truncate")   # answer cut away entirely
    assert rows == [] and info["n_skipped_no_target"] == 1
    with pytest.raises(ValueError, match="overlong"):
        build_examples(tok, [segs], max_length=10, overlong="drop")


def test_collator_pads_labels_with_ignore_index():
    batch = PaddingCollator(pad_token_id=256)([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
                                               {"input_ids": [4], "labels": [4]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 256, 256]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]


def test_instruct_prepare_counts_skipped_rows(tok):
    data = InstructTask({"name": "instruct", "data_path": str(TULU), "max_length": 2048}).prepare(tok)
    assert data.info["n_rows"] == 7 and data.info["n_train"] == 4
    assert data.info["n_skipped_no_assistant_turn"] == 1
    assert data.info["n_skipped_empty_content"] == 1
    assert data.info["n_skipped_unknown_role"] == 1
    first = data.train[0]
    scored = [i for i, label in zip(first["input_ids"], first["labels"]) if label != IGNORE_INDEX]
    assert tok.decode(scored) == "The capital of France is Paris.</s>"


def test_math_prepare_counts_skipped_rows(tok):
    data = MathTask({"name": "math", "data_path": str(METAMATH), "max_length": 512}).prepare(tok)
    assert (data.info["n_rows"], data.info["n_train"]) == (6, 4)
    assert data.info["n_skipped_empty"] == 1 and data.info["n_skipped_missing_field"] == 1


@pytest.mark.parametrize("task_cls, name, dataset", [(MathTask, "math", "meta-math/MetaMathQA"),
                                                      (InstructTask, "instruct", "allenai/tulu-v2-sft-mixture")])
def test_offline_without_local_copy_fails_fast_in_one_line(tok, task_cls, name, dataset):
    start = time.time()
    with pytest.raises(TaskDataError) as info:
        task_cls({"name": name}).prepare(tok)
    message = str(info.value)
    assert time.time() - start < 10
    assert "\n" not in message
    assert dataset in message and "task.data_path=" in message and "hf download" in message


def test_missing_local_file_is_named(tmp_path):
    with pytest.raises(TaskDataError, match=r"task.data_path=.*nope.jsonl does not exist"):
        load_rows(hf_name="x/y", data_path=tmp_path / "nope.jsonl", what="data")


def test_evaluation_data_offline_fails_fast_in_one_line():
    from tasks.evaluation.adaptllm import suite_tasks, task_rows
    from tasks.evaluation.math_eval import suite_specs
    from tasks.evaluation.mmlu_eval import evaluate_mmlu

    start = time.time()
    with pytest.raises(TaskDataError) as gsm8k:
        suite_specs("gsm8k", {})
    with pytest.raises(TaskDataError) as math:
        suite_specs("math", {})
    with pytest.raises(TaskDataError) as mmlu:
        evaluate_mmlu(None, None, {}, None)          # fails before touching the model
    hub, tasks = suite_tasks("finance")
    with pytest.raises(TaskDataError) as adapt:
        task_rows(hub, tasks[0], None, key="task.eval.data_dir")
    assert time.time() - start < 15
    for info, name, key in [(gsm8k, "openai/gsm8k", "task.eval.gsm8k.data_path="),
                            (math, "EleutherAI/hendrycks_math", "task.eval.math.data_path="),
                            (mmlu, "cais/mmlu", "task.eval.mmlu.test_path="),
                            (adapt, "AdaptLLM/finance-tasks", "task.eval.data_dir=DIR")]:
        message = str(info.value)
        assert "\n" not in message and name in message and key in message and "hf download" in message


def test_local_eval_files_are_used_and_checked(tmp_path):
    from tasks.evaluation.adaptllm import local_task_file, suite_tasks
    from tasks.evaluation.math_eval import suite_specs
    from tasks.evaluation.mmlu_eval import local_mmlu_specs

    specs = suite_specs("gsm8k", {"gsm8k": {"data_path": str(FIXTURES / "gsm8k")}})
    assert specs[0]["dataset_path"] == "json"
    assert specs[0]["dataset_kwargs"]["data_files"]["test"] == str((FIXTURES / "gsm8k" / "gsm8k_test.jsonl").resolve())
    mmlu = local_mmlu_specs(str(FIXTURES / "mmlu" / "mmlu_test.jsonl"), str(FIXTURES / "mmlu" / "mmlu_dev.jsonl"))
    assert [s["task"] for s in mmlu] == ["mora_mmlu_abstract_algebra", "mora_mmlu_high_school_geography"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q?", "subject": "x", "choices": ["a", "b", "c", "d"], "answer": 4}) + "\n")
    with pytest.raises(TaskDataError, match="row 0 has answer 4"):
        local_mmlu_specs(str(bad), None)
    hub, tasks = suite_tasks("biomed")
    # hub folder names differ from config names: MQP lives in MedQs/, PubMedQA in pubmed_qa/
    assert local_task_file(FIXTURES / "adaptllm" / "medicine-tasks", tasks[3]).parent.name == "MedQs"
    with pytest.raises(TaskDataError, match="no test.json"):
        local_task_file(tmp_path, tasks[0])


def test_generation_budget_must_leave_room_for_the_prompt():
    from tasks.evaluation.math_eval import check_generation_budget

    check_generation_budget(512, 4096)
    with pytest.raises(ValueError, match=r"task.eval.max_gen_toks=512 .* 512-token context; set task.eval.max_gen_toks<=384"):
        check_generation_budget(512, 512)


def test_continual_corpus_offline_names_the_config_key(tok):
    from tasks.continual import ContinualPretrainTask

    task = ContinualPretrainTask({"name": "continual_pretrain", "domain": "finance",
                                  "corpora": {"finance": {"dataset": "ashraq/financial-news-articles"}}})
    with pytest.raises(TaskDataError) as info:
        task.prepare(tok)
    message = str(info.value)
    assert "\n" not in message and "ashraq/financial-news-articles" in message
    assert "task.corpora.finance.data_path=" in message
    bad = ContinualPretrainTask({"name": "continual_pretrain", "domain": "finance",
                                 "corpora": {"finance": {"data_path": str(FIXTURES / "finance" / "financial_news.jsonl"),
                                                         "text_field": "body"}}})
    with pytest.raises(TaskDataError, match="has no field 'body'"):
        bad.prepare(tok)
    with pytest.raises(ValueError, match="task.domain='law'"):
        ContinualPretrainTask({"name": "continual_pretrain", "domain": "law"}).prepare(tok)


def test_training_target_scores_as_correct_under_the_evaluation_rules(tok):
    """The text a model is trained to produce after the prompt is exactly what the GSM8K/MATH scorers accept, and
    the evaluation prompt is the training prompt followed by MetaMath's " Let's think step by step." (no other drift
    between training and evaluation formats)."""
    from tasks.evaluation.lm_eval_tasks import mora_scorers

    rows = [json.loads(line) for line in METAMATH.read_text().splitlines()]
    for row in (rows[0], rows[2], rows[3]):
        segments = metamath_segments(row)
        doc = {"question": row["query"], "answer": "...\n#### " + row["response"].rsplit("The answer is: ", 1)[1]}
        assert mora_scorers.gsm8k_prompt(doc) == segments[0][0] + " Let's think step by step."
        assert mora_scorers.gsm8k_prompt(doc, cot_trigger="") == segments[0][0]
        assert mora_scorers.process_gsm8k(doc, [segments[1][0]]) == {"acc": 1.0}
    fraction = rows[1]
    doc = {"problem": fraction["query"], "solution": "so $\\boxed{\\dfrac34}$", "level": "Level 1", "type": "Algebra"}
    assert mora_scorers.math_prompt(doc, cot_trigger="") == metamath_segments(fraction)[0][0]
    assert mora_scorers.process_math(doc, [metamath_segments(fraction)[1][0]]) == {"acc": 1.0}


def test_arrow_backed_builder_matches_the_list_builder(tok):
    from tasks.instruct import tulu_row_segments
    from tasks.supervised import build_dataset

    rows = load_rows(hf_name=None, data_path=TULU, what="tulu")
    for overlong, max_length in [("truncate", 60), ("skip", 60), ("truncate", 2048)]:
        dataset, info = build_dataset(rows, tulu_row_segments, tok, max_length=max_length, overlong=overlong)
        segments = [tulu_row_segments(r) for r in rows]
        listed, list_info = build_examples(tok, [s if not isinstance(s, str) else None for s in segments],
                                           max_length=max_length, overlong=overlong)
        assert [dict(r) for r in dataset] == listed
        assert {k: v for k, v in info.items() if not k.startswith("n_skipped_") or k in list_info} == list_info
        assert info["n_skipped_unknown_role"] == 1 and info["n_skipped_no_assistant_turn"] == 1


def test_packing_in_blocks_matches_one_stream_when_blocks_hold_whole_chunks(tok):
    from tasks.continual import packed_chunks
    from tasks.corpora import pack_token_chunks

    docs = ["abcdefg", "hij", "klmnopqrstu", "vw"]          # 8 + 4 + 12 + 3 = 27 tokens with EOS
    whole = packed_chunks(docs, tok, seq_len=4)
    expected = pack_token_chunks([_bytes(d) for d in docs], 4, EOS_ID)
    assert whole["input_ids"] == expected and whole["labels"] == expected and len(expected) == 6
    blocks = packed_chunks(docs, tok, seq_len=4, block_docs=2)   # blocks of 12 and 15 tokens: 3 + 3 chunks
    assert blocks["input_ids"] == expected
    odd = packed_chunks(docs, tok, seq_len=5, block_docs=1)      # every document packed alone: remainders dropped
    assert odd["input_ids"] == [_bytes("abcde"), _bytes("klmno"), _bytes("pqrst")]
    with pytest.raises(ValueError, match="pack_block_docs"):
        packed_chunks(docs, tok, seq_len=4, block_docs=0)
