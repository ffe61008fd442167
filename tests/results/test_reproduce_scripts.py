"""The reproduction scripts' two phases, driven by a stand-in for train.py that writes records instantly: the lr
sweep runs once per experiment, the seeds run at the best lr, and a second invocation runs nothing."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

from tests.results._paths import ROOT

# A `python` stand-in: `train.py -m experiment=… k=v …` expands the file's sweep grid with the command-line overrides
# (Hydra's basic sweeper rule: a command-line key replaces the file's) and writes one record per point, with a made-up
# char_acc that peaks at lr 3e-3; anything else runs the real interpreter.
STUB = textwrap.dedent(f"""\
    #!{sys.executable}
    import itertools, json, math, os, sys
    args = sys.argv[1:]
    if not args or args[0] != "train.py":
        os.execv({sys.executable!r}, [{sys.executable!r}] + args)
    sys.path.insert(0, {str(ROOT)!r})
    from results_lib.cpu_sweeps import load_sweep
    from results_lib.records import canonical_mora_type
    from tests.fixtures.records.make_fixture_records import minimal_record
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write(" ".join(args[1:]) + "\\n")
    overrides = dict(a.split("=", 1) for a in args[1:] if "=" in a)
    experiment = overrides.pop("experiment")
    results_dir = overrides.pop("results_dir")
    base, grid = load_sweep(experiment)
    params = {{k: list(dict.fromkeys(str(p[k]) for p in grid)) for k in grid[0]}}
    params.update({{k: v.split(",") for k, v in overrides.items()}})
    params.setdefault("seed", [str(base.get("seed", 0))])
    params.setdefault("r", [str(base.get("r", 8))])
    keys = list(params)
    for combo in itertools.product(*params.values()):
        point = dict(zip(keys, combo))
        lr, seed, r = float(point["lr"]), int(point["seed"]), int(point["r"])
        adapter, task, model = point.get("adapter", base["adapter"]), base.get("task", "uuid"), base.get("model", "tiny")
        mora_type = None
        if adapter in ("mora", "remora"):
            mora_type = canonical_mora_type(point.get("adapter.mora_type", "auto" if adapter == "mora" else "sharing"), r)
        acc = 0.9 - abs(math.log10(lr / 3e-3)) / 4 - 0.01 * seed
        run_id = f"{{experiment.replace('/', '_')}}-{{adapter}}-{{r}}-{{mora_type}}-{{lr:g}}-{{seed}}"
        if task == "pretrain":  # lower is better; best at lr 3e-3
            final = {{"val_ppl": 7.0 - acc, "val_loss": math.log(7.0 - acc), "train_loss": 1.0 - acc}}
            history = [{{"step": 100, "val_ppl": 9.0, "train_loss": 2.0}}, {{"step": 300, **final}}]
        else:
            final = {{"char_acc": acc, "train_loss": 1.0 - acc}}
            history = [{{"step": 100, "char_acc": acc / 2}}, {{"step": 200, "char_acc": acc}}]
        record = minimal_record(run_id=run_id, task=task, adapter=adapter, r=None if adapter == "fft" else r,
                                mora_type=mora_type, model=model, seed=seed, lr=lr, experiment=experiment,
                                sweep="stub", final=final, history=history)
        os.makedirs(results_dir, exist_ok=True)
        with open(os.path.join(results_dir, run_id + ".json"), "w") as f:
            json.dump(record, f)
    """)


def _run(script, args, tmp_path, **env):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    environment = {**os.environ, "PYTHON": str(stub), "RESULTS": str(tmp_path / "results"),
                   "STUB_LOG": str(tmp_path / "calls.log"), **env}
    result = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                            env=environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    log = tmp_path / "calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def test_uuid_script_sweeps_then_seeds_best_lr_and_resumes(tmp_path):
    results = tmp_path / "results"
    calls = _run("reproduce_cpu_uuid.sh", ["lora"], tmp_path)
    runs = f"results_dir={results}/runs"
    assert calls == [f"-m experiment=cpu/uuid_lora resume=auto {runs}",
                     f"-m experiment=cpu/uuid_lora r=8 lr=0.003 seed=1,2,3 resume=auto {runs}",
                     f"-m experiment=cpu/uuid_lora r=64 lr=0.003 seed=1,2,3 resume=auto {runs}"]
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert len(records) == 6 + 6
    table = (results / "tables" / "uuid_memorization.md").read_text()
    assert "| LoRA r=8 |" in table and "(n=3)" in table and "lr 3e-3 shown" in table
    assert sorted(p.name for p in (results / "figures").glob("*.png")) == ["uuid_char_acc__tiny.png"]
    # everything exists: a second invocation trains nothing
    assert _run("reproduce_cpu_uuid.sh", ["lora"], tmp_path, SKIP_BUILD="1") == []


def test_ablation_script_adds_the_rope_row_only_when_missing(tmp_path):
    calls = _run("reproduce_cpu_ablation.sh", [], tmp_path, SKIP_BUILD="1")
    runs = f"results_dir={tmp_path / 'results'}/runs"
    assert calls[0] == f"-m experiment=cpu/ablation_mora_types resume=auto {runs}"
    assert len([c for c in calls if "adapter.mora_type=" in c and "seed=1,2,3" in c]) == 6
    assert f"-m experiment=cpu/uuid_mora r=8 resume=auto {runs}" in calls
    assert calls[-1] == f"-m experiment=cpu/uuid_mora r=8 lr=0.003 seed=1,2,3 resume=auto {runs}"
    assert _run("reproduce_cpu_ablation.sh", [], tmp_path, SKIP_BUILD="1") == []


def test_pretrain_script_sweeps_every_adapter_then_seeds_each_at_its_best_lr(tmp_path):
    results = tmp_path / "results"
    calls = _run("reproduce_cpu_pretrain.sh", [], tmp_path)
    runs = f"results_dir={results}/runs"
    expected = []
    for length in ("short", "long"):
        expected += [f"-m experiment=cpu/pretrain_{length} resume=auto {runs}"] + [
            f"-m experiment=cpu/pretrain_{length} adapter={a} lr=0.004 seed=43,44,45 resume=auto {runs}"
            for a in ("lora", "mora", "relora", "remora")]
    assert calls == expected
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert len(records) == 2 * (20 + 12)  # per length: 4 adapters × 5 lrs on seed 42, then 4 × 3 seeds
    table = (results / "tables" / "pretrain_ppl.md").read_text()
    assert "ReMoRA" in table and "(n=3)" in table and "reported on seeds 43, 44, 45" in table
    assert "experiment cpu/pretrain_short" in table and "experiment cpu/pretrain_long" in table
    assert _run("reproduce_cpu_pretrain.sh", [], tmp_path, SKIP_BUILD="1") == []
