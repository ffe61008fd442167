"""The CPU reproduction sweep files compose with Hydra, hold the intended grids, match trainable parameters, and
results_lib.cpu_sweeps plans their phases from records."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from results_lib.cpu_sweeps import best_settings, load_sweep, missing_points
from results_lib.records import parse_record
from tests.fixtures.records.make_fixture_records import minimal_record
from tests.results._paths import ROOT

CPU_DIR = ROOT / "configs" / "experiment" / "cpu"
FILES = sorted(p.stem for pattern in ("uuid_*.yaml", "ablation_*.yaml") for p in CPU_DIR.glob(pattern))
EXPECTED = {  # file -> (adapter, fixed r or None, sweeper grid)
    "uuid_fft": ("fft", None, {"lr": "3e-4,1e-3,3e-3"}),
    "uuid_lora": ("lora", None, {"r": "8,64", "lr": "1e-3,3e-3,1e-2"}),
    "uuid_mora": ("mora", None, {"r": "8,64", "lr": "1e-3,3e-3,1e-2"}),
    "uuid_dora": ("dora", 7, {"lr": "1e-3,3e-3,1e-2"}),
    "uuid_hira": ("hira", 8, {"lr": "1e-3,3e-3,1e-2"}),
    "uuid_miss": ("miss", 15, {"lr": "1e-3,3e-3,1e-2"}),
    "uuid_loraplus": ("loraplus", None, {"r": "8,64", "lr": "1e-3,3e-3,1e-2"}),
    "uuid_asylora": ("asylora", None, {"r": "8,64", "lr": "1e-3,3e-3,1e-2"}),
    "ablation_mora_types": ("mora", 8, {"adapter.mora_type": "sharing,contiguous,contiguous_tile,sharing_interleave,"
                                                              "truncation,decouple", "lr": "1e-3,3e-3,1e-2"}),
}


@pytest.fixture(scope="module")
def composer():
    import runner.config  # noqa: F401  (registers the run_id resolver)

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        yield lambda overrides, hydra=True: compose(config_name="config", overrides=overrides,
                                                    return_hydra_config=hydra)


def test_every_cpu_file_is_known():
    assert FILES == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cpu_sweep_file_composes(composer, name):
    adapter, r, grid = EXPECTED[name]
    cfg = composer([f"experiment=cpu/{name}"])
    assert (cfg.model.name, cfg.task.name, cfg.trainer.name, cfg.adapter.name) == ("tiny", "uuid", "cpu", adapter)
    assert cfg.seed == 0 and cfg.sweep == ("cpu_ablation" if name.startswith("ablation") else "cpu_uuid")
    assert dict(cfg.hydra.sweeper.params) == grid
    if r is not None:
        assert cfg.r == r
    # grid points (the first and the last) compose and resolve as phase-2 command lines would (run_id included)
    _, points = load_sweep(f"cpu/{name}")
    for point in (points[0], points[-1]):
        overrides = [f"experiment=cpu/{name}"] + [f"{k}={v}" for k, v in point.items()] + ["seed=1"]
        resolved = OmegaConf.to_container(composer(overrides, hydra=False), resolve=True)
        assert resolved["lr"] == pytest.approx(float(point["lr"])) and resolved["seed"] == 1
        assert resolved["run_id"]


def test_matched_trainable_parameters():
    """DoRA, HiRA and MiSS get within 10 % of LoRA r = 8's trainable parameters on the tiny architecture."""
    import peft
    import torch
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    import moRA

    arch = yaml.safe_load((ROOT / "configs" / "model" / "tiny_scratch.yaml").read_text())["architecture"]
    arch = {k: v for k, v in arch.items() if v is not None and k != "model_type"}
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    torch.manual_seed(0)

    def trainable(config):
        model = peft.get_peft_model(LlamaForCausalLM(LlamaConfig(vocab_size=259, **arch)), config)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    lora = trainable(peft.LoraConfig(r=8, target_modules=targets))
    counts = {"mora": trainable(moRA.MoraConfig(r=8, target_modules=targets)),
              "dora": trainable(peft.LoraConfig(r=EXPECTED["uuid_dora"][1], target_modules=targets, use_dora=True)),
              "hira": trainable(peft.HiraConfig(r=EXPECTED["uuid_hira"][1], target_modules=targets)),
              "miss": trainable(peft.MissConfig(r=EXPECTED["uuid_miss"][1], target_modules=targets))}
    assert lora == 78_080  # the count the sweep files quote
    for name, count in counts.items():
        assert abs(count - lora) / lora < 0.10, (name, count, lora)


def _rec(run_id, lr, seed, acc, r=8, mora_type=None, experiment="cpu/uuid_lora", adapter="lora", model="tiny"):
    return parse_record(minimal_record(run_id=run_id, adapter=adapter, r=r, mora_type=mora_type, model=model,
                                       seed=seed, lr=lr, experiment=experiment,
                                       final={"char_acc": acc, "train_loss": 1.0}), run_id)


