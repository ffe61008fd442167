"""ReMoRA / ReLoRA restarts: merge invariance, type cycle, optimizer reset, rejected setups, resume across a merge."""
import json
import math

import peft
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

import moRA
from moRA.restart import (BASE_WEIGHTS_FILE, STATE_FILE, RestartConfig, RestartConfigError, find_adapted_layers,
                          merge_and_reinit, reset_optimizer_state)
from runner.restart_callback import RestartCallback
from moRA.schedules import build_restart_scheduler

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FULL = ["embed_tokens", "lm_head", "norm"]  # trained in full (PEFT matches by suffix: every *norm)


def tiny_base(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def mora_model(mora_type="sharing", r=4, seed=0, modules_to_save=None):
    cfg = moRA.MoraConfig(r=r, mora_type=mora_type, target_modules=TARGETS, modules_to_save=modules_to_save)
    return peft.get_peft_model(tiny_base(seed), cfg)


def lora_model(r=4, seed=0, modules_to_save=None, **kw):
    cfg = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, modules_to_save=modules_to_save, **kw)
    return peft.get_peft_model(tiny_base(seed), cfg)


def randomise_adapters(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in find_adapted_layers(model):
            for p in layer.adapter_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------- merge invariance
@pytest.mark.parametrize("cycle,expected", [
    ([1, 2, 3, 4], ["contiguous", "contiguous_tile", "sharing_interleave", "sharing", "contiguous"]),
    (["sharing", "contiguous"], ["contiguous", "sharing", "contiguous", "sharing", "contiguous"]),
])
def test_remora_merge_keeps_logits_and_cycles_types(cycle, expected):
    model = mora_model("sharing")
    seen = []
    for i, want in enumerate(expected):
        randomise_adapters(model, seed=i)
        before = logits(model, IDS)
        assert before.abs().max() > 0
        types = merge_and_reinit(model, cycle, merge_index=i)
        after = logits(model, IDS)
        torch.testing.assert_close(after, before, atol=2e-5, rtol=1e-5)
        layers = find_adapted_layers(model)
        assert all(float(l.module.mora_M[l.adapter].detach().abs().max()) == 0.0 for l in layers)
        assert set(types.values()) == {want}
        seen.append({l.module.mora_type[l.adapter] for l in layers})   # the layers' own type, not the returned one
    assert seen == [{t} for t in expected]
    assert len(find_adapted_layers(model)) == 14


def test_remora_merge_from_rope_with_a_rope_cycle():
    model = mora_model("rope")
    randomise_adapters(model, seed=3)
    before = logits(model, IDS)
    types = merge_and_reinit(model, [6, "decouple"])
    torch.testing.assert_close(logits(model, IDS), before, atol=2e-5, rtol=1e-5)
    assert set(types.values()) == {"decouple"}


def test_relora_merge_keeps_logits_and_reinitialises_like_peft():
    model = lora_model()
    randomise_adapters(model, seed=5)
    before = logits(model, IDS)
    old_a = {l.key: l.module.lora_A[l.adapter].weight.clone() for l in find_adapted_layers(model)}
    merge_and_reinit(model, seed=7)
    torch.testing.assert_close(logits(model, IDS), before, atol=2e-5, rtol=1e-5)
    for layer in find_adapted_layers(model):
        a = layer.module.lora_A[layer.adapter].weight
        b = layer.module.lora_B[layer.adapter].weight
        assert float(b.abs().max()) == 0.0
        bound = 1 / math.sqrt(a.shape[1])  # kaiming_uniform(a=√5) on fan_in = k
        assert float(a.abs().max()) <= bound and float(a.abs().max()) > 0.5 * bound
        assert not torch.equal(a, old_a[layer.key])


# ---------------------------------------------------------------------------------------------- optimizer reset
def _trained_optimizer(model, steps=2):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(steps):
        randomise_adapters(model, seed=11)  # non-zero adapters so every adapter parameter gets a gradient
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


@pytest.mark.parametrize("build", [mora_model, lora_model])
def test_full_reset_clears_adapter_moments_and_keeps_full_trained_state(build):
    model = build(modules_to_save=FULL)
    opt = _trained_optimizer(model)
    layers = find_adapted_layers(model)
    adapter_params = [p for l in layers for p in l.adapter_parameters()]
    ids = {id(p) for p in adapter_params}
    full = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    assert len(full) >= 5  # embeddings, head, norms
    kept = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in full}
    assert all(float(opt.state[p]["exp_avg_sq"].abs().max()) > 0 for p in adapter_params)
    n = reset_optimizer_state(opt, adapter_params, "full")
    assert n == len(adapter_params)
    for p in adapter_params:
        assert float(opt.state[p]["exp_avg"].abs().max()) == 0.0
        assert float(opt.state[p]["exp_avg_sq"].abs().max()) == 0.0
        assert float(opt.state[p]["step"]) == 0.0
    for p in full:
        for k, v in kept[id(p)].items():
            assert torch.equal(opt.state[p][k], v)


