"""Tests of jaxedit.datasets / jaxedit.download on local files: file:// URLs, a local HTTP server
that cuts its body short, and an unreachable port (no network is needed)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import pickle
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from jaxedit import datasets, download
from jaxedit.datasets import ChecksumError, Dataset, DatasetError, MissingDataError, Source
from jaxedit.errors import InputError
from jaxedit.testing import require_shared

PAYLOAD = b'[{"prompt": "{} plays", "subject": "Toko Yasuda", "target_new": "piano"}]'
SHA = hashlib.sha256(PAYLOAD).hexdigest()
OFFLINE = "http://127.0.0.1:9/x"  # the discard port: connection refused


def _register(monkeypatch, name: str, *sources: Source, local=("t/file.json",)) -> Dataset:
    ds = Dataset(name, "a test dataset", tuple(sources), local, "test")
    monkeypatch.setitem(datasets.DATASETS, name, ds)
    return ds


def _serve_file(tmp_path: Path, data: bytes = PAYLOAD, name: str = "upstream.json") -> Path:
    path = tmp_path / "upstream" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_registry_entries_are_complete():
    assert len(datasets.names()) >= 12
    for name in datasets.names():
        ds = datasets.get(name)
        assert ds.name == name and ds.description and ds.license and ds.local, name
        for src in ds.sources:
            assert src.kind in download.KINDS, name
            assert src.urls and all(u.startswith("https://") for u in src.urls), name
            for digest in (src.sha256, src.download_sha256):
                assert digest is None or (len(digest) == 64 and int(digest, 16) >= 0), name
            assert bool(src.members) == (src.kind in ("zip-member", "tar-tree")), name
    with pytest.raises(DatasetError, match=r"unknown dataset 'nope'.*counterfact-edit"):
        datasets.get("nope")


def test_registered_checksums_are_those_of_the_shared_files():
    data = require_shared("data")
    checked = 0
    for name in datasets.names():
        ds = datasets.get(name)
        for src in ds.sources:
            if src.sha256 is None:
                continue
            local = data / ds.local[0]
            path = local / src.path if len(ds.sources) > 1 else local
            if path.is_file():
                assert download.sha256_file(path) == src.sha256, (name, path)
                checked += 1
    assert checked >= 13  # 5 counterfact/zsre files + 8 downstream sets


def test_fetch_downloads_verifies_and_then_hits_the_cache(tmp_path, monkeypatch):
    upstream = _serve_file(tmp_path)
    _register(monkeypatch, "t", Source("file.json", (upstream.as_uri(),), SHA))
    path = datasets.fetch("t", cache=tmp_path / "cache")
    assert path == tmp_path / "cache" / "datasets" / "t" / "file.json"
    assert path.read_bytes() == PAYLOAD
    assert (path.parent / "file.json.sha256").read_text() == f"{SHA}  file.json\n"
    assert _leftovers(path.parent) == ["file.json", "file.json.sha256"]
    upstream.unlink()  # a second download would now fail
    assert datasets.fetch("t", cache=tmp_path / "cache") == path
    # $JAXEDIT_CACHE is the default cache root
    monkeypatch.setenv("JAXEDIT_CACHE", str(tmp_path / "cache"))
    assert datasets.fetch("t") == path


def test_checksum_mismatch_raises_and_leaves_nothing(tmp_path, monkeypatch):
    upstream = _serve_file(tmp_path)
    _register(monkeypatch, "t", Source("file.json", (upstream.as_uri(),), "0" * 64))
    with pytest.raises(ChecksumError) as err:
        datasets.fetch("t", cache=tmp_path / "cache")
    msg = str(err.value)
    assert "'t'" in msg and upstream.as_uri() in msg and f"sha256 {SHA}, expected {'0' * 64}" in msg
    assert "(fix: download" in msg and "by hand to" in msg
    assert _leftovers(tmp_path / "cache" / "datasets" / "t") == []


class _ShortBody(http.server.BaseHTTPRequestHandler):
    """Announces 1,000 bytes, sends 500, closes the connection."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 500)

    def log_message(self, *args):
        pass


def test_truncated_download_leaves_no_partial_file(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ShortBody)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/file.json"
        _register(monkeypatch, "t", Source("file.json", (url,)))  # no checksum: TOFU
        with pytest.raises(DatasetError, match="cut off after 500 of 1000 bytes"):
            datasets.fetch("t", cache=tmp_path / "cache")
    finally:
        server.shutdown()
        server.server_close()
    assert _leftovers(tmp_path / "cache" / "datasets" / "t") == []  # no .part, no record


