"""Session checks for the data tests: every TFDS directory lives under pytest's tmp_path."""

import os
from pathlib import Path

import pytest

DEFAULT_TFDS_DIR = Path(os.path.expanduser("~/tensorflow_datasets"))


@pytest.fixture(autouse=True, scope="session")
def no_writes_to_the_default_tfds_dir():
    """Fail if the data tests create ~/tensorflow_datasets (all of them must pass data_dir)."""
    existed = DEFAULT_TFDS_DIR.exists()
    yield
    if not existed:
        assert not DEFAULT_TFDS_DIR.exists(), "a data test wrote into ~/tensorflow_datasets; pass data_dir=tmp_path"


@pytest.fixture(autouse=True, scope="session")
def quiet_tfds_progress_bars():
    import tensorflow_datasets as tfds

    tfds.display_progress_bar(False)
    yield
    tfds.display_progress_bar(True)
