"""ΔW extraction and singular-value counts."""
import json

import pytest
import torch

import moRA
from moRA.analysis import (analysis_for_record, analysis_for_saved_run, count_singular_values_above, delta_weights,
                           initial_weights)
from moRA.restart import RestartConfig, Restarter, find_adapted_layers, merge_and_reinit
from tests.moRA.test_restart import TARGETS, lora_model, mora_model, randomise_adapters, tiny_base


def _matrix_with_singular_values(values, d=12, k=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    s = torch.zeros(d, k, dtype=torch.float64)
    s[range(len(values)), range(len(values))] = torch.tensor(values, dtype=torch.float64)
    return (u @ s @ v.T).float()


def test_count_singular_values_on_known_spectrum():
    m = _matrix_with_singular_values([2.0, 0.5, 0.2, 0.11, 0.09, 0.01])
    assert count_singular_values_above(m) == 4
    assert count_singular_values_above(m, 0.3) == 2
    assert count_singular_values_above(m, 5.0) == 0
    with pytest.raises(ValueError, match="needs a matrix"):
        count_singular_values_above(torch.ones(3))


def test_lora_delta_is_b_a_scaling():
    model = lora_model(r=4)
    randomise_adapters(model, seed=1)
    deltas = delta_weights(model)
    layer = find_adapted_layers(model)[0]
    m, a = layer.module, layer.adapter
    expected = m.lora_B[a].weight @ m.lora_A[a].weight * m.scaling[a]
    key = "model.layers.0.self_attn.q_proj"
    assert set(deltas) >= {key} and len(deltas) == 14
    torch.testing.assert_close(deltas[key], expected.detach())


def test_remora_delta_is_final_minus_initial_across_merges():
    model = mora_model("sharing")
    initial = initial_weights(model)
    randomise_adapters(model, seed=2)
    first = delta_weights(model)
    merge_and_reinit(model, [1, 2])
    randomise_adapters(model, seed=3)
    second = delta_weights(model)  # the current (unmerged) adapter alone: type 2 now
    total = delta_weights(model, initial)
    for key in total:
        torch.testing.assert_close(total[key], first[key] + second[key], atol=1e-6, rtol=1e-5)
    record = analysis_for_record(model, initial)["delta_w_singular_values"]
    assert record["delta"] == "final_minus_initial" and len(record["sv_above_threshold"]) == 14
    assert set(record["by_module_type"]) == set(TARGETS)
    assert set(record["by_block"]) == {"0", "1"}
    json.dumps(record)  # JSON-ready


def test_fft_delta_needs_initial_weights():
    model = tiny_base()
    initial = initial_weights(model)
    assert "lm_head" not in initial and "model.layers.1.mlp.down_proj" in initial
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight += _matrix_with_singular_values([1.0, 0.5, 0.05], 32, 48)
    record = analysis_for_record(model, initial)["delta_w_singular_values"]
    assert record["sv_above_threshold"]["model.layers.1.mlp.down_proj"] == 2
    assert record["sv_above_threshold"]["model.layers.0.self_attn.q_proj"] == 0
    with pytest.raises(ValueError, match="needs initial_state"):
        delta_weights(tiny_base())


def test_analysis_of_a_saved_relora_run_matches_the_live_one(tmp_path):
    model = lora_model(r=4, seed=0)
    initial = initial_weights(model)
    cb = Restarter(RestartConfig(merge_every=1), model)
    randomise_adapters(model, seed=4)
    cb.restart(None)
    randomise_adapters(model, seed=5)
    live = analysis_for_record(model, initial)
    model.save_pretrained(str(tmp_path / "adapter"))
    cb.save(tmp_path, global_step=1)  # what on_train_end writes into the output folder
    saved = analysis_for_saved_run(tiny_base(seed=0), tmp_path / "adapter")
    assert saved["delta_w_singular_values"]["sv_above_threshold"] == \
        live["delta_w_singular_values"]["sv_above_threshold"]
    assert max(live["delta_w_singular_values"]["sv_above_threshold"].values()) > 4  # > r: the merges add rank
