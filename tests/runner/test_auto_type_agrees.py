"""runner.config resolves mora_type=auto without importing torch/peft (fast pre-checks); it must agree with moRA."""
import pytest

from moRA import AUTO_ROPE_BELOW_R, canonical_mora_type
from runner.config import AUTO_ROPE_BELOW_RANK, resolve_auto_mora_type


def test_thresholds_agree():
    assert AUTO_ROPE_BELOW_RANK == AUTO_ROPE_BELOW_R


@pytest.mark.parametrize("r", [1, 8, 63, 64, 128, 256])
def test_auto_resolves_like_the_library(r):
    assert resolve_auto_mora_type("auto", r) == canonical_mora_type("auto", r)
