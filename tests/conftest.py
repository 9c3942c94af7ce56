from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

from common import save_cpt_pair, save_pair  # noqa: E402

# Fixtures too costly for `make test-fast` (`-m "not slow"`): two CPT runs, a Ray instance. Every test that uses
# one, directly or through another fixture, is marked `slow` here, so a fast test cannot pull one in by accident.
SLOW_FIXTURES = {"cpt_pair", "ray_session"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A base/adapted pico-Llama pair (6 layers); layers 3 and 5 drift strongly. Read-only: copy to modify."""
    return save_pair(tmp_path_factory.mktemp("pair"), drift_layers={3: 0.5, 5: 0.5})


@pytest.fixture(scope="session")
def cpt_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A pico base and its real (tiny) CPT on finance text: K is defined. Read-only: copy to modify."""
    return save_cpt_pair(tmp_path_factory.mktemp("cpt_pair"))
