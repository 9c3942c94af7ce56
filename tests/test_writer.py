"""writer.py: the free-space check that runs before any merge or run writes a model."""

from __future__ import annotations

import shutil

import pytest

from spear_mm.errors import SpearError
from spear_mm.io.outputs import check_free_space


def test_free_space_check_refuses_what_the_disk_cannot_hold(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    check_free_space(tmp_path / "not" / "yet" / "there", 1024)  # small: passes, probing the nearest existing parent
    with pytest.raises(SpearError, match=r"not enough disk space .* need .* GB free on that disk"):
        check_free_space(tmp_path / "out", free + 10**12)
    assert not (tmp_path / "out").exists()  # nothing was written
