"""train → merge → evaluate on model=tiny for task=math, task=instruct and task=continual_pretrain (through the
runner, as `python train.py task=... model=tiny ...` does), the finance suite, evaluation of a saved run with
scripts/evaluate.py, and the merge-for-evaluation guarantee (the trained PEFT model is left untouched)."""
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures"
TINY_TRAINER = ["model=tiny", "logger=none", "trainer.max_steps=2", "trainer.batch_size=2",
                "trainer.micro_batch_size=2", "trainer.warmup_steps=0", "trainer.eval_steps=1000",
                "trainer.save_steps=1000", "trainer.logging_steps=1", "seed=0"]
MATH = ["task=math", "adapter=mora", "r=8", f"task.data_path={FIX}/metamath/metamathqa.jsonl",
        f"task.eval.gsm8k.data_path={FIX}/gsm8k/gsm8k_test.jsonl", f"task.eval.math.data_path={FIX}/math/math_test.jsonl",
        "task.eval.max_gen_toks=8"]


def run_train(tmp_path: Path, overrides: list[str]) -> tuple[dict, Path]:
    from hydra import compose, initialize_config_dir

    import runner.config  # noqa: F401  (run_id resolver)
    from runner.run import run_experiment

    out, results = tmp_path / "run", tmp_path / "results"
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=TINY_TRAINER + overrides + [f"output_dir={out}", f"results_dir={results}"])
    summary = run_experiment(cfg, choices={})
    record = json.loads(Path(summary.record_path).read_text())
    return record, out


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def math_run(tmp_path_factory):
    return run_train(tmp_path_factory.mktemp("math"), MATH)


def test_math_train_merge_evaluate(math_run):
    record, out = math_run
    assert record["task"] == "math" and record["adapter"] == "mora"
    for metric in ("gsm8k", "math"):
        assert 0.0 <= record["final"][metric] <= 1.0
    gsm8k = read_samples(out / "samples" / "gsm8k.jsonl")
    assert len(gsm8k) == 3 and {"prompt", "generation", "extracted", "gold", "correct"} <= set(gsm8k[0])
    assert [s["gold"] for s in gsm8k] == ["72", "10", "2,400"]
    assert gsm8k[0]["prompt"].endswith("### Response: Let's think step by step.")   # MetaMath's evaluation prompt
    assert sum(s["correct"] for s in gsm8k) / 3 == pytest.approx(record["final"]["gsm8k"])
    math_samples = read_samples(out / "samples" / "math.jsonl")
    assert [s["gold"] for s in math_samples] == ["\\frac{5}{6}", "3", "2\\sqrt{2}"]


