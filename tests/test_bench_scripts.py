"""The benchmark scripts' measuring machinery (not their timings): interleaved rounds, paired ratios, the stub base
layer, the floor, bench_train's one-process interleaving, the --device/--dtype flags (on the CPU here), and the prepared
GPU check (its --dry-run and its goal verdicts) — on shapes small enough for a test."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts import bench_adapters, bench_train, gpu_goals, interleaved_timing
from tests.conftest import REPO_ROOT


def test_interleaved_rounds_run_every_step_once_per_round_in_rotating_order():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleaved_timing.interleaved_rounds(steps, rounds=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {name: len(ts) for name, ts in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for ts in times.values() for t in ts)


def test_interleaved_rounds_synchronise_before_and_after_every_timed_step():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "ab"}
    interleaved_timing.interleaved_rounds(steps, rounds=2, warmup=0, sync=lambda: calls.append("sync"))
    assert calls == ["sync", "a", "sync", "sync", "b", "sync", "sync", "b", "sync", "sync", "a", "sync"]
    assert interleaved_timing.device_synchronizer("cpu") is None  # CPU work is done when the call returns


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
            from moRA import mora_branch

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


def test_floor_step_computes_on_the_requested_device_and_dtype_and_writes_both_outputs():
    step = bench_adapters.floor_step(16, 24, 8, 2, device="cpu", dtype=torch.bfloat16, tokens=5)
    xb, w, gz, out = step.operands
    assert [tuple(t.shape) for t in (xb, w, gz, out)] == [(2, 5, 8), (2, 8, 8), (2, 5, 8), (5, 16)]
    assert {t.dtype for t in step.operands} == {torch.bfloat16} and {t.device.type for t in step.operands} == {"cpu"}
    step()
    assert bool((out == 1).all())  # the output write happened


def test_merge_step_adds_delta_w_into_the_half_precision_base_and_rounds_once():
    from moRA import delta_weight

    step = bench_adapters.merge_step(16, 24, 2, "rope", dtype=torch.bfloat16)
    layer = step.layer
    weight = layer.get_base_layer().weight
    before = weight.detach().clone()
    M = layer.mora_M["default"]
    assert weight.dtype == torch.bfloat16 and M.dtype == torch.float32  # M stays fp32 over a bf16 base
    step()
    assert layer.merged_adapters == []  # the step undoes its bookkeeping so that it can run again
    want = (before.float() + delta_weight(M.detach(), 16, 24, "rope")).to(torch.bfloat16)
    assert torch.equal(weight.detach(), want)
    assert not torch.equal(weight.detach(), before)


def test_bench_adapters_cli_on_cpu_in_bf16_writes_a_row_per_candidate(tmp_path):
    out = tmp_path / "table.md"
    assert bench_adapters.main(["--device", "cpu", "--dtype", "bf16", "--shapes", "16x24", "--ranks", "2",
                                "--types", "sharing,rope", "--repeats", "2", "--tokens", "4", "--out", str(out)]) == 0
    text = out.read_text()
    assert "4 tokens, bf16, CPU" in text
    rows = [line for line in text.splitlines() if line.startswith("| 16×24 | 2 |")]
    assert [row.split("|")[3].strip() for row in rows] == ["PEFT LoRA", "MoRA sharing", "MoRA rope"]
    for row in rows[1:]:  # fwd+bwd ms, × LoRA, floor ms, × floor: all measured, positive numbers
        assert all(float(cell) > 0 for cell in row.split("|")[5:9])


def test_bench_scripts_refuse_cuda_without_cuda_in_one_line(capsys):
    if torch.cuda.is_available():
        return  # the refusal is for machines without CUDA; on a GPU machine the flags are exercised in tests/gpu/
    for run in (lambda: bench_adapters.main(["--device", "cuda", "--quick"]),
                lambda: bench_train.main(["--device", "cuda", "--models", "tiny"])):
        try:
            run()
        except SystemExit as exit_:
            assert str(exit_.code).startswith("error: --device cuda") and "\n" not in str(exit_.code)
        else:
            raise AssertionError("--device cuda without CUDA was accepted")


def test_bench_train_builds_on_the_device_and_steps_under_bf16_autocast():
    spec = {"model": "tiny", "method": "mora", "mora_type": "sharing", "r": 4, "batch": 2, "seq": 8, "warmup": 0,
            "steps": 1, "threads": 1, "device": "cpu", "dtype": "bf16"}
    step, info, device = bench_train.build(spec)
    model = step.model
    assert device == "cpu" and {p.device.type for p in model.parameters()} == {"cpu"}
    M = [p for name, p in model.named_parameters() if "mora_M" in name]
    assert M and all(p.dtype == torch.float32 for p in M)  # autocast: the weights stay fp32
    before = [p.detach().clone() for p in M]
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    step()
    hook.remove()
    assert seen == [torch.bfloat16]  # the forward pass ran under bf16 autocast
    assert math.isfinite(step.last_loss)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, M))  # the optimizer step moved M


def test_bench_train_interleaves_configurations_in_one_process():
    specs = [{"model": "tiny", "method": m, "mora_type": t, "r": 4, "batch": 2, "seq": 8, "warmup": 1, "steps": 2,
              "threads": 1} for m, t in bench_train.METHODS]
    rows = bench_train.measure_throughput(specs)
    assert len(rows) == 3 and all(row["tokens_per_s"] > 0 and row["step_s"] > 0 for row in rows)
    memory = bench_train.measure_memory(specs[2])
    assert memory["resolved_type"] == "rope" and memory["trainable"] > 0 and memory["peak_mb"] > 0


# ------------------------------------------------------------------------------------------- the prepared GPU check
GPU_CHECK = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
GPU_STEPS = ["env", "tests_fp32", "tests_bf16", "fsdp", "library", "adapters", "adapters_kernels", "adapters_equations",
             "train", "goals"]  # the library reads MORA_BRANCH_IMPLEMENTATION: one adapter table per form


def dry_run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), "--dry-run", *args], capture_output=True, text=True, timeout=60)


def test_gpu_check_dry_run_prints_every_step_within_eight_minutes_and_writes_nothing(tmp_path):
    out = tmp_path / "bench"
    proc = dry_run(GPU_CHECK, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    steps = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("[dry-run] ") and "(≤" in line]
    assert steps == GPU_STEPS
    text = proc.stdout
    assert "MORA_TEST_DEVICE=cuda MORA_TEST_DTYPE=fp32" in text and "MORA_TEST_DEVICE=cuda MORA_TEST_DTYPE=bf16" in text
    assert "bench_adapters.py --device cuda --dtype bf16 --ranks 8,256" in text
    assert "bench_train.py --device cuda --dtype bf16 --models llama_250m" in text
    assert f"{out}/gpu_adapters_bf16.md" in text and f"{out}/gpu_train_bf16.md" in text
    total = int(text.split("add up to at most ")[1].split()[0])
    assert total <= 480  # ≤ 8 minutes on the GPU machine, every step at its limit
    assert not out.exists()  # a dry run writes nothing


def test_gpu_check_benchmarks_each_kernel_form_when_the_library_reads_MORA_BRANCH_IMPLEMENTATION(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(GPU_CHECK, tmp_path / "scripts" / "gpu_check.sh")
    (tmp_path / "moRA").mkdir()
    (tmp_path / "moRA" / "kernels.py").write_text('CHOICE = os.environ.get("MORA_BRANCH_IMPLEMENTATION", "auto")\n')
    proc = dry_run(tmp_path / "scripts" / "gpu_check.sh")
    assert proc.returncode == 0, proc.stderr
    adapters = [line for line in proc.stdout.splitlines() if "bench_adapters.py" in line]
    assert [line.split("MORA_BRANCH_IMPLEMENTATION=")[1].split()[0] for line in adapters] == ["auto", "kernels", "equations"]
    assert [line.split("--out ")[1] for line in adapters] == [
        f"{tmp_path}/results/bench/gpu_adapters_bf16{suffix}.md" for suffix in ("", "_kernels", "_equations")]
    assert int(proc.stdout.split("add up to at most ")[1].split()[0]) <= 480


def test_gpu_check_rejects_an_unknown_argument_in_one_line():
    proc = subprocess.run(["bash", str(GPU_CHECK), "--gpu"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: unknown argument --gpu (see --help)"


def train_table(ratio: float) -> str:
    rows = [{"model": "llama_250m", "r": 8, "method": m, "mora_type": t, "trainable": 1000,
             "tokens_per_s": 1000.0 * (1.0 if m == "lora" else ratio), "peak_mb": 100.0, "growth_mb": 10.0}
            for m, t in bench_train.METHODS]
    return bench_train.table(rows)


def test_gpu_goals_read_the_tables_the_benchmarks_write(tmp_path):
    adapters = tmp_path / "adapters.md"
    assert bench_adapters.main(["--shapes", "16x24", "--ranks", "2", "--types", "sharing,rope", "--repeats", "2",
                                "--tokens", "4", "--out", str(adapters)]) == 0
    branch = {row.split("|")[3].strip(): row.split("|") for row in adapters.read_text().splitlines()
              if row.startswith("| 16×24 |")}
    sharing_ratio, rope_floor_ratio = float(branch["MoRA sharing"][6]), float(branch["MoRA rope"][8])
    for ratio, met in ((0.96, "yes"), (0.90, "**no**")):
        train = tmp_path / "train.md"
        train.write_text(train_table(ratio))
        summary = tmp_path / "summary.md"
        summary.write_text("# GPU check\n")
        assert gpu_goals.main(["--adapters", str(adapters), "--train", str(train), "--summary", str(summary)]) == 0
        verdicts = {line.split("|")[1].strip(): line.split("|")[2:4] for line in summary.read_text().splitlines()
                    if line.startswith("| ") and "goal" not in line and "---" not in line}
        assert verdicts["training tokens/s ≥ 0.95 × LoRA (bf16)"][1].strip() == met
        assert verdicts["training tokens/s ≥ 0.95 × LoRA (bf16)"][0].strip().startswith(f"worst {ratio:.2f}")
        sharing = verdicts["sharing ≤ 1.0 × PEFT LoRA (every shape, r)"]
        assert sharing[0].strip().startswith(f"worst {sharing_ratio:.2f}")
        assert sharing[1].strip() == ("yes" if sharing_ratio <= 1.0 else "**no**")
        rope = verdicts["rope ≤ 1.25 × its floor (every shape, r)"]
        assert rope[1].strip() == ("yes" if rope_floor_ratio <= 1.25 else "**no**")


def test_gpu_goals_name_a_missing_table_in_one_line(tmp_path, capsys):
    assert gpu_goals.main(["--adapters", str(tmp_path / "none.md"), "--train", str(tmp_path / "none.md")]) == 1
    assert capsys.readouterr().out.strip() == f"error: {tmp_path / 'none.md'} does not exist (its benchmark step failed?)"


@pytest.mark.parametrize("python, status, code", [("/bin/true", "ok", 0), ("/bin/false", "**failed (exit 1)**", 1)])
def test_gpu_check_runs_every_step_and_records_its_status_in_the_summary(tmp_path, python, status, code):
    """The check's own flow, with a stand-in interpreter: every step runs even after a failure, each gets a row."""
    env = {**os.environ, "PYTHON": python, "MORA_WHEELS_DIR": str(tmp_path / "no_wheels")}
    proc = subprocess.run(["bash", str(GPU_CHECK), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == code, proc.stderr
    rows = [line.split("|")[1:3] for line in (tmp_path / "gpu_check.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| step")]
    assert [name.strip() for name, _ in rows] == GPU_STEPS
    assert {s.strip() for _, s in rows} == {status}
    if code:
        assert proc.stderr.strip().startswith("error: GPU check steps failed: env tests_fp32")
    assert (tmp_path / "gpu_check.log").read_text().count("=== ") == 2 * len(GPU_STEPS)


@pytest.mark.parametrize("method, mora_type", [("lora", None), ("mora", "rope")])
def test_bench_train_measures_the_adapter_block_train_py_runs(method, mora_type):
    """The adapter file composed with its defaults list (target projections), as train.py composes it."""
    from tests.conftest import compose
    from omegaconf import OmegaConf

    overrides = [f"adapter={method}", "r=8"] + ([f"adapter.mora_type={mora_type}"] if mora_type else [])
    expected = OmegaConf.to_container(compose(overrides).adapter, resolve=True)
    assert bench_train.adapter_config(method, 8, mora_type) == expected
    assert "defaults" not in expected and len(expected["target_modules"]) == 7


ONE_TINY_STEP = ('{"model": "tiny", "method": "mora", "mora_type": "rope", "r": 4, "batch": 2, "seq": 8, "warmup": 0, '
                 '"steps": 1, "threads": 1, "device": "cpu", "dtype": "fp32"}')


@pytest.mark.parametrize("args", [["bench_adapters.py", "--help"], ["bench_train.py", "--one", ONE_TINY_STEP]],
                         ids=["bench_adapters", "bench_train"])
def test_scripts_do_not_print_the_known_bitsandbytes_noise(args):
    """bitsandbytes' optional-kernel line on AVX512-BF16 CPUs (runner/console_noise.py) stays off the scripts'
    console as it does off train.py's (both import PEFT, which imports bitsandbytes)."""
    result = subprocess.run([sys.executable, f"scripts/{args[0]}", *args[1:]], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gemm_4bit_forward" not in result.stdout + result.stderr


def test_bench_versions_times_both_versions_of_the_layer_and_writes_a_row_per_case(tmp_path):
    """Against itself (this checkout as the other version): both load side by side, compute the same output, and
    each case gets a row with both times and their ratio."""
    from scripts import bench_versions

    out = tmp_path / "versions.md"
    assert bench_versions.main(["--before", str(REPO_ROOT), "--shapes", "64x32x8", "--rounds", "1",
                                "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 64 × 32")]
    assert [row.split("|")[4].strip() for row in rows] == ["sharing", "rope"]  # r = 128 is skipped on a 32-wide layer
    assert all(float(row.split("|")[7]) > 0 for row in rows)
    with pytest.raises(SystemExit, match="holds no moRA/__init__.py"):
        bench_versions.load_before(tmp_path)
