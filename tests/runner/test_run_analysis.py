"""A pretraining run records the ΔW singular-value analysis (final − initial weights), per adapted layer."""
from __future__ import annotations

from runner.record import load_record
from runner.run import run_experiment

PRETRAIN_TINY = [
    "experiment=cpu/pretrain", "logger=none", "trainer.max_steps=4", "trainer.eval_steps=4", "trainer.save_steps=4",
    "trainer.warmup_steps=0", "task.max_eval_tokens=256", "task.eval_lengths=[64]", "task.seq_len=64",
]


def test_pretrain_record_holds_singular_value_counts(compose_run_config):
    cfg = compose_run_config(*PRETRAIN_TINY, "adapter=remora", "adapter.restart.merge_every=2",
                             "adapter.restart.restart_warmup=1")
    record = load_record(run_experiment(cfg).record_path)
    sv = record["analysis"]["delta_w_singular_values"]
    assert sv["threshold"] == cfg.task.sv_threshold and sv["delta"] == "final_minus_initial"
    counts = sv["sv_above_threshold"]
    assert len(counts) == 4 * 7  # 4 layers × 7 projections of the tiny model
    # after a merge the learned update lives in W (M was reset): final − initial is non-zero somewhere
    assert any(c > 0 for c in counts.values())


def test_uuid_record_has_no_analysis(compose_run_config):
    from tests.conftest import TINY_RUN_OVERRIDES

    record = load_record(run_experiment(compose_run_config(*TINY_RUN_OVERRIDES, "adapter=lora", "r=4")).record_path)
    assert record.get("analysis") is None