def test_evaluate_script_appends_to_the_record(math_run, tmp_path, capsys):
    import shutil
    import sys

    record, out = math_run
    run = tmp_path / "copy"
    shutil.copytree(out, run)
    sys.path.insert(0, str(REPO / "scripts"))
    import evaluate as evaluate_script

    results = tmp_path / "results"
    results.mkdir()
    (results / f"{record['run_id']}.json").write_text(json.dumps(record))
    assert evaluate_script.main([f"run={run}", "tasks=[gsm8k]", "task.eval.max_gen_toks=4",
                                 f"results_dir={results}"]) == 0
    updated = json.loads((run / "record.json").read_text())
    assert json.loads((results / f"{record['run_id']}.json").read_text())["evaluations"] == updated["evaluations"]
    assert updated["final"] == record["final"]              # the training run's metrics stay
    (entry,) = updated["evaluations"]
    assert set(entry["metrics"]) == {"gsm8k"} and entry["tasks"] == ["gsm8k"]
    assert entry["overrides"] == ["task.eval.max_gen_toks=4"]
    assert (Path(entry["samples_dir"]) / "gsm8k.jsonl").is_file() and Path(entry["samples_dir"]).parent == run / "evaluations"
    assert evaluate_script.main([f"run={run}", "tasks=[bogus]"]) == 1
    assert evaluate_script.main([f"run={tmp_path / 'missing'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2].startswith("error: tasks: unknown math suite") and "no record.json" in err[-1]


def test_instruct_train_merge_evaluate(tmp_path):
    record, out = run_train(tmp_path, [
        "task=instruct", "adapter=lora", "r=4", f"task.data_path={FIX}/tulu/tulu_v2_sft_mixture.jsonl",
        f"task.eval.mmlu.test_path={FIX}/mmlu/mmlu_test.jsonl", f"task.eval.mmlu.dev_path={FIX}/mmlu/mmlu_dev.jsonl"])
    for metric in ("mmlu_0shot", "mmlu_5shot"):
        assert record["final"][metric] in (0.0, 0.25, 0.5, 0.75, 1.0)   # 4 questions
    five = read_samples(out / "samples" / "mmlu_5shot.jsonl")
    assert len(five) == 4 and len(five[0]["loglikelihoods"]) == 4
    # few-shot examples come from the dev rows of the same subject
    assert five[0]["prompt"].count("Example abstract algebra question") == 5
    assert "geography" not in five[0]["prompt"]
    zero = read_samples(out / "samples" / "mmlu_0shot.jsonl")
    assert zero[0]["prompt"].startswith("The following are multiple choice questions (with answers) about abstract "
                                        "algebra.\n\nFind the degree")
    assert sum(s["correct"] for s in zero) / 4 == pytest.approx(record["final"]["mmlu_0shot"])


def test_continual_biomed_train_merge_evaluate(tmp_path):
    record, out = run_train(tmp_path, [
        "task=continual_pretrain", "adapter=mora", "r=8", "task.domain=biomed", "task.seq_len=64",
        f"task.corpora.biomed.data_path={FIX}/pubmed/pubmed_abstracts.jsonl",
        f"task.eval.data_dir={FIX}/adaptllm/medicine-tasks", "task.eval.limit=2"])
    final = record["final"]
    tasks = ["pubmedqa", "chemprot", "rct", "mqp", "usmle"]
    assert all(0.0 <= final[f"biomed/{t}"] <= 1.0 for t in tasks)
    assert final["biomed_avg"] == pytest.approx(sum(final[f"biomed/{t}"] for t in tasks) / 5)
    assert final["biomed/usmle/n_skipped"] == 1.0          # the malformed fixture row is skipped and counted
    usmle = read_samples(out / "samples" / "biomed_usmle.jsonl")
    assert len(usmle) == 1 and len(usmle[0]["losses"]) == 4   # limit=2 rows: the malformed one + one valid


def test_finance_suite_all_metrics(tmp_path):
    from runner.models import build_model, load_model_config
    from tasks.continual import ContinualPretrainTask

    model, tok = build_model(load_model_config("tiny"), 0)
    task = ContinualPretrainTask({"name": "continual_pretrain", "domain": "finance", "seq_len": 32,
                                  "corpora": {"finance": {"data_path": str(FIX / "finance" / "financial_news.jsonl")}},
                                  "eval": {"data_dir": str(FIX / "adaptllm" / "finance-tasks"), "max_new_tokens": 4,
                                           "limit": 1}})
    data = task.prepare(tok)
    assert data.info["n_docs"] == 3 and all(len(r) == 32 for r in data.train["input_ids"])
    assert data.train[0]["labels"] == data.train[0]["input_ids"]
    metrics = task.evaluate(model, tok, tmp_path)
    keys = ["convfinqa", "fpb", "fiqa_sa", "headline", "ner"]
    assert set(metrics) == {f"finance/{k}" for k in keys} | {"finance_avg"}
    ner = read_samples(tmp_path / "finance_ner.jsonl")
    assert len(ner) == 1
    assert {"prompt", "generation", "extracted", "gold", "correct"} <= set(ner[0])
    assert model.training  # evaluation restored the caller's mode


def test_evaluation_merges_a_copy_and_leaves_the_peft_model_untouched():
    import peft
    import torch

    from runner.models import build_model, load_model_config
    from tasks.evaluation.eval_model import evaluation_model

    base, _ = build_model(load_model_config("tiny"), 0)
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[1, 2, 3, 4]])
    model.eval()
    expected = model(input_ids=ids).logits
    model.train()
    with evaluation_model(model) as merged:
        assert not isinstance(merged, peft.PeftModel) and not merged.training
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
    assert model.training and isinstance(model, peft.PeftModel)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_evaluate_saved_full_model_run(math_run, tmp_path):
    """A full-fine-tuning run folder (model/ instead of adapter/) is loaded with its saved tokenizer."""
    import shutil

    from runner.saved_run import evaluate_saved_run, load_saved_run

    _, out = math_run
    run = tmp_path / "fft"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("checkpoint-*"))
    merged, tokenizer = load_saved_run(run, merge=True)
    shutil.rmtree(run / "adapter")
    merged.save_pretrained(str(run / "model"), safe_serialization=True)
    tokenizer.save_pretrained(str(run / "model"))
    metrics = evaluate_saved_run(run, ["math"], ["task.eval.max_gen_toks=2"], results_dir=tmp_path / "none")
    assert set(metrics) == {"math"}
    assert json.loads((run / "record.json").read_text())["evaluations"][-1]["metrics"] == metrics


def test_in_place_merge_restores_the_adapter():
    import peft
    import torch

    from runner.models import build_model, load_model_config
    from tasks.evaluation.eval_model import evaluation_model

    base, _ = build_model(load_model_config("tiny"), 0)
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    ids = torch.tensor([[5, 6, 7]])
    model.eval()
    expected = model(input_ids=ids).logits
    with evaluation_model(model, merge="in_place") as merged:
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
    assert not any(getattr(m, "merged", False) for m in model.modules())
    assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-5)
    with pytest.raises(ValueError, match="task.eval.merge='fold'"):
        with evaluation_model(model, merge="fold"):
            pass
