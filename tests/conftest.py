import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from tiny_data import make_tiny_data  # noqa: E402


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_data(str(tmp_path / "tiny"))
