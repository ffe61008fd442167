"""Every shipped config composes and resolves: each option of each group, and each experiment file."""
from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf, open_dict

from runner.run import validate_config
from runner.validation import adapter_method
from tests.conftest import CONFIG_DIR, compose

GROUPS = ("model", "adapter", "task", "trainer", "logger")


def _options(group: str) -> list[str]:
    folder = CONFIG_DIR / group
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


GROUP_OPTIONS = [(g, o) for g in GROUPS for o in _options(g)]
EXPERIMENTS = _options("experiment")


def _resolved(cfg) -> dict:
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["run_id"] and "${" not in plain["run_id"]
    return plain


def test_default_config_is_the_offline_cpu_run():
    cfg = _resolved(compose([]))
    assert (cfg["model"]["name"], cfg["adapter"]["name"], cfg["task"]["name"]) == ("tiny", "mora", "uuid")
    assert cfg["trainer"]["deepspeed"] == "none" and cfg["logger"]["mode"] == "offline"
    assert cfg["resume"] is False and cfg["results_dir"] == cfg["output_dir"]  # a user's run: its own folder
    assert cfg["lr"] == cfg["adapter"]["lr"] == cfg["trainer"]["learning_rate"]


def test_top_level_r_drives_the_adapter_and_the_run_id():
    cfg = _resolved(compose(["task=uuid", "adapter=mora", "r=256"]))
    assert cfg["adapter"]["r"] == 256
    hashed = r"-[0-9a-f]{8}"  # + the config hash (runner/identity.py)
    assert re.fullmatch("uuid-tiny-mora-r256-sharing-lr3e-3-s42" + hashed, cfg["run_id"])
    assert cfg["output_dir"] == f"outputs/{cfg['run_id']}"
    assert re.fullmatch("uuid-tiny-mora-r8-rope-lr3e-3-s42" + hashed,
                        _resolved(compose(["adapter=mora", "r=8"]))["run_id"])
    assert re.fullmatch("uuid-tiny-fft-lr2e-4-s3" + hashed,
                        _resolved(compose(["adapter=fft", "r=8", "lr=2e-4", "seed=3"]))["run_id"])
    assert _resolved(compose(["run_id=mine"]))["output_dir"] == "outputs/mine"


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_group_option_composes(group, option):
    cfg = _resolved(compose([f"{group}={option}"]))
    assert cfg[group]["name"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment):
    cfg = compose([f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.hydra.runtime.choices.experiment == experiment
    with open_dict(cfg):
        del cfg["hydra"]
    plain = _resolved(cfg)
    assert plain["task"]["name"] and plain["adapter"]["name"] and plain["model"]["name"]
    # the run checks too (adapter keys its method reads, trainer settings, r / lr / seed)
    assert validate_config(cfg)["method"] == adapter_method(cfg.adapter)


@pytest.mark.parametrize("name", ["fft", "lora_r8", "lora_r256", "mora_r8", "mora_r256"])
def test_paper_uuid_experiments_hold_the_paper_setup(name):
    cfg = _resolved(compose([f"experiment=paper/uuid_{name}"]))
    assert cfg["model"]["name"] == "llama2_7b" and cfg["task"]["n_pairs"] == 10_000
    trainer = cfg["trainer"]
    assert (trainer["epochs"], trainer["batch_size"], trainer["warmup_steps"]) == (100, 1000, 100)
    assert cfg["lr"] == trainer["learning_rate"] == {"fft": 3e-5, "lora": 1e-4, "mora": 5e-5}[name.split("_")[0]]
    assert (trainer["deepspeed"], trainer["precision"]) == ("zero2", "bf16")
    if name != "fft":
        assert cfg["adapter"]["r"] == int(name.rsplit("_r", 1)[1])
        assert cfg["adapter"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"]


def test_deepspeed_files_hold_the_paper_zero2_settings():
    import json

    zero2 = json.loads((CONFIG_DIR / "deepspeed" / "zero2.json").read_text())
    z = zero2["zero_optimization"]
    assert z["stage"] == 2 and z["overlap_comm"] and z["contiguous_gradients"]
    assert z["allgather_bucket_size"] == z["reduce_bucket_size"] == 2e8
    assert zero2["train_micro_batch_size_per_gpu"] == zero2["gradient_clipping"] == "auto"
    assert json.loads((CONFIG_DIR / "deepspeed" / "zero3.json").read_text())["zero_optimization"]["stage"] == 3
