"""AdaptLLM metrics and scoring rules on hand-made cases: F1 variants, entity F1, numeric match, option loss + ties."""
import math
from pathlib import Path

import pytest
import torch

from tasks.evaluation import classification_metrics as cm
from tasks.evaluation.adaptllm import AdaptLLMTask, headline_group, row_problem, suite_tasks
from tasks.evaluation.option_scoring import choose_option, option_losses, option_separator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_accuracy_and_f1():
    golds = ["a", "a", "b", "c"]
    preds = ["a", "b", "b", "b"]
    assert cm.accuracy(preds, golds) == 0.5
    assert cm.micro_f1(preds, golds) == pytest.approx(0.5)          # single label: micro-F1 = accuracy
    # per class F1: a = 2/3 (P=1,R=.5), b = 0.5 (P=1/3,R=1), c = 0; weights 2/4, 1/4, 1/4
    assert cm.weighted_f1(preds, golds) == pytest.approx(0.5 * 2 / 3 + 0.25 * 0.5)
    with pytest.raises(ValueError):
        cm.accuracy([], [])


def test_grouped_weighted_f1_averages_sub_questions():
    preds = ["Yes", "No", "No", "No"]
    golds = ["Yes", "No", "Yes", "No"]
    groups = ["up?", "up?", "down?", "down?"]
    # group up: perfect (1.0); group down: golds Yes/No, preds No/No → weighted F1 = .5·0 + .5·(2/3)
    assert cm.grouped_weighted_f1(preds, golds, groups) == pytest.approx((1.0 + 1 / 3) / 2)


def test_entity_parsing_and_f1():
    assert cm.parse_entities("Acme Bank, organization; John Smith, person\nBoston, LOCATION.") == {
        ("acme bank", "organization"), ("john smith", "person"), ("boston", "location")}
    assert cm.parse_entities("Bank of America, N.A., organization") == {("bank of america, n.a", "organization")}  # trailing "." stripped
    assert cm.parse_entities("no entities here") == set()
    gold = ["Acme Bank, organization; John Smith, person", "Jane Doe, person"]
    pred = ["acme bank, organization; John Smith, location", ""]
    # TP = 1, FP = 1, FN = 2 → 2/(2+1+2)
    assert cm.entity_f1(pred, gold) == pytest.approx(2 / 5)
    assert cm.entity_f1([""], [""]) == 1.0


@pytest.mark.parametrize("generation, gold, ok", [
    ("300", "300", True), ("$1,500 million", "1500", True), ("25.004", "25.0%", True), ("25.02", "25.0", False),
    ("-0.5", "-0.5", True), ("about 12", "12.01", True), ("n/a", "3", False), ("", "3", False),
])
def test_numeric_match_within_1e_2(generation, gold, ok):
    assert cm.numeric_match(generation, gold) is ok


def test_choose_option_ties_go_to_lowest_index():
    assert choose_option([2.0, 1.0, 1.0]) == 1
    assert choose_option([0.5, 0.5]) == 0
    assert choose_option([math.inf, 3.0]) == 1
    with pytest.raises(ValueError):
        choose_option([])


class _UniformByteModel(torch.nn.Module):
    """Logits favour token id 97 ('a') everywhere: log p('a') > log p(other)."""

    def __init__(self, vocab=259):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., 97] = 2.0
        return type("Out", (), {"logits": logits + self.dummy})()


def test_option_losses_are_length_normalised_and_ties_pick_first():
    from runner.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    model = _UniformByteModel()
    losses = option_losses(model, tok, "Answer:", ["aaaa", "a", "b", "a"])
    lp = torch.log_softmax(torch.tensor([2.0] + [0.0] * 258), 0)
    la, lo = float(-lp[0]), float(-lp[1])          # NLL of 'a' and of any other byte
    # each option is scored after one space: " aaaa" = (lo + 4 la)/5, " a" = (lo + la)/2, " b" = lo
    assert losses[0] == pytest.approx((lo + 4 * la) / 5, rel=1e-5)
    assert losses[1] == pytest.approx((lo + la) / 2, rel=1e-5)
    assert losses[2] == pytest.approx(lo, rel=1e-5)
    assert losses[1] == losses[3]
    assert choose_option(losses) == 0                # the longer option wins by MEAN loss (sum would pick " a")
    assert option_separator("Answer:\n") == "" and option_separator("Answer:") == " "
    assert option_losses(model, tok, "Q", ["", "a"])[0] == math.inf


def test_row_validation_and_headline_groups():
    mc = AdaptLLMTask("x", "X", "choice", "accuracy")
    gen = AdaptLLMTask("y", "Y", "generate", "numeric_match")
    assert row_problem({"input": "q", "options": ["a", "b"], "gold_index": 1}, mc) is None
    assert row_problem({"input": "q", "options": ["a", "b"], "gold_index": 2}, mc) == "gold_index out of range"
    assert row_problem({"input": "q", "options": ["a"], "gold_index": 0}, mc) == "fewer than 2 string options"
    assert row_problem({"options": ["a", "b"], "gold_index": 0}, mc) == "missing input"
    assert row_problem({"input": "q", "label": " "}, gen) == "empty gold answer"
    assert row_problem({"input": "q", "label": "3"}, gen) is None
    assert headline_group({"input": "Headline: x\nDoes it talk about price going up?\n", "class_id": None}) == \
        "Does it talk about price going up?"
    assert headline_group({"input": "x", "class_id": 4}) == 4
    hub, tasks = suite_tasks("biomed")
    assert hub == "AdaptLLM/medicine-tasks" and [t.key for t in tasks] == ["pubmedqa", "chemprot", "rct", "mqp", "usmle"]
    with pytest.raises(ValueError, match="unknown finance task"):
        suite_tasks("finance", ["pubmedqa"])


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=256, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


