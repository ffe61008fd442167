"""``runner.preflight``: what is knowable before training fails before training, in one line naming the value or the
file — a folder that cannot be written, binary data, a corrupt safetensors file, a broken ``trainer_state.json``, a
W&B online run without a key, an adapter too large for memory, a full disk."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from torch import nn

from runner.errors import ConfigError, ResumeError, user_error_message
from runner.preflight import (adapter_parameter_count, check_adapter_fits, check_run, check_writable,
                              disk_full_message, trainer_state_problem)
from tests.conftest import REPO_ROOT, TINY_RUN_OVERRIDES


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------------------------------- folders
def test_a_folder_that_cannot_be_written_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=f"results_dir={blocker}/runs cannot be a folder: {blocker} is a file"):
        check_writable(blocker / "runs", "results_dir")
    with pytest.raises(ConfigError, match=f"output_dir={blocker} cannot be a folder"):
        check_writable(blocker, "output_dir")
    with pytest.raises(ConfigError, match="output_dir=/proc/mora_run cannot be written"):
        check_writable("/proc/mora_run", "output_dir")
    check_writable(tmp_path / "new" / "deeper", "output_dir")  # creatable: fine, and nothing is left behind
    assert _listing(tmp_path) == ["a_file"]


def test_check_run_catches_the_late_errors_before_anything_is_written(compose_run_config, tmp_path):
    """The errors that used to surface after Hydra made the run folder (or after training) fail in check_run."""
    cases = {
        "adapter.mora_type=7": "adapter.mora_type=7: unknown mora_type 7",
        "trainer.batch_size=0": "trainer.batch_size must be a positive integer, got 0",
        "trainer.micro_batch_size=0": "trainer.micro_batch_size must be a positive integer, got 0",
        "results_dir=/proc/mora_results": "results_dir=/proc/mora_results cannot be written",
    }
    for override, expected in cases.items():
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
            check_run(compose_run_config(*TINY_RUN_OVERRIDES, override))
    assert not tmp_path.joinpath("outputs").exists() and not tmp_path.joinpath("results").exists()
    values = check_run(compose_run_config(*TINY_RUN_OVERRIDES))
    assert values["method"] == "mora" and values["batch_plan"].accumulation == 1


# --------------------------------------------------------------------------------------------------------- files
def test_binary_data_file_is_named(compose_run_config, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_bytes(b'{"key": "a", "value": "b"}\n\x00\x01\x02\xff\xfe')
    with pytest.raises(ConfigError, match=f"task.data_path: {data} is binary, not UTF-8 text"):
        check_run(compose_run_config(*TINY_RUN_OVERRIDES, f"task.data_path={data}"))


def test_corrupt_model_safetensors_is_named(compose_run_config, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(REPO_ROOT / "assets" / "tiny_base", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.raises(ConfigError, match=f"model.path: {weights} is not a valid safetensors file"):
        check_run(compose_run_config(*TINY_RUN_OVERRIDES, f"model.path={model}"))
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")  # garbage header
    with pytest.raises(ConfigError, match=f"model.path: {weights} is not a valid safetensors file"):
        check_run(compose_run_config(*TINY_RUN_OVERRIDES, f"model.path={model}"))


def test_broken_trainer_state_of_the_checkpoint_to_resume_is_named(compose_run_config):
    from runner.checkpoints import write_marker
    from runner.identity import config_hash

    cfg = compose_run_config(*TINY_RUN_OVERRIDES, "resume=true")
    checkpoint = Path(str(cfg.output_dir)) / "checkpoint-2"
    state = checkpoint / "trainer_state.json"
    checkpoint.mkdir(parents=True)
    state.write_text(json.dumps({"global_step": 2, "log_history": []}))
    write_marker(checkpoint, config_hash(cfg))
    check_run(cfg)  # a complete checkpoint of this config: resumable
    state.write_text('{"global_step": 2, "log_hist')  # cut mid-write
    with pytest.raises(ResumeError, match="checkpoint-2: trainer_state.json has .* bytes"):
        check_run(cfg)
    state.write_text('{"global_step": 2, "log_history": [}}')  # as long as when saved, still not JSON
    with pytest.raises(ResumeError, match=r"checkpoint-2: trainer_state.json is unreadable \(JSONDecodeError\)"):
        check_run(cfg)
    assert "not valid JSON" in trainer_state_problem(checkpoint)


def test_wandb_online_without_an_api_key_fails_before_training(compose_run_config, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    with pytest.raises(ConfigError, match="logger=wandb_online needs a W&B API key"):
        check_run(compose_run_config(*TINY_RUN_OVERRIDES, "logger=wandb_online"))
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    check_run(compose_run_config(*TINY_RUN_OVERRIDES, "logger=wandb_online"))


# ---------------------------------------------------------------------------------------------- adapter's size
class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.down_proj = nn.Linear(128, 128, bias=False), nn.Linear(344, 128, bias=False)


def test_adapter_too_large_is_refused_with_its_size_before_allocation():
    model = _Block()
    assert adapter_parameter_count(model, {"name": "lora"}, 8, "lora") == (256 + 472) * 8
    assert adapter_parameter_count(model, {"name": "mora", "mora_type": "sharing"}, 8, "mora") == 45 ** 2 + 61 ** 2
    n = adapter_parameter_count(model, {"name": "mora", "mora_type": "sharing"}, 100000, "mora")
    with pytest.raises(ConfigError, match=r"adapter mora at r=100000 would train 72,\d{3},\d{3} parameters "
                                          r"\(1\.2 GB with gradients and Adam states\) but only 1\.0 GB"):
        check_adapter_fits(model, {"name": "mora", "mora_type": "sharing"}, 100000, "mora", available=10 ** 9)
    assert check_adapter_fits(model, {"name": "mora"}, 8, "mora", available=10 ** 9) < n


def test_the_runner_checks_the_size_before_putting_the_adapter_on(compose_run_config, monkeypatch, tmp_path):
    import runner.adapters
    import runner.preflight
    from runner.run import run_experiment

    monkeypatch.setattr(runner.preflight, "available_memory_bytes", lambda: 10 ** 9)
    monkeypatch.setattr(runner.adapters, "apply_adapter", lambda *a, **k: pytest.fail("adapter was allocated"))
    with pytest.raises(ConfigError, match=r"would train 976,\d{3},\d{3} parameters \(15\.6 GB"):
        run_experiment(compose_run_config(*TINY_RUN_OVERRIDES, "r=100000"))
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------------------ full disk
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """Python's writers (records, JSON) raise OSError ENOSPC with the file; torch's checkpoint writer only says its
    write failed (the message below is what torch.save onto /dev/full gives), so that counts as a full disk when the
    run's folder has (almost) no free space."""
    import runner.preflight

    named = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results" / "run.json"))
    assert user_error_message(named).startswith(f"no space left on device writing {tmp_path}/results/run.json")
    wrapped = RuntimeError("saving checkpoint-2 failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device", "optimizer.pt")
    assert disk_full_message(wrapped).startswith("no space left on device writing optimizer.pt")

    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    out = tmp_path / "out"
    assert disk_full_message(torch_error, [out]) is None  # this disk has room: not a full disk
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(runner.preflight.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    assert user_error_message(torch_error, [out]).startswith(f"no space left on device writing into {out} "
                                                             f"(4096 bytes free")
    assert disk_full_message(ValueError("r must be positive"), [out]) is None


@pytest.mark.parametrize("given", [False, True])
def test_the_config_is_validated_once_per_run(compose_run_config, monkeypatch, given):
    """run_experiment validates once and hands the values to setup; with check_run's values, not at all."""
    import runner.run as run_module

    calls, seen = [], []
    real = run_module.validate_config
    monkeypatch.setattr(run_module, "validate_config", lambda cfg: calls.append(1) or real(cfg))

    def stop_in_setup(cfg, extra_callbacks=(), start=None, values=None):
        seen.append(values)
        raise RuntimeError("stop before building the model")

    monkeypatch.setattr(run_module, "setup", stop_in_setup)
    cfg = compose_run_config(*TINY_RUN_OVERRIDES)
    values = check_run(cfg) if given else None
    calls.clear()
    with pytest.raises(RuntimeError, match="stop before building"):
        run_module.run_experiment(cfg, values=values)
    assert len(calls) == (0 if given else 1)
    assert seen[0]["r"] == cfg.r


def test_a_restart_block_on_a_plain_adapter_is_refused(compose_run_config):
    """`adapter=lora` with an adapter.restart block would train ReLoRA and record it as LoRA."""
    with pytest.raises(ConfigError, match=r"adapter 'lora' has an adapter.restart block \(merge_every\).*adapter=relora"):
        check_run(compose_run_config(*TINY_RUN_OVERRIDES, "adapter=lora", "+adapter.restart.merge_every=400"))
    values = check_run(compose_run_config(*TINY_RUN_OVERRIDES, "adapter=relora", "+restart_every=50"))
    assert values["method"] == "lora"


@pytest.mark.parametrize("override, message", [
    # a typo of a key would otherwise be dropped and the run trained with the default
    ("+adapter.mora_typ=rope", r"unknown adapter setting adapter.mora_typ.*did you mean adapter.mora_type\?"),
    ("+adapter.dropuot=0.1", r"unknown adapter setting adapter.dropuot.*did you mean adapter.dropout\?"),
])
def test_an_unknown_adapter_key_is_refused(compose_run_config, override, message):
    with pytest.raises(ConfigError, match=message):
        check_run(compose_run_config(*TINY_RUN_OVERRIDES, "adapter=mora", override))


@pytest.mark.parametrize("adapter, override, owners", [
    ("lora", "+adapter.mora_type=rope", "mora"),     # LoRA does not read a MoRA type
    ("mora", "+adapter.alpha=16", "lora, dora"),     # MoRA has no scaling
    ("hira", "+adapter.mora_type=sharing", "mora"),
])
def test_a_key_of_another_adapter_is_refused(compose_run_config, adapter, override, owners):
    key = override.split("=")[0].lstrip("+")
    with pytest.raises(ConfigError, match=rf"{key} is not read by adapter '{adapter}'.*\({owners}\)"):
        check_run(compose_run_config(*TINY_RUN_OVERRIDES, f"adapter={adapter}", override))


@pytest.mark.parametrize("adapter", ["fft", "lora", "loraplus", "asylora", "dora", "hira", "miss", "mora", "relora",
                                     "remora"])
def test_every_adapter_file_passes_the_key_check(compose_run_config, adapter):
    assert check_run(compose_run_config(*TINY_RUN_OVERRIDES, f"adapter={adapter}"))["method"]


def test_a_sweep_file_lists_the_keys_its_other_adapters_do_not_read(compose_run_config):
    """cpu/pretrain_long sets adapter.mora_type once for MoRA/ReMoRA and sweeps LoRA/ReLoRA too: allowed because the
    file lists it in shared_adapter_keys, refused without that list, and the list does not change the run's hash."""
    from runner.identity import config_hash

    listed = compose_run_config("experiment=cpu/pretrain_long", "adapter=lora")
    assert check_run(listed)["method"] == "lora"
    unlisted = compose_run_config("experiment=cpu/pretrain_long", "adapter=lora", "shared_adapter_keys=[]")
    with pytest.raises(ConfigError, match=r"adapter.mora_type is not read by adapter 'lora'.*shared_adapter_keys"):
        check_run(unlisted)
    assert config_hash(listed) == config_hash(unlisted)
    with pytest.raises(ConfigError, match=r"shared_adapter_keys lists 'mora_typo', which no adapter reads"):
        check_run(compose_run_config("experiment=cpu/pretrain_long", "adapter=lora", "shared_adapter_keys=[mora_typo]"))