def test_offline_is_an_input_error_naming_the_dataset_url_and_fix(tmp_path, monkeypatch):
    _register(monkeypatch, "t", Source("file.json", (OFFLINE,), SHA))
    with pytest.raises(InputError) as err:
        datasets.resolve("t", data_dir=tmp_path / "data", cache=tmp_path / "cache", hint="pass -x")
    assert isinstance(err.value, DatasetError) and not isinstance(err.value, ChecksumError)
    msg = str(err.value)
    assert "dataset 't' could not be downloaded" in msg and OFFLINE in msg and "unreachable" in msg
    cached = tmp_path / "cache" / "datasets" / "t" / "file.json"
    assert f"download {OFFLINE} by hand to {cached}" in msg
    assert f"put a copy at {tmp_path / 'data' / 't' / 'file.json'}" in msg and "pass -x" in msg
    assert "\n" not in msg
    assert _leftovers(cached.parent) == []


def test_mirrors_are_tried_in_order(tmp_path, monkeypatch):
    upstream = _serve_file(tmp_path)
    _register(monkeypatch, "t", Source("file.json", (OFFLINE, upstream.as_uri()), SHA))
    assert datasets.fetch("t", cache=tmp_path / "cache").read_bytes() == PAYLOAD


def test_without_a_checksum_the_first_download_is_recorded_and_enforced(tmp_path, monkeypatch):
    upstream = _serve_file(tmp_path)
    _register(monkeypatch, "t", Source("file.json", (upstream.as_uri(),)))
    path = datasets.fetch("t", cache=tmp_path / "cache")
    record = path.with_name("file.json.sha256")
    assert download.read_record(record) == SHA
    path.write_bytes(b"corrupted")  # a changed cache file is downloaded again
    assert datasets.fetch("t", cache=tmp_path / "cache").read_bytes() == PAYLOAD
    upstream.write_bytes(PAYLOAD + b" ")  # upstream changed since the first download
    path.unlink()
    with pytest.raises(ChecksumError, match=f"expected {SHA}.*delete {record}"):
        datasets.fetch("t", cache=tmp_path / "cache")
    assert not path.exists()
    record.unlink()  # accepting the new upstream file
    assert datasets.fetch("t", cache=tmp_path / "cache").read_bytes() == PAYLOAD + b" "


def test_a_file_put_into_the_cache_by_hand_is_used_and_recorded(tmp_path, monkeypatch):
    _register(monkeypatch, "t", Source("file.json", (OFFLINE,)))
    path = tmp_path / "cache" / "datasets" / "t" / "file.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(PAYLOAD)
    assert datasets.fetch("t", cache=tmp_path / "cache") == path
    assert download.read_record(path.with_name("file.json.sha256")) == SHA


def test_resolve_takes_local_then_data_dir_then_cache(tmp_path, monkeypatch):
    upstream = _serve_file(tmp_path)
    _register(monkeypatch, "t", Source("file.json", (upstream.as_uri(),), SHA))
    cache = tmp_path / "cache"
    mine = tmp_path / "mine.json"
    mine.write_bytes(b"[]")
    assert datasets.resolve("t", mine, tmp_path / "data", cache=cache) == mine
    with pytest.raises(FileNotFoundError, match=f"local copy {tmp_path / 'missing.json'} of") as e:
        datasets.resolve("t", tmp_path / "missing.json", cache=cache)
    assert isinstance(e.value, MissingDataError)
    in_data = tmp_path / "data" / "t" / "file.json"
    in_data.parent.mkdir(parents=True)
    in_data.write_bytes(b"[]")
    assert datasets.resolve("t", None, tmp_path / "data", cache=cache) == in_data
    assert datasets.resolve("t", "", tmp_path / "data", cache=cache) == in_data
    assert not cache.exists()  # nothing was downloaded so far
    fetched = datasets.resolve("t", None, tmp_path / "elsewhere", cache=cache)
    assert fetched == cache / "datasets" / "t" / "file.json"


def test_later_local_names_are_accepted(tmp_path, monkeypatch):
    _register(
        monkeypatch, "t", Source("file.json", (OFFLINE,)), local=("t/full.json", "t/part.json")
    )
    part = tmp_path / "t" / "part.json"
    part.parent.mkdir()
    part.write_bytes(b"[]")
    assert datasets.resolve("t", data_dir=tmp_path, cache=tmp_path / "cache") == part


