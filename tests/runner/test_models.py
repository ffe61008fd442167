"""The model factory: pretrained tiny base, seeded scratch init, paper architectures, fail-fast hub models."""
import json
import time

import pytest
import torch

from runner.models import REPO_ROOT, ModelNotAvailableError, build_model, load_model_config
from runner.tokenizer import EOS_ID, PAD_ID

SNIPPET = (
    "HAMLET. To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles,\n"
    "And by opposing end them? To die: to sleep;\n"
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(key, "1")


def snippet_loss(model, tokenizer) -> float:
    ids = torch.tensor([tokenizer(SNIPPET)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def test_tiny_is_the_committed_pretrained_base():
    assert (REPO_ROOT / "assets/tiny_base/model.safetensors").is_file()
    model, tok = build_model(load_model_config("tiny"), seed=0)
    scratch, _ = build_model(load_model_config("tiny_scratch"), seed=0)
    assert model.training and scratch.training
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in scratch.parameters())
    assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 4
    assert model.config.pad_token_id == PAD_ID and model.config.eos_token_id == EOS_ID
    assert next(model.parameters()).dtype == torch.float32
    pretrained, random = snippet_loss(model, tok), snippet_loss(scratch, tok)
    assert random > 5.0  # ≈ ln(259): uniform over the vocabulary
    assert pretrained < random - 2.5, (pretrained, random)
    recorded = json.loads((REPO_ROOT / "assets/tiny_base/TRAINING.json").read_text())
    assert recorded["final_val_loss"] < recorded["initial_val_loss"] - 2.5
    # the committed weights are the tiny_scratch architecture (the one place it is defined)
    arch = load_model_config("tiny_scratch")["architecture"]
    for key, value in arch.items():
        if key != "vocab_size":
            assert getattr(model.config, key) == value, key
    assert model.config.vocab_size == len(tok) == 259


def test_tiny_scratch_is_deterministic_from_seed():
    cfg = load_model_config("tiny_scratch")
    a, _ = build_model(cfg, seed=7)
    b, _ = build_model(cfg, seed=7)
    c, _ = build_model(cfg, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])


def test_build_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(load_model_config("tiny_scratch"), seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_dtype_from_config():
    model, _ = build_model({**load_model_config("tiny_scratch"), "dtype": "bfloat16"}, seed=0)
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("name, expected", [("llama_250m", 247_524_096), ("llama_1b", 1_339_492_352)])
def test_paper_architectures_on_meta_device(name, expected):
    cfg = {**load_model_config(name), "tokenizer": "byte"}
    model, tok = build_model(cfg, seed=0, device="meta")
    # embeddings 2·32100·h + 24 layers of (4·h² + 3·h·i + 2·h) + final norm h
    h, i = model.config.hidden_size, model.config.intermediate_size
    assert sum(p.numel() for p in model.parameters()) == expected == 2 * 32100 * h + 24 * (4 * h * h + 3 * h * i + 2 * h) + h
    assert model.config.vocab_size == 32100 and model.config.max_position_embeddings == 1024
    assert model.config.rms_norm_eps == 1e-6 and model.config.hidden_act == "silu"
    assert tok.model_max_length == 1024 and model.config.pad_token_id == PAD_ID


def test_paper_tokenizer_offline_fails_fast_with_a_hint():
    start = time.time()
    with pytest.raises(ModelNotAvailableError, match=r"t5-base.*model\.tokenizer=byte"):
        build_model(load_model_config("llama_250m"), seed=0, device="meta")
    assert time.time() - start < 5


def test_llama2_7b_offline_fails_fast_with_how_to_get_it():
    start = time.time()
    with pytest.raises(ModelNotAvailableError) as info:
        build_model(load_model_config("llama2_7b"), seed=0)
    assert time.time() - start < 5
    message = str(info.value)
    assert "\n" not in message
    assert "meta-llama/Llama-2-7b-hf" in message and "hf download" in message
    assert "model.local_path" in message
    assert isinstance(info.value, ValueError)


def test_llama2_7b_local_path_without_model_fails_fast(tmp_path):
    cfg = {**load_model_config("llama2_7b"), "local_path": str(tmp_path)}
    with pytest.raises(ModelNotAvailableError, match="model.local_path=.*no config.json"):
        build_model(cfg, seed=0)


def test_paper_model_configs_match_the_paper():
    assert load_model_config("llama2_7b")["dtype"] == "bfloat16"
    assert load_model_config("llama2_7b")["trust_remote_code"] is False
    for name in ("tiny", "tiny_scratch", "llama2_7b", "llama_250m", "llama_1b"):
        assert load_model_config(name)["name"] == name


@pytest.mark.parametrize("change, message", [
    ({"source": "cloud"}, r"model.source='cloud'"),
    ({"colour": "red"}, r"unknown model field\(s\) \['colour'\]"),
    ({"dtype": "float8"}, r"model.dtype='float8'"),
    ({"tokenizer": 3}, r"model.tokenizer=3"),
    ({"architecture": {"hidden_size": 64, "n_experts": 2}}, r"unknown LlamaConfig field\(s\).*n_experts"),
    ({"architecture": {"model_type": "gpt2"}}, r"model_type='gpt2'"),
    ({"architecture": {"hidden_size": 32, "num_attention_heads": 2, "vocab_size": 100}}, r"259 tokens.*100"),
])
def test_bad_configs_give_one_line_errors(change, message):
    cfg = {**load_model_config("tiny_scratch"), **change}
    with pytest.raises(ValueError, match=message) as info:
        build_model(cfg, seed=0)
    assert "\n" not in str(info.value)


def test_unknown_config_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model config 'huge'.*tiny_scratch"):
        load_model_config("huge")


def test_local_path_without_weights_is_an_error(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="not a model folder"):
        build_model({"name": "mine", "source": "local", "path": str(tmp_path), "tokenizer": "byte"}, seed=0)
