"""``mora-lm-eval`` (``moRA.lm_eval_cli:main``) is lm-eval's command line with MoRA registered: its help is lm-eval's,
and a tiny offline evaluation of a saved MoRA adapter on the committed tiny base runs (plain lm-eval would stop at
PEFT's ``KeyError: 'MORA'``)."""
import json
import logging

import peft
import pytest

from moRA import MoraConfig
from moRA.lm_eval_cli import main
from tests.moRA.test_peft_integration import REPO

TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(autouse=True)
def lm_eval_logging():
    """lm-eval's CLI adds a handler on pytest's captured stderr once per process; take it away after each test."""
    logger = logging.getLogger("lm_eval")
    before = list(logger.handlers)
    yield
    import lm_eval.utils

    for handler in [h for h in logger.handlers if h not in before]:
        logger.removeHandler(handler)
    lm_eval.utils._LOGGING_CONFIGURED = False


def test_help_is_lm_eval_s(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0 and "--model_args" in capsys.readouterr().out


def test_offline_evaluation_of_a_saved_mora_adapter(tmp_path):
    from runner.models import build_model, load_model_config

    model, tokenizer = build_model(load_model_config("tiny"), 0)
    adapter = tmp_path / "adapter"
    cfg = MoraConfig(r=8, mora_type="rope", target_modules=["q_proj", "v_proj"], init_weights=False)
    peft.get_peft_model(model, cfg).save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"q": "ab", "choices": ["c", "z"], "label": 0}\n{"q": "xy", "choices": ["z", "a"], "label": 0}\n')
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_choice.yaml").write_text(TASK.format(docs=docs))
    main(["--model", "hf", "--model_args",
          f"pretrained={REPO / 'assets' / 'tiny_base'},peft={adapter},tokenizer={adapter}", "--device", "cpu",
          "--include_path", str(tmp_path / "tasks"), "--tasks", "tiny_choice", "--batch_size", "2",
          "--output_path", str(tmp_path / "out")])
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("results_*.json")]
    assert len(results) == 1
    assert 0.0 <= results[0]["results"]["tiny_choice"]["acc,none"] <= 1.0
    assert results[0]["config"]["model_args"]["peft"] == str(adapter)
