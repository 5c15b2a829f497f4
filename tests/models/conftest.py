"""Fixtures shared by the model tests: the tiny single- and multi-task datasets."""
import pytest

from tiny_data import make_tiny_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def mt_data(tmp_path_factory):
    return make_tiny_data(str(tmp_path_factory.mktemp("tiny_mt")), multitask=True)
