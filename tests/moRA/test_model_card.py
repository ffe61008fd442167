"""A saved MoRA adapter explains itself: README.md (what MoRA is, type and r̂ per layer shape, parameter counts
against LoRA's, how to load it, the base's hub id and never a local path, the run's id and metrics) and a note in
adapter_config.json; loading without ``import moRA`` is the one failure PEFT gives, and the card says how to avoid it."""
import json
import os
import subprocess
import sys
from pathlib import Path

from moRA import MoraLayer
from moRA.model_card import MARKER, describe_base, layer_table
from tests.moRA.test_peft_integration import REPO, mora_model


def test_save_pretrained_writes_the_card_with_every_layer_shape(tmp_path):
    model = mora_model("rope", 4)
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\n") and MARKER in card
    assert "[MoRA](https://arxiv.org/abs/2405.12130)" in card and "import moRA" in card
    assert "KeyError: 'MORA'" in card and "mora-lm-eval --model hf" in card
    shapes = {(m.out_features, m.in_features, m.mora_rank["default"]) for m in model.modules()
              if isinstance(m, MoraLayer)}
    for d, k, r_hat in shapes:
        assert f"| {d} × {k} |" in card and f"| rope | {r_hat} | {r_hat * r_hat:,} | {(d + k) * 4:,} |" in card
    total = sum(p.numel() for n, p in model.named_parameters() if "mora_M" in n)
    assert f"Trainable MoRA parameters: {total:,} (LoRA at r = 4 on the same layers: 4,288)" in card
    assert "`rope` (official type 6)" in card


def test_layer_table_groups_layers_by_shape():
    rows = layer_table(mora_model("sharing", 4), "default")
    assert sum(row["layers"] for row in rows) == 14
    assert {(row["d"], row["k"]) for row in rows} == {(16, 32), (32, 32), (32, 72), (72, 32)}


def test_the_base_is_named_by_hub_id_and_never_by_a_local_path(tmp_path):
    assert describe_base("meta-llama/Llama-2-7b-hf") == ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf")
    assert describe_base(str(tmp_path / "my_base")) == (None, "local: my_base")
    assert describe_base("assets/tiny_base" if (REPO / "assets/tiny_base").exists() else "./tiny_base")[0] is None
    model = mora_model("sharing", 4)
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "checkpoints" / "base_7b")
    model.save_pretrained(tmp_path / "adapter")
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert str(tmp_path) not in card and "# MoRA adapter for local: base_7b" in card
    assert "base_model:" not in card.split("---")[1]  # no front-matter base_model for a local base
    model.peft_config["default"].base_model_name_or_path = "meta-llama/Llama-2-7b-hf"
    model.save_pretrained(tmp_path / "hub")
    card = (tmp_path / "hub" / "README.md").read_text()
    assert 'base_model: "meta-llama/Llama-2-7b-hf"' in card
    assert 'AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")' in card


def test_a_readme_written_by_someone_else_is_kept(tmp_path):
    (tmp_path / "README.md").write_text("# my own notes\n")
    mora_model("sharing", 4).save_pretrained(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "# my own notes" in text and MARKER not in text  # (PEFT adds its metadata, as it does for LoRA)


def test_runner_save_records_base_run_id_and_metrics(tmp_path):
    from runner.adapters import save_trained

    model = mora_model("rope", 4)
    folder = Path(save_trained(model, None, tmp_path, "mora", base_model="assets/tiny_base",
                               run_id="uuid-tiny-mora-r4-rope-lr3e-3-s0",
                               metrics={"char_acc": 0.25, "train_loss": 1.5}))
    card = (folder / "README.md").read_text()
    assert "# MoRA adapter for local: tiny_base" in card and "- run id: `uuid-tiny-mora-r4-rope-lr3e-3-s0`" in card
    assert "| char_acc | 0.25 |" in card and "| train_loss | 1.5 |" in card
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "assets/tiny_base"  # as configured, not an absolute path
    assert "import moRA" in config["how_to_load"]


def test_loading_without_import_moRA_is_peft_s_keyerror_and_the_folder_says_why(tmp_path):
    mora_model("sharing", 4).save_pretrained(tmp_path)
    script = ("import sys, peft, transformers\n"
              "cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=72, num_hidden_layers=2,"
              " num_attention_heads=4, num_key_value_heads=2)\n"
              f"peft.PeftModel.from_pretrained(transformers.LlamaForCausalLM(cfg), {str(tmp_path)!r})\n"
              "assert 'moRA' not in sys.modules\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "KeyError: 'MORA'" in result.stderr  # PEFT's lookup; nothing of ours runs
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert "import moRA" in config["how_to_load"] and "import moRA" in (tmp_path / "README.md").read_text()