def test_missing_and_best_lr_planning():
    records = [_rec("a", 1e-3, 0, 0.4), _rec("b", 3e-3, 0, 0.6), _rec("c", 1e-2, 0, 0.5),
               _rec("d", 3e-3, 1, 0.1), _rec("e", 1e-3, 0, 0.9, r=64),
               _rec("f", 3e-3, 0, 0.99, experiment="cpu/other"),  # other experiments do not count
               _rec("g", 3e-3, 0, 0.99, r=64, model="tiny_scratch")]  # nor the file run on another model
    missing = missing_points("cpu/uuid_lora", records)
    assert missing == [{"r": 64, "lr": 3e-3, "seed": 0}, {"r": 64, "lr": 1e-2, "seed": 0}]
    best = {tuple(m.items()): lr for m, lr, _ in best_settings("cpu/uuid_lora", records)}
    assert best == {(("r", 8),): 3e-3, (("r", 64),): 1e-3}  # seed 1's poor run does not move the choice
    assert len(missing_points("cpu/uuid_lora", records, seeds=[1, 2])) == 12 - 1


def test_ablation_grid_matches_records_by_canonical_type():
    records = [_rec("s", 1e-3, 0, 0.5, mora_type="sharing", experiment="cpu/ablation_mora_types", adapter="mora")]
    missing = missing_points("cpu/ablation_mora_types", records)
    assert len(missing) == 17 and {"adapter.mora_type": "sharing", "lr": 1e-3, "seed": 0} not in missing


def test_pretrain_sweep_grid_composes_for_every_adapter(composer):
    cfg = composer(["experiment=cpu/pretrain"])
    assert dict(cfg.hydra.sweeper.params) == {"adapter": "lora,mora,relora,remora", "lr": "1e-3,3e-3,1e-2"}
    assert (cfg.model.name, cfg.task.name, cfg.sweep, cfg.r, cfg.seed) == ("tiny_scratch", "pretrain", "cpu_pretrain", 16, 42)
    _, points = load_sweep("cpu/pretrain")
    assert len(points) == 12
    for point in points:
        overrides = ["experiment=cpu/pretrain"] + [f"{k}={v}" for k, v in point.items()]
        resolved = OmegaConf.to_container(composer(overrides, hydra=False), resolve=True)
        adapter = resolved["adapter"]
        assert adapter["name"] == point["adapter"] and resolved["lr"] == pytest.approx(float(point["lr"]))
        assert adapter["modules_to_save"] == ["embed_tokens", "lm_head", "norm"]
        # MoRA and ReMoRA use the sharing type (the paper's type at pretraining ranks); run ids stay distinct
        if point["adapter"] in ("mora", "remora"):
            assert adapter["mora_type"] == "sharing" and "-sharing-" in resolved["run_id"]
        else:
            assert "sharing" not in resolved["run_id"]
        if point["adapter"] in ("relora", "remora"):
            assert adapter["restart"]["merge_every"] == 100


@pytest.mark.parametrize("name, steps, merge_every, warmup", [("pretrain_long", 2000, 400, 200),
                                                              ("pretrain_short", 500, 100, 50)])
def test_pretrain_length_files_follow_the_paper_shape(composer, name, steps, merge_every, warmup):
    """The two training lengths of the pretraining claim: r ≈ d / 6, sharing MoRA, ReMoRA's two kinds, merges at
    1/5 of training (the paper's 2k of 10k), one shared lr grid reaching below the 300-step optimum."""
    cfg = composer([f"experiment=cpu/{name}"])
    assert dict(cfg.hydra.sweeper.params) == {"adapter": "lora,mora,relora,remora", "lr": "5e-4,1e-3,2e-3,4e-3,8e-3"}
    assert (cfg.seed, cfg.r, cfg.model.architecture.hidden_size, cfg.model.architecture.num_hidden_layers) == (42, 21, 128, 2)
    assert (cfg.trainer.max_steps, cfg.trainer.warmup_steps) == (steps, warmup)
    assert cfg.sweep == f"cpu_{name}"
    for adapter in ("lora", "mora", "relora", "remora"):
        resolved = OmegaConf.to_container(composer([f"experiment=cpu/{name}", f"adapter={adapter}"], hydra=False),
                                          resolve=True)["adapter"]
        if adapter in ("mora", "remora"):
            assert resolved["mora_type"] == "sharing"
        if adapter == "remora":
            assert resolved["restart"]["type_cycle"] == ["sharing", "contiguous"]  # Appendix B's two kinds
        if adapter == "relora":
            assert resolved["restart"]["type_cycle"] is None
        if adapter in ("relora", "remora"):
            assert resolved["restart"]["merge_every"] == merge_every and steps % merge_every == 0
        else:  # plain LoRA / MoRA never restart (a restart block would make them ReLoRA / ReMoRA under their name)
            assert "restart" not in resolved


def test_an_including_file_plans_with_the_included_seed_and_model():
    """cpu/pretrain_short includes cpu/pretrain_long: its selection seed (42) and model come from there."""
    base, grid = load_sweep("cpu/pretrain_short")
    assert (base["seed"], base["r"], base["model"], base["task"]) == (42, 21, "tiny_scratch", "pretrain")
    assert len(grid) == 20  # 4 adapters × 5 lrs