@pytest.mark.parametrize("mode,ratio", [("random", 0.6), ("magnitude", 0.9)])
def test_pruning_reset_zeroes_the_requested_fraction_in_both_moments_together(mode, ratio):
    model = lora_model(r=8)
    opt = _trained_optimizer(model)
    params = [p for l in find_adapted_layers(model) for p in l.adapter_parameters()]
    before = {id(p): {k: opt.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq")} for p in params}
    reset_optimizer_state(opt, params, mode, ratio, seed=3)
    total = sum(p.numel() for p in params)
    zero = sum(int((opt.state[p]["exp_avg"] == 0).sum()) for p in params)
    assert abs(zero / total - ratio) < 0.03
    for p in params:
        m, v = opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]
        kept = m != 0
        # an entry is pruned in both moments or in neither: no momentum left without its second moment
        assert torch.equal(v != 0, kept)
        for key, now in (("exp_avg", m), ("exp_avg_sq", v)):
            assert torch.equal(now[kept], before[id(p)][key][kept])  # survivors untouched
        assert float(opt.state[p]["step"]) > 0  # pruning keeps Adam's step count
        if mode == "magnitude" and kept.any() and (~kept).any():
            old = before[id(p)]["exp_avg"]
            assert float(old[~kept].abs().max()) <= float(old[kept].abs().min())


class _Wrapper:
    """Like accelerate's / DeepSpeed's optimizer wrappers: the real optimizer sits in ``.optimizer``."""

    def __init__(self, optimizer):
        self.optimizer = optimizer


def test_callback_restart_goes_through_optimizer_wrappers():
    model = mora_model(modules_to_save=FULL)
    opt = _trained_optimizer(model)
    cb = RestartCallback(RestartConfig(merge_every=2, type_cycle=(1, 2)), model)
    cb.restart(_Wrapper(_Wrapper(opt)))
    assert cb.merges_done == 1
    assert all(float(opt.state[p]["exp_avg"].abs().max()) == 0 for p in cb.adapter_parameters())


# ---------------------------------------------------------------------------------------------- rejected setups
@pytest.mark.parametrize("build,restart,match", [
    (lambda: mora_model("rope"), dict(type_cycle=[1, 2, 3, 4]), "starts with MoRA type 'rope'"),
    (lambda: mora_model("sharing", r=3), dict(type_cycle=["sharing", "rope"]), "needs an even r̂"),
    (lambda: lora_model(), dict(type_cycle=[1, 2]), "applies to MoRA only"),
    (lambda: mora_model(), dict(type_cycle=["auto", 2]), "cannot contain 'auto'"),
    (lambda: mora_model(), dict(type_cycle=[1, 5]), "unknown MoRA type 5"),
    (lambda: mora_model(), dict(type_cycle=[1, 2, 1]), "repeats a type"),
    (lambda: lora_model(use_dora=True), dict(), "uses DoRA"),
    (lambda: tiny_base(), dict(), "has none"),
])
def test_rejected_setups(build, restart, match):
    with pytest.raises(RestartConfigError, match=match):
        RestartCallback(RestartConfig(merge_every=10, **restart), build())


@pytest.mark.parametrize("options,match", [
    (dict(merge_every=0), "merge_every=0"),
    (dict(merge_every=5, optimizer_reset="prune"), "optimizer_reset='prune'"),
    (dict(merge_every=5, optimizer_reset="random", reset_ratio=0.0), "reset_ratio=0.0"),
    (dict(merge_every=5, schedule="linear"), "schedule='linear'"),
    (dict(merge_every=5, every=3), "unknown restart option"),
])
def test_rejected_options(options, match):
    with pytest.raises(RestartConfigError, match=match):
        RestartConfig.from_mapping(options)


# ---------------------------------------------------------------------------------------------- resume
class _ScheduledTrainer(Trainer):
    """The Trainer with the restart schedule (what the runner does with restart_components' scheduler_factory)."""

    restart_config: RestartConfig = None

    def create_scheduler(self, num_training_steps, optimizer=None):
        if self.lr_scheduler is None:
            rc = self.restart_config
            self.lr_scheduler = build_restart_scheduler(
                rc.schedule, optimizer or self.optimizer, num_training_steps=num_training_steps,
                warmup_steps=self.args.warmup_steps, merge_every=rc.merge_every, restart_warmup=rc.restart_warmup,
                min_lr_ratio=rc.min_lr_ratio)
        return self.lr_scheduler


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n=48, length=16):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _train(build, rc, out, resume=None, max_steps=12):
    model = build(seed=0, modules_to_save=FULL)
    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4,
                             learning_rate=5e-3, warmup_steps=2, save_steps=4, save_strategy="steps",
                             logging_steps=100, report_to=[], seed=0, use_cpu=True, disable_tqdm=True,
                             save_only_model=False, dataloader_num_workers=0)
    cb = RestartCallback(rc, model, resume_from_checkpoint=resume)
    trainer = _ScheduledTrainer(model=model, args=args, train_dataset=_Rows(), callbacks=[cb])
    trainer.restart_config = rc
    trainer.train(resume_from_checkpoint=resume)
    return model, cb


