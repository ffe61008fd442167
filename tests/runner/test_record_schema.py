"""One set of record rules: the runner's loader and the table builders' loader accept and refuse the same records,
with the same one-line message naming the file and the field."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import results_lib
import runner.record
from results_lib.records import load_records, parse_record
from runner.record import RecordError, build_record, load_record, validate_record
from runner.record_schema import PARAM_FIELDS, REQUIRED_FIELDS
from tests.fixtures.records.make_fixture_records import minimal_record


def _set(**fields):
    return lambda record: record.update(fields)


def _drop(key):
    return lambda record: record.pop(key)


def _params_drop(key):
    return lambda record: record["params"].pop(key)


GOOD = {
    "as written": lambda record: None,
    "mora_type name": _set(adapter="mora", mora_type="rope"),
    "mora_type alias auto with a rank": _set(adapter="mora", mora_type="auto", r=8),
    "mora_type official integer": _set(adapter="mora", mora_type=1, r=256),
    "fft: no rank, no type": _set(adapter="fft", r=None, mora_type=None),
    "integer lr": _set(lr=1),
    "no history, no final metrics": _set(history=[], final={}),
    "history points": _set(history=[{"step": 20, "char_acc": 0.4}, {"step": 10, "train_loss": 1.0}]),
    "optional fields absent": lambda record: [record.pop(key) for key in ("analysis", "samples_dir")],
    "optional fields set": _set(analysis={"sv": 1}, samples_dir="out/s", evaluations=[{"date": "2026-01-01"}]),
    "no lora equivalent": lambda record: record["params"].update(lora_equivalent=None),
}

# name -> (change, words the message must hold after "<file>: ")
BAD = {
    "not an object": (lambda record: None, "not a JSON object (a list)"),
    "other schema": (_set(schema="other/2"), "schema is 'other/2', expected 'mora-run/1'"),
    "no schema": (_drop("schema"), "schema is None"),
    "unfinished": (_set(status="running"), "status is 'running', expected 'completed'"),
    "unfinished, final not written yet": (lambda record: (record.update(status="running"), record.pop("final")),
                                          "status is 'running'"),
    **{f"missing {key}": (_drop(key), f"missing field {key!r}") for key in REQUIRED_FIELDS if key != "schema"},
    "r as text": (_set(r="8"), "field 'r' is str, expected int|null"),
    "seed as bool": (_set(seed=True), "field 'seed' is bool, expected int"),
    "seed as float": (_set(seed=1.0), "field 'seed' is float, expected int"),
    "lr as text": (_set(lr="1e-3"), "field 'lr' is str, expected int|float"),
    "lr as bool": (_set(lr=True), "field 'lr' is bool"),
    "mora_type as bool": (_set(mora_type=True), "field 'mora_type' is bool, expected str|int|null"),
    "mora_type as list": (_set(mora_type=["rope"]), "field 'mora_type' is list"),
    "config null": (_set(config=None), "field 'config' is NoneType, expected dict"),
    "final as list": (_set(final=[0.5]), "field 'final' is list, expected dict"),
    "history null": (_set(history=None), "field 'history' is NoneType, expected list"),
    "created null": (_set(created=None), "field 'created' is NoneType, expected str"),
    "analysis as text": (_set(analysis="none"), "field 'analysis' is str, expected dict|null"),
    "evaluations as object": (_set(evaluations={}), "field 'evaluations' is dict, expected list"),
    **{f"params without {key}": (_params_drop(key), f"params.{key} missing or not") for key in PARAM_FIELDS},
    "params.total as float": (lambda record: record["params"].update(total=1.0), "params.total missing or not int"),
    "final NaN": (_set(final={"char_acc": float("nan")}), "final metric 'char_acc' = nan is not a finite number"),
    "final infinite": (_set(final={"val_ppl": float("inf")}), "final metric 'val_ppl' = inf is not a finite number"),
    "final as text": (_set(final={"char_acc": "0.5"}), "final metric 'char_acc' = '0.5' is not a finite number"),
    "final as bool": (_set(final={"char_acc": True}), "final metric 'char_acc' = True"),
    "history point without step": (_set(history=[{"loss": 1.0}]), "history[0] has no integer 'step'"),
    "history float step": (_set(history=[{"step": 1}, {"step": 2.0}]), "history[1] has no integer 'step'"),
    "history point not an object": (_set(history=["step"]), "history[0] has no integer 'step'"),
    "history value as text": (_set(history=[{"step": 1, "loss": "1.0"}]), "history[0].loss = '1.0' is not a number"),
}


def _write(tmp_path, data):
    path = tmp_path / "runs" / "rec.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))  # NaN/inf are written as JSON's NaN/Infinity tokens, which json.load reads
    return path


def _table_loader(tmp_path):
    messages = []
    records = load_records(tmp_path, report=messages.append)
    return records, messages


@pytest.mark.parametrize("name", GOOD)
def test_both_loaders_accept(tmp_path, name):
    data = minimal_record()
    GOOD[name](data)
    path = _write(tmp_path, data)
    assert load_record(path) == json.loads(path.read_text())
    records, messages = _table_loader(tmp_path)
    assert messages == [] and [rec.run_id for rec in records] == [data["run_id"]]


@pytest.mark.parametrize("name", BAD)
def test_both_loaders_refuse_with_the_same_message(tmp_path, name):
    change, words = BAD[name]
    data = ["just", "a", "list"] if name == "not an object" else minimal_record()
    change(data)
    path = _write(tmp_path, data)
    with pytest.raises(RecordError) as runner_error:
        load_record(path)
    records, messages = _table_loader(tmp_path)
    assert records == [] and len(messages) == 1
    runner_problem = str(runner_error.value).removeprefix(f"{path}: ")
    table_problem = messages[0].removeprefix("skipped record runs/rec.json: ")
    assert runner_problem == table_problem and words in runner_problem
    assert "\n" not in messages[0] and str(runner_error.value).startswith(str(path))
    # the same rule called directly, with the caller's name for the record
    with pytest.raises(RecordError, match=f"^x.json: {re.escape(runner_problem)}$"):
        validate_record(json.loads(path.read_text()), where="x.json")
    with pytest.raises(RecordError, match=f"^x.json: {re.escape(runner_problem)}$"):
        parse_record(json.loads(path.read_text()), "x.json")


def test_a_built_record_passes_both():
    record = build_record(run_id="r", task="uuid", adapter="mora", r=8, mora_type="rope", model="tiny", seed=0,
                          lr=3e-3, experiment=None, sweep=None, config={}, params={"trainable": 1, "total": 2},
                          history=[{"step": 1, "train_loss": 1.0}], final={"char_acc": 0.5}, wall_time_s=1.0,
                          tokens_per_s=1.0, output_dir="out", peak_memory=1.0)
    assert parse_record(record, "r.json").mora_type == "rope"


def test_an_unknown_type_name_is_refused_by_the_tables_only():
    """The schema says what type ``mora_type`` has; which names exist is the MoRA library's rule (it imports torch),
    applied where the tables canonicalise the name. The runner writes only names that rule produced."""
    data = minimal_record(adapter="mora", mora_type="spiral")
    validate_record(data, where="x.json")
    with pytest.raises(RecordError, match=r"^x\.json: unknown mora_type 'spiral'"):
        parse_record(data, "x.json")


def test_one_error_class_and_a_light_import():
    assert results_lib.RecordError is runner.record.RecordError is RecordError
    code = ("import sys, results_lib.records; "
            "heavy = sorted({'torch', 'transformers', 'peft'} & set(sys.modules)); print(heavy); assert not heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stdout + result.stderr
