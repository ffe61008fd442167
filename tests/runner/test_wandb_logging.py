"""runner/wandb_logging.py with W&B in offline mode: tags, MoRA layer shapes, speed, memory, samples, analysis, and the
narrow filters of known console noise."""
import json
import logging
import warnings

import pytest
import torch


@pytest.fixture
def offline_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="mora-test", settings=wandb.Settings(quiet=True, silent=True))
    yield run
    wandb.finish()


def _mora_model():
    import peft

    import moRA

    base = torch.nn.Sequential()
    base.add_module("q_proj", torch.nn.Linear(32, 32))
    base.add_module("up_proj", torch.nn.Linear(32, 64))
    return peft.get_peft_model(base, moRA.MoraConfig(r=8, mora_type="sharing", target_modules=["q_proj", "up_proj"]))


def test_layer_shapes_name_r_hat_and_the_resolved_type():
    from runner.wandb_logging import mora_layer_shapes

    shapes = mora_layer_shapes(_mora_model())
    assert [(s["d"], s["k"], s["mora_type"], s["layers"]) for s in shapes] == [(32, 32, "sharing", 1),
                                                                                (64, 32, "sharing", 1)]
    assert all(s["r_hat"] == int(((s["d"] + s["k"]) * 8) ** 0.5 + 0.5) for s in shapes)
    assert mora_layer_shapes(torch.nn.Linear(2, 2)) == []


def test_tags_name_task_adapter_and_model():
    from runner.wandb_logging import run_tags

    cfg = {"task": {"name": "uuid"}, "adapter": {"name": "mora", "mora_type": "auto"}, "model": {"name": "tiny"}}
    assert run_tags(cfg) == ["task:uuid", "adapter:mora", "model:tiny", "mora_type:auto"]


def test_callback_and_run_end_log_into_the_offline_run(offline_run, tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from runner.wandb_logging import MoraWandbCallback, log_run_end

    logged = []
    offline_run.log = lambda payload, **kw: logged.append(payload)     # what reaches W&B, without parsing its files
    cfg = {"task": {"name": "uuid"}, "adapter": {"name": "mora"}, "model": {"name": "tiny"}}
    callback, state = MoraWandbCallback(cfg), TrainerState(is_world_process_zero=True)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    callback.on_train_begin(args, state, TrainerControl(), model=_mora_model())
    assert {"task:uuid", "adapter:mora", "model:tiny"} <= set(offline_run.tags)
    table = logged[0]["mora/layer_shapes"]
    assert table.columns == ["adapter", "d", "k", "r_hat", "mora_type", "layers"] and len(table.data) == 2
    assert offline_run.config["mora_resolved"]["64x32"]["mora_type"] == "sharing"
    callback.on_train_end(args, state, TrainerControl())
    assert offline_run.summary["perf/peak_memory_bytes"] > 0

    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "gsm8k.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}", "correct": i % 2 == 0,
                                                             "extracted": [i]}) + "\n" for i in range(3)))
    analysis = {"delta_w_singular_values": {"threshold": 0.1, "sv_above_threshold": {"l0.q": 5, "l0.up": 7},
                                            "shapes": {"l0.q": [32, 32], "l0.up": [64, 32]}, "mean_per_layer": 6.0}}
    log_run_end(samples, tokens_per_s=1234.5, analysis=analysis)
    payload = logged[-1]
    assert payload["samples/gsm8k"].columns == ["correct", "extracted", "prompt"]
    assert [row[2] for row in payload["samples/gsm8k"].data] == ["q0", "q1", "q2"]
    assert payload["analysis/singular_values"].data == [["l0.q", "32x32", 5], ["l0.up", "64x32", 7]]
    assert offline_run.summary["perf/tokens_per_s"] == 1234.5


def test_without_a_run_nothing_is_logged_and_nothing_fails(tmp_path):
    from runner.wandb_logging import log_run_end

    log_run_end(tmp_path, tokens_per_s=1.0)          # logger=none: no W&B run


def test_known_noise_is_filtered_by_exact_message_and_nothing_else(capsys):
    from runner.console_noise import BNB_CPU_KERNEL_TEMPLATE, DEEPSPEED_CPU_LINE
    from runner.wandb_logging import quiet_known_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6. Use "
                      "`is_activation_checkpointing` instead.", FutureWarning)
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", UserWarning)
        warnings.warn("some other deprecation", FutureWarning)
    assert [str(w.message) for w in caught] == ["`is_gradient_checkpointing` is deprecated and will be removed in v6.",
                                                "some other deprecation"]
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    ds = logging.getLogger("DeepSpeed")
    ds.addHandler(handler)
    try:
        ds.warning(DEEPSPEED_CPU_LINE)
        ds.warning("a real DeepSpeed warning")
    finally:
        ds.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["a real DeepSpeed warning"]
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    bnb.addHandler(handler)
    try:
        bnb.warning(BNB_CPU_KERNEL_TEMPLATE, ModuleNotFoundError("No module named 'kernels'"))
        bnb.warning("Failed to load something else: %s", "x")
    finally:
        bnb.removeHandler(handler)
    assert [r.getMessage() for r in records][1:] == ["Failed to load something else: x"]