ITEMS = [("Question: is it? Answer:", ["yes", "no", "maybe"]), ("Q", ["", "a long option text", "b"]),
         ("Another much longer context with words.\n", ["alpha", "beta"]), ("x", ["only", "two"])]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batched_option_losses_equal_one_row_at_a_time(batch_size):
    from runner.tokenizer import byte_tokenizer
    from tasks.evaluation.option_scoring import option_losses_batch

    tok, model = byte_tokenizer(), _tiny_llama()
    done = []
    batched = option_losses_batch(model, tok, ITEMS, max_length=64, batch_size=batch_size, progress=done.append)
    for (context, options), losses in zip(ITEMS, batched):
        assert losses == pytest.approx(option_losses(model, tok, context, options, max_length=64), rel=1e-5)
    assert batched[1][0] == math.inf
    assert sum(done) == len(ITEMS)                      # the progress callback counts every item once
    with pytest.raises(ValueError, match="batch_size=0"):
        option_losses_batch(model, tok, ITEMS, batch_size=0)


def test_sharded_scoring_gathers_every_rank_s_rows_in_order():
    from tasks.evaluation.sharding import interleave, sharded_map

    items = list(range(11))
    world = 3
    shards = [[10 * x for x in items[rank::world]] for rank in range(world)]   # what each rank computes
    for rank in range(world):
        seen = []

        def score(shard, seen=seen):
            seen.extend(shard)
            return [10 * x for x in shard]

        assert sharded_map(score, items, rank, world, gather=lambda local: shards) == [10 * x for x in items]
        assert seen == items[rank::world]               # this rank scored only its own shard
    assert interleave([[0, 2], [1]]) == [0, 1, 2]
    assert sharded_map(lambda s: [x + 1 for x in s], items) == [x + 1 for x in items]   # one process: everything


def test_zero3_partitioned_models_are_not_sharded():
    from tasks.evaluation.sharding import is_partitioned

    model = _tiny_llama()
    assert not is_partitioned(model)
    next(model.parameters()).ds_id = 0
    assert is_partitioned(model)


def _evaluate_on_rank(rank, world, port, out_dir, result_file):
    import json
    import os

    import torch.distributed as dist

    from runner.tokenizer import byte_tokenizer
    from tasks.evaluation import adaptllm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    scored = []
    real = adaptllm.score_rows
    adaptllm.score_rows = lambda m, t, task, rows, *a, **k: scored.extend((task.key, r["id"]) for r in rows) or real(
        m, t, task, rows, *a, **k)
    cfg = {"data_dir": str(FIXTURES / "adaptllm" / "medicine-tasks"), "tasks": ["pubmedqa", "rct"], "batch_size": 4}
    metrics = adaptllm.evaluate_suite(_tiny_llama(), byte_tokenizer(), "biomed", cfg, None)
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "scored": scored}))
    dist.destroy_process_group()


def test_ddp_ranks_score_disjoint_shards_and_agree_with_one_process(tmp_path):
    """Two gloo processes split each task's rows, gather them, and report the one-process metrics."""
    import json
    import socket

    import torch.multiprocessing as mp

    from runner.tokenizer import byte_tokenizer
    from tasks.evaluation.adaptllm import evaluate_suite

    cfg = {"data_dir": str(FIXTURES / "adaptllm" / "medicine-tasks"), "tasks": ["pubmedqa", "rct"], "batch_size": 4}
    single = evaluate_suite(_tiny_llama(), byte_tokenizer(), "biomed", cfg, None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_evaluate_on_rank, args=(2, port, str(tmp_path), str(tmp_path / "x")), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        assert rank["metrics"] == pytest.approx(single, rel=1e-6)
    assert ranks[0]["scored"] and ranks[1]["scored"]
    scored = [{tuple(x) for x in rank["scored"]} for rank in ranks]
    assert not scored[0] & scored[1]                                    # no row scored twice
    assert len(scored[0] | scored[1]) == len(ranks[0]["scored"]) + len(ranks[1]["scored"])


def test_evaluation_progress_bars_show_on_rank_zero_only(monkeypatch, capsys):
    from tasks.evaluation import progress as progress_module

    assert list(progress_module.progress(range(3), "perplexity")) == [0, 1, 2]
    assert "perplexity" in capsys.readouterr().err                     # tqdm writes to stderr
    monkeypatch.setattr(progress_module, "rank_and_world", lambda: (1, 2))
    assert list(progress_module.progress(range(3), "perplexity")) == [0, 1, 2]
    assert "perplexity" not in capsys.readouterr().err
