import pytest

from landmark.models.config import HEADS
from landmark.utils.config import ConfigError
from landmark.utils.registry import Registry


def test_a_name_loads_its_target_on_first_use_and_an_unknown_one_names_the_choices():
    reg = Registry("thing.kind", {"sqrt": "math:sqrt"})
    assert "sqrt" in reg and "cbrt" not in reg and reg.names() == ("sqrt",)
    assert reg["sqrt"](9) == 3
    with pytest.raises(ConfigError, match=r"thing.kind: expected one of \['sqrt'\], got 'cbrt'"):
        reg["cbrt"]


def test_a_plugin_registers_a_kind_and_cannot_take_a_name_that_is_someone_elses():
    reg = Registry("thing.kind", {"sqrt": "math:sqrt"})
    reg.register("floor", "math:floor")
    reg.register("floor", "math:floor")  # the same registration again is harmless
    assert reg["floor"](2.7) == 2 and list(reg) == ["sqrt", "floor"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("sqrt", "math:floor")


def test_every_registered_head_kind_loads():
    assert set(HEADS) == {"arcface", "subcenter_arcface", "cosface", "softmax", "bce", "npairs"}
    assert all(HEADS[name].loss in ("cross_entropy", "bce", "npairs") for name in HEADS)
