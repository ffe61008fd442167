"""A few-step UUID run per adapter on model=tiny writes a valid record, the saved adapter/model, samples, checkpoints
and (offline) W&B files."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from runner.record import load_record
from runner.run import run_experiment
from tests.conftest import TINY_RUN_OVERRIDES

CASES = {
    "fft": ["adapter=fft"],
    "lora": ["adapter=lora", "r=4"],
    "dora": ["adapter=dora", "r=4"],
    "mora_rope": ["adapter=mora", "r=8", "logger=wandb_offline"],
    "mora_sharing": ["adapter=mora", "r=64"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_few_step_run_writes_a_valid_record(compose_run_config, case):
    cfg = compose_run_config(*TINY_RUN_OVERRIDES, *CASES[case])
    summary = run_experiment(cfg)

    record = load_record(summary.record_path)
    assert record["run_id"] == cfg.run_id and summary.record_path.name == f"{cfg.run_id}.json"
    assert (record["task"], record["model"], record["adapter"]) == ("uuid", "tiny", cfg.adapter.name)
    assert set(record["final"]) == {"char_acc", "char_acc_tf", "exact_match", "train_loss"}
    assert all(0.0 <= record["final"][m] <= 1.0 for m in ("char_acc", "char_acc_tf", "exact_match"))
    assert [p["step"] for p in record["history"]] == [1, 2, 3, 4]
    assert "char_acc" in record["history"][1] and "train_loss" in record["history"][0]  # eval at step 2
    assert record["tokens_per_s"] > 0 and record["wall_time_s"] > 0 and record["peak_memory_mb"] > 0
    assert record["config"]["trainer"]["max_steps"] == 4 and "hydra" not in record["config"]

    out = Path(record["output_dir"])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((out / "record.json").read_text()) == record
    samples = (Path(record["samples_dir"]) / "uuid_samples.jsonl").read_text().splitlines()
    assert len(samples) == 8
    umask = os.umask(0)
    os.umask(umask)
    readable = 0o644 & ~(umask & 0o022)  # like the records: teammates on shared storage can read adapters
    for path in [*out.glob("adapter/*"), *out.glob("model/*"), *out.glob("checkpoint-4/*"), summary.record_path]:
        assert stat.S_IMODE(path.stat().st_mode) == readable, path
    if case == "fft":
        assert record["r"] is None and record["params"]["trainable"] == record["params"]["total"]
        assert (out / "model" / "model.safetensors").is_file()
    else:
        assert record["r"] == cfg.r and record["params"]["lora_equivalent"] > 0
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
        assert (out / "adapter" / "adapter_config.json").is_file()
    if case.startswith("mora"):
        assert record["mora_type"] == {"mora_rope": "rope", "mora_sharing": "sharing"}[case]
    if case == "mora_rope":  # offline W&B: a run folder under the run's output folder, no network needed
        runs = list((out / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_saved_mora_adapter_reloads_with_plain_peft(compose_run_config):
    import torch
    from peft import PeftModel

    import moRA  # noqa: F401  (registers the MORA PEFT type)
    from runner.models import build_model

    cfg = compose_run_config(*TINY_RUN_OVERRIDES, "adapter=mora", "r=8", "trainer.max_steps=2", "lr=0.05")
    summary = run_experiment(cfg)
    base, tok = build_model(cfg.model, 0)
    reloaded = PeftModel.from_pretrained(base, str(summary.output_dir / "adapter")).eval()
    x = torch.tensor([list(b"0123:abcd")])
    base_again, _ = build_model(cfg.model, 0)
    assert not torch.allclose(reloaded(input_ids=x).logits, base_again.eval()(input_ids=x).logits)
