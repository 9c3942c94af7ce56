from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

from common import save_cpt_pair, save_pair  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A base/adapted pico-Llama pair (6 layers); layers 3 and 5 drift strongly. Read-only: copy to modify."""
    return save_pair(tmp_path_factory.mktemp("pair"), drift_layers={3: 0.5, 5: 0.5})


@pytest.fixture(scope="session")
def cpt_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A pico base and its real (tiny) CPT on finance text: K is defined. Read-only: copy to modify."""
    return save_cpt_pair(tmp_path_factory.mktemp("cpt_pair"))