def test_pickles_become_the_shared_json_files_byte_for_byte(tmp_path, monkeypatch):
    """The registered output checksums of the pickle sources hold for the JSON written from them
    (the pickles are rebuilt here from the shared JSON: the upstream ones are not available)."""
    data = require_shared("data")
    for name in ("downstream", "cf-generation-prompts"):
        ds = datasets.get(name)
        sources = []
        for src in ds.sources:
            local = data / ds.local[0]
            local = local / src.path if len(ds.sources) > 1 else local
            pkl = _serve_file(tmp_path, pickle.dumps(json.loads(local.read_bytes())), src.path)
            sources.append(Source(src.path, (pkl.as_uri(),), src.sha256, kind="pickle-json"))
        monkeypatch.setitem(datasets.DATASETS, name, Dataset(name, "", tuple(sources), (), "-"))
        path = datasets.fetch(name, cache=tmp_path / "cache")
        for src in sources:
            stored = path / src.path if path.is_dir() else path
            assert download.sha256_file(stored) == src.sha256, stored


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    upstream = _serve_file(tmp_path, pickle.dumps(os.getcwd), "evil.pkl")
    _register(monkeypatch, "t", Source("file.json", (upstream.as_uri(),), kind="pickle-json"))
    with pytest.raises(DatasetError, match=r"not a pickle of plain data .*refused posix\.getcwd"):
        datasets.fetch("t", cache=tmp_path / "cache")
    assert _leftovers(tmp_path / "cache" / "datasets" / "t") == []


def test_zip_member(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("__MACOSX/wikitext-2-raw/wiki.test.raw", b"junk")
        zf.writestr("wikitext-2-raw/wiki.test.raw", b" = Robert Boulter = \n")
        zf.writestr("wikitext-2-raw/wiki.train.raw", b"other")
    upstream = _serve_file(tmp_path, buf.getvalue(), "w.zip")
    member = ("wikitext-2-raw/wiki.test.raw",)
    _register(
        monkeypatch, "t", Source("w.raw", (upstream.as_uri(),), kind="zip-member", members=member)
    )
    path = datasets.fetch("t", cache=tmp_path / "cache")
    assert path.read_bytes() == b" = Robert Boulter = \n"
    assert _leftovers(path.parent) == ["w.raw", "w.raw.sha256"]  # the archive is gone
    html = _serve_file(tmp_path, b"<html>Google Drive - Virus scan warning</html>", "page")
    _register(
        monkeypatch, "u", Source("w.raw", (html.as_uri(),), kind="zip-member", members=member)
    )
    with pytest.raises(DatasetError, match=r"not a zip archive.*put its member .* at "):
        datasets.fetch("u", cache=tmp_path / "cache")
    assert _leftovers(tmp_path / "cache" / "datasets" / "u") == []


def test_tar_tree(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, text in {
            "data/dev/anatomy_dev.csv": b"q,a,b,c,d,A\n",
            "data/test/anatomy_test.csv": b"q,a,b,c,d,B\n",
            "data/auxiliary_train/big.csv": b"skipped\n",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tf.addfile(info, io.BytesIO(text))
        link = tarfile.TarInfo("data/dev/link.csv")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    upstream = _serve_file(tmp_path, buf.getvalue(), "data.tar")
    members = ("data/dev/", "data/test/")
    _register(
        monkeypatch, "t", Source("data", (upstream.as_uri(),), kind="tar-tree", members=members)
    )
    path = datasets.fetch("t", cache=tmp_path / "cache")
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*.csv")) == [
        "dev/anatomy_dev.csv",
        "test/anatomy_test.csv",
    ]
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    assert (path.parent / "data.sha256").read_text() == f"{digest}  data.tar\n"
    upstream.unlink()
    assert datasets.fetch("t", cache=tmp_path / "cache") == path  # cache hit


def test_command_line(tmp_path, monkeypatch, capsys):
    assert datasets.main([]) == 0
    assert "wikitext-2-raw-test" in capsys.readouterr().out
    _register(monkeypatch, "t", Source("file.json", (OFFLINE,)))
    monkeypatch.setenv("JAXEDIT_CACHE", str(tmp_path / "cache"))
    assert datasets.main(["t"]) == 2
    assert capsys.readouterr().err.startswith("error: dataset 't' could not be downloaded")
