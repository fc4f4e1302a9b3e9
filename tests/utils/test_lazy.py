import subprocess
import sys

import pytest

from landmark.utils.lazy import lazy_exports


def test_a_name_is_imported_from_its_submodule_when_first_read():
    getattr_ = lazy_exports("landmark.index", {"KINDS": "config"})
    assert getattr_("KINDS") == ("flat", "ivfpq")
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        getattr_("nothing")


def test_a_stage_package_imports_nothing_heavy_until_a_name_is_read():
    code = (
        "import sys, landmark.index; a = 'faiss' in sys.modules; landmark.index.Store; print(a, 'faiss' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
