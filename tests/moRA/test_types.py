"""moRA/types.py: type names, official integers, the paper's names, auto, r̂ rounding and parameter counts."""
import math

import pytest

from moRA.types import canonical_mora_type, lora_param_count, mora_param_count, mora_rank


@pytest.mark.parametrize(
    "d,k,r,r_hat",
    [(4096, 4096, 8, 256), (4096, 4096, 256, 1448), (11008, 4096, 8, 348), (4096, 11008, 8, 348),
     (11008, 4096, 256, 1966), (4096, 11008, 256, 1966)],
)
def test_rank_and_parameter_counts_on_llama2_7b_shapes(d, k, r, r_hat):
    assert mora_rank(d, k, r, "sharing") == r_hat == int(math.sqrt((d + k) * r) + 0.5)
    assert mora_rank(d, k, r, "rope") == r_hat // 2 * 2
    assert mora_param_count(d, k, r, "sharing") == r_hat ** 2
    lora = lora_param_count(d, k, r)
    assert lora == (d + k) * r
    # equal budget: r̂² is LoRA's count up to the rounding of r̂
    assert abs(r_hat ** 2 - lora) <= 2 * r_hat + 1


def test_rank_rounds_like_the_official_code_and_rope_rank_is_even():
    # (32 + 32)·3 = 192, √192 = 13.86 → 14 (the paper's floor would give 13); (10 + 15)·1 = 25 → 5, rope → 4
    assert mora_rank(32, 32, 3, "sharing") == 14
    assert mora_rank(10, 15, 1, "sharing") == 5
    assert mora_rank(10, 15, 1, "rope") == 4
    assert mora_rank(10, 15, 1, 6) == 4
    assert mora_rank(10, 15, 1, "rotation") == 4


@pytest.mark.parametrize("alias,name", [(1, "sharing"), (2, "contiguous"), (3, "contiguous_tile"),
                                        (4, "sharing_interleave"), (6, "rope"), ("6", "rope"), ("RoPE", "rope"),
                                        ("rotation", "rope"), (" Rotation ", "rope"), ("truncation", "truncation"),
                                        ("decouple", "decouple")])
def test_official_integers_and_names(alias, name):
    assert canonical_mora_type(alias) == name


def test_auto_type_follows_the_paper():
    assert canonical_mora_type("auto", r=8) == "rope"
    assert canonical_mora_type("auto", r=63) == "rope"
    assert canonical_mora_type("auto", r=64) == "sharing"
    assert canonical_mora_type("auto", r=256) == "sharing"
    with pytest.raises(ValueError, match="needs the LoRA-equivalent rank"):
        canonical_mora_type("auto")


@pytest.mark.parametrize("bad", [5, 0, "lowrank", True, 7.5])
def test_unknown_type_is_rejected_by_name(bad):
    with pytest.raises(ValueError, match="unknown mora_type"):
        canonical_mora_type(bad)


@pytest.mark.parametrize("r", [0, -3, 2.5, True])
def test_bad_rank_is_rejected(r):
    with pytest.raises(ValueError, match="positive integer"):
        mora_rank(16, 16, r)


def test_the_type_rules_import_without_torch_or_peft():
    import subprocess
    import sys

    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('t', 'moRA/types.py'); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "assert 'torch' not in sys.modules and 'peft' not in sys.modules; print(m.canonical_mora_type(6))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "rope\n"
