"""One rule for "the Hugging Face hub is switched off", used by model, tokenizer and dataset loading alike: any of
HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, TRANSFORMERS_OFFLINE set to 1/true/yes/on (any case)."""
from __future__ import annotations

import pytest

from tasks.data_source import OFFLINE_VARIABLES, hub_offline


@pytest.fixture
def online(monkeypatch):
    for key in OFFLINE_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_no_variable_set_is_online(online):
    assert not hub_offline()
    online.setenv("HF_HUB_OFFLINE", "0")
    assert not hub_offline()


@pytest.mark.parametrize("key", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"])
@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_any_offline_variable_switches_the_hub_off(online, key, value):
    online.setenv(key, value)
    assert hub_offline()


def test_models_corpora_and_data_sources_ask_the_same_function(online):
    import runner.models
    import tasks.corpora
    import tasks.data_source

    online.setenv("TRANSFORMERS_OFFLINE", "1")   # the models' check used to be the only one to read it
    assert runner.models.hub_offline is tasks.corpora.hub_offline is tasks.data_source.hub_offline
    for module in (runner.models, tasks.corpora, tasks.data_source):
        assert not any(hasattr(module, old) for old in ("_is_offline", "_hub_offline", "_offline"))
