"""The benchmark scripts' measuring machinery (not their timings): interleaved rounds, paired ratios, the stub base
layer, the floor, and bench_train's one-process interleaving — on shapes small enough for a test."""
from __future__ import annotations

import torch

from scripts import bench_adapters, bench_train, interleaved_timing


def test_interleaved_rounds_run_every_step_once_per_round_in_rotating_order():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleaved_timing.interleaved_rounds(steps, rounds=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {name: len(ts) for name, ts in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for ts in times.values() for t in ts)


def test_paired_ratio_is_the_median_of_the_per_round_ratios():
    times = {"x": [2.0, 30.0, 4.0], "ref": [1.0, 10.0, 1.0]}  # a slow round hits both sides
    assert interleaved_timing.paired_ratio(times, "x", "ref") == 3.0
    assert interleaved_timing.interleaved_min({"s": lambda: None}, rounds=2, warmup=0)["s"] >= 0


def test_stubbed_layers_compute_the_real_adapter_branch_and_keep_no_autograd_history():
    d, k = 24, 40
    x = torch.randn(8, k, requires_grad=True)
    g = torch.randn(8, d)
    for method, mora_type in [("lora", None), ("mora", "sharing"), ("mora", "rope")]:
        layer = bench_adapters.adapted_layer(d, k, method, 8, mora_type)
        first = layer(x).detach().clone()  # the stub's buffer starts at zero: the output is exactly the branch
        assert first.abs().sum() > 0  # the adapter's own weights are random: the branch is not trivially zero
        if method == "mora":
            from moRA.operators import mora_branch

            M = layer.mora_M["default"]
            want = mora_branch(x.detach(), M.detach(), d, mora_type)
            torch.testing.assert_close(first, want, rtol=1e-5, atol=1e-6)
        stub = layer.get_base_layer()
        buffer = stub._output
        before = buffer.clone()
        for _ in range(2):  # backward runs every time (no history kept from the last call)
            bench_adapters.fwd_bwd(layer, x, g)()
        assert stub._output is buffer  # no new output allocation per call: the base's cost is not charged
        if method == "lora":  # PEFT LoRA adds out of place: the buffer is untouched
            torch.testing.assert_close(buffer, before)
        else:  # MoRA adds in place into the base's output, as it does in a network
            torch.testing.assert_close(buffer, before + 2 * first, rtol=1e-5, atol=1e-5)


def test_floor_and_merge_steps_run():
    bench_adapters.floor_step(16, 24, 8, 2)()
    bench_adapters.merge_step(16, 24, 2, "rope")()


def test_bench_train_interleaves_configurations_in_one_process():
    specs = [{"model": "tiny", "method": m, "mora_type": t, "r": 4, "batch": 2, "seq": 8, "warmup": 1, "steps": 2,
              "threads": 1} for m, t in bench_train.METHODS]
    rows = bench_train.measure_throughput(specs)
    assert len(rows) == 3 and all(row["tokens_per_s"] > 0 and row["step_s"] > 0 for row in rows)
    memory = bench_train.measure_memory(specs[2])
    assert memory["resolved_type"] == "rope" and memory["trainable"] > 0 and memory["peak_mb"] > 0
