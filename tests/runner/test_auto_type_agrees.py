"""The MoRA type names, aliases and the ``auto`` threshold have one home, the library (``moRA``): the runner's
run-id naming and the results' record loading use its rule, so they cannot drift from it."""
import pytest

import moRA
from moRA import AUTO_ROPE_BELOW_R, MORA_TYPES, OFFICIAL_TYPE_ALIASES, canonical_mora_type
from results_lib.records import canonical_mora_type as record_mora_type
from runner.config import make_run_id, resolve_auto_mora_type


@pytest.mark.parametrize("r", [1, 8, AUTO_ROPE_BELOW_R - 1, AUTO_ROPE_BELOW_R, 128, 256])
def test_auto_resolves_like_the_library(r):
    assert resolve_auto_mora_type("auto", r) == canonical_mora_type("auto", r) == record_mora_type("auto", r)


def test_records_accept_every_name_and_alias_the_library_accepts():
    for name in MORA_TYPES:
        assert record_mora_type(name, 8) == canonical_mora_type(name, 8)
    for alias, name in OFFICIAL_TYPE_ALIASES.items():
        assert record_mora_type(alias, 8) == record_mora_type(str(alias), 8) == name


def test_runner_and_records_follow_a_change_of_the_library_rule(monkeypatch):
    """No local copy: both read the library's moRA/types.py (runner.type_rules loads that file without the package's
    torch imports), so a changed rule there is what both see."""
    import moRA.types
    from runner.type_rules import mora_type_rules

    rules = mora_type_rules()
    assert rules.__file__ == moRA.types.__file__
    assert rules.canonical_mora_type.__code__.co_code == moRA.types.canonical_mora_type.__code__.co_code
    monkeypatch.setattr(rules, "canonical_mora_type", lambda t, r=None: f"lib.{t}.{r}")
    assert resolve_auto_mora_type("auto", 8) == "lib.auto.8"
    assert record_mora_type("auto", 8) == "lib.auto.8" and record_mora_type(6, 8) == "lib.6.8"
    assert "-lib.auto.8-" in make_run_id("uuid", "tiny", "mora", 8, "auto", 3e-3, 0)


def test_an_unknown_recorded_type_is_a_one_line_record_error():
    from results_lib.records import RecordError

    with pytest.raises(RecordError, match="unknown mora_type 'spiral'"):
        record_mora_type("spiral", 8)


def test_run_ids_and_tables_spell_a_learning_rate_one_way():
    from results_lib import naming

    import runner.config

    assert naming.format_lr is runner.config.format_lr
    assert [naming.format_lr(v) for v in (3e-4, 1e-3, 2.5e-3)] == ["3e-4", "1e-3", "2.5e-3"]