@pytest.mark.parametrize("build,rc", [
    (mora_model, RestartConfig(merge_every=4, type_cycle=(1, 2, 3, 4), restart_warmup=1)),
    (lora_model, RestartConfig(merge_every=4, optimizer_reset="magnitude", reset_ratio=0.9,
                               schedule="cosine_restarts", restart_warmup=1)),
])
def test_resume_right_after_a_merge_matches_uninterrupted_run(tmp_path, build, rc):
    full_model, full_cb = _train(build, rc, tmp_path / "full")
    assert full_cb.merges_done == 2  # steps 4 and 8 (none at the last step)
    ckpt = tmp_path / "full" / "checkpoint-8"  # written right after the merge at step 8
    saved = json.loads((ckpt / STATE_FILE).read_text())
    assert saved["merges_done"] == 2 and (ckpt / BASE_WEIGHTS_FILE).is_file()
    if build is mora_model:
        assert set(saved["layer_types"].values()) == {"contiguous_tile"}
    resumed_model, resumed_cb = _train(build, rc, tmp_path / "resumed", resume=str(ckpt))
    assert resumed_cb.merges_done == 2
    if build is mora_model:
        assert {l.module.mora_type[l.adapter] for l in find_adapted_layers(resumed_model)} == {"contiguous_tile"}
    torch.testing.assert_close(logits(resumed_model, IDS), logits(full_model, IDS), atol=1e-5, rtol=1e-5)
    # and the merges really changed the base weights (the check above is not vacuous)
    fresh = build(seed=0)
    w0 = find_adapted_layers(fresh)[0].base_weight
    assert not torch.allclose(find_adapted_layers(resumed_model)[0].base_weight, w0)


# ---------------------------------------------------------------------------------------------- wiring (train.py)
_FIXTURE_TEXTS = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "pretrain" / "texts"
_RUN = ["experiment=cpu/pretrain", "r=4", "task.corpus=local", f"task.data_files=[{_FIXTURE_TEXTS}]",
        "task.seq_len=32", "task.eval_lengths=[16]", "task.val_fraction=0.2", "logger=none"]


@pytest.mark.parametrize("overrides,error,match", [
    (["adapter=remora", "adapter.mora_type=rope"], RestartConfigError, "starts with MoRA type 'rope'"),
    (["adapter=relora", "trainer.max_steps=250"], ValueError, "multiple of merge_every=100"),
    (["adapter=relora", "adapter.restart.optimizer_reset=prune"], RestartConfigError, "optimizer_reset='prune'"),
    (["adapter=remora", "adapter.restart.type_cycle=[1,2,6]"], RestartConfigError, "needs an even r̂"),
])
def test_run_rejects_an_impossible_restart_setup_before_training(compose_run_config, tmp_path, overrides, error,
                                                                 match):
    from runner.run import run_experiment

    with pytest.raises(error, match=match) as excinfo:
        run_experiment(compose_run_config(*_RUN, *overrides))
    assert "\n" not in str(excinfo.value)  # train.py prints it as one line
    assert not list((tmp_path / "outputs").rglob("checkpoint-*"))
