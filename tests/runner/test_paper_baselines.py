"""The paper's two extra LoRA baselines (Table 1): LoRA+ (B at λ × lr, PEFT's optimizer helper) and AsyLoRA (A with
orthonormal rows, B = 0), through the runner; the adapter files' inheritance; eval_steps as a list or null."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from transformers import TrainerCallback

from runner.adapters import LLAMA_PROJECTIONS, apply_adapter, random_orthonormal_rows
from runner.callbacks import EvaluateEveryCallback
from runner.errors import ConfigError
from runner.optimizers import optimizer_factory
from runner.record import load_record
from runner.run import run_experiment
from tests.conftest import TINY_RUN_OVERRIDES, compose


def _adapter(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(list(overrides)), resolve=True)["adapter"]


class _Capture(TrainerCallback):
    """Keeps the optimizer's groups and the LoRA weights as training starts."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.groups = [(group["lr"], [id(p) for p in group["params"]]) for group in optimizer.param_groups]
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
        return control


def _run(compose_run_config, *overrides):
    capture = _Capture()
    cfg = compose_run_config(*TINY_RUN_OVERRIDES, *overrides)
    summary = run_experiment(cfg, extra_callbacks=[capture])
    return cfg, load_record(summary.record_path), capture


def test_loraplus_trains_b_at_lambda_times_the_lr(compose_run_config):
    cfg, record, capture = _run(compose_run_config, "adapter=loraplus", "adapter.loraplus_lr_ratio=4", "r=4",
                                "lr=1e-3")
    assert record["adapter"] == "loraplus" and record["config"]["adapter"]["loraplus_lr_ratio"] == 4
    lr_of = {capture.names[pid]: lr for lr, ids in capture.groups for pid in ids}
    a = {n: lr for n, lr in lr_of.items() if "lora_A" in n}
    b = {n: lr for n, lr in lr_of.items() if "lora_B" in n}
    assert len(a) == len(b) == 7 * 4 and len(lr_of) == len(a) + len(b)   # 7 projections × 4 layers, nothing else
    assert sorted(set(a.values())) == pytest.approx([1e-3]) and sorted(set(b.values())) == pytest.approx([4e-3])


def test_plain_lora_keeps_the_trainers_optimizer():
    assert optimizer_factory(_adapter("adapter=lora")) is None
    assert optimizer_factory(_adapter("adapter=loraplus")) is not None


def test_asylora_starts_with_orthonormal_a_and_zero_b(compose_run_config):
    cfg, record, capture = _run(compose_run_config, "adapter=asylora", "r=8", "trainer.eval_steps=[1,3]")
    a = {n: w for n, w in capture.weights.items() if "lora_A" in n}
    b = {n: w for n, w in capture.weights.items() if "lora_B" in n}
    assert len(a) == len(b) == 7 * 4
    for name, weight in a.items():
        eye = torch.eye(weight.shape[0])
        assert torch.allclose(weight @ weight.T, eye, atol=1e-5), name
    assert all(torch.count_nonzero(w) == 0 for w in b.values())
    assert len({tuple(w[0, :4].tolist()) for w in a.values()}) == len(a)   # a fresh draw per layer
    # both train: the saved adapter's A moved away from its start and B away from 0
    from safetensors.torch import load_file

    saved = load_file(f"{record['output_dir']}/adapter/adapter_model.safetensors")
    start = {n.replace(".default", ""): w for n, w in capture.weights.items()}
    assert set(saved) == set(start)
    assert all(not torch.equal(saved[n], start[n]) for n in saved), "a LoRA matrix did not train"
    assert record["adapter"] == "asylora"
    # eval_steps as a list: evaluations at exactly steps 1 and 3 (and the final one at 4)
    assert [p["step"] for p in record["history"] if "char_acc" in p] == [1, 3, 4]


def test_asylora_rows_are_orthonormal_and_reproducible():
    torch.manual_seed(0)
    first = random_orthonormal_rows(8, 344)
    torch.manual_seed(0)
    assert torch.equal(first, random_orthonormal_rows(8, 344))
    assert first.shape == (8, 344) and torch.allclose(first @ first.T, torch.eye(8), atol=1e-5)
    with pytest.raises(ConfigError, match="r <= in_features"):
        random_orthonormal_rows(400, 344)


@pytest.mark.parametrize("changes,message", [
    ({"loraplus_lr_ratio": 0}, "loraplus_lr_ratio must be a positive number"),
    ({"lora_init": "pissa"}, "lora_init='pissa' is not one of"),
])
def test_bad_lora_extras_are_one_line_errors(changes, message):
    from runner.models import build_model, load_model_config

    base, _ = build_model(load_model_config("tiny_scratch"), seed=0)
    cfg = {**_adapter("adapter=lora"), **changes}
    with pytest.raises(ConfigError, match=message) as info:
        apply_adapter(copy.deepcopy(base), cfg, 8)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"adapter.loraplus_lr_ratio is not read by adapter 'mora'.*\(lora\)"):
        apply_adapter(copy.deepcopy(base), {**_adapter("adapter=mora"), "loraplus_lr_ratio": 2}, 8)


def test_variants_inherit_their_base_adapter_and_the_one_target_list():
    lora, mora = _adapter("adapter=lora"), _adapter("adapter=mora")
    for name, base, own in (("relora", lora, {"name", "restart"}), ("loraplus", lora, {"name", "loraplus_lr_ratio"}),
                            ("asylora", lora, {"name", "lora_init"}), ("dora", lora, {"name", "method"}),
                            ("remora", mora, {"name", "restart", "mora_type"})):
        variant = _adapter(f"adapter={name}")
        assert {k: v for k, v in variant.items() if k not in own} == {k: v for k, v in base.items() if k not in own}
    for name in ("lora", "dora", "loraplus", "asylora", "relora", "hira", "miss", "mora", "remora"):
        assert _adapter(f"adapter={name}")["target_modules"] == LLAMA_PROJECTIONS
    assert LLAMA_PROJECTIONS == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("eval_steps,due", [(None, []), (0, []), (2, [2, 4]), ([3, 5], [3, 5]),
                                            (OmegaConf.create([1]), [1])])
def test_eval_steps_every_n_a_list_or_only_at_the_end(eval_steps, due):
    callback = EvaluateEveryCallback(eval_steps)
    seen = []
    for step in range(1, 7):
        control = SimpleNamespace(should_evaluate=False)
        callback.on_step_end(None, SimpleNamespace(global_step=step, max_steps=6), control)
        if control.should_evaluate:
            seen.append(step)
    assert seen == due   # never at the last step (6): the run evaluates once more after training
