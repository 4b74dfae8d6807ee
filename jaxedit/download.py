"""Verified, atomic downloads with urllib, and the unpacking `jaxedit.datasets` needs.

`produce(kind, url, out, ...)` streams `url` (http, https or file) into a temporary file in
`out`'s folder, hashing as it goes, checks the length the server announced and the expected
sha256, unpacks it as `kind` says, and renames the result to `out` only when it is complete and
verified. Any failure (offline, HTTP error, truncated body, wrong digest, not the expected archive)
removes every temporary file and raises `Failure` with a one-line reason.

Kinds: "file" (the download is the file), "zip-member" (one member of a zip archive, matched as a
path suffix), "pickle-json" (a pickle of plain data, loaded with every class lookup refused so no
code can run, written as JSON the way `json.dumps(obj, ensure_ascii=False)` does), "tar-tree" (the
regular files under some folders of a tar archive, each folder stored without its parent: no links,
no absolute or `..` paths).

Digest records (`<file>.sha256`, "<sha256>  <name>", the `sha256sum` format) are written and read
by `write_record` / `read_record`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pickle
import posixpath
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

TIMEOUT_S = 60.0
# Some hosts (wikitext.smerity.com) refuse urllib's default agent.
USER_AGENT = "Mozilla/5.0 (compatible; jaxedit-datasets/0.1)"
KINDS = ("file", "zip-member", "pickle-json", "tar-tree")
_CHUNK = 1 << 20


class Failure(Exception):
    """One download failed; `checksum` when it delivered bytes with the wrong digest."""

    def __init__(self, message: str, checksum: bool = False):
        super().__init__(message)
        self.checksum = checksum


def produce(
    kind: str,
    url: str,
    out: Path,
    expected: str | None,
    *,
    members: tuple[str, ...] = (),
    download_sha256: str | None = None,
) -> str:
    """Downloads `url`, unpacks it as `kind` says, verifies it, renames it to `out`.

    Args:
      kind: one of KINDS.
      url: what to download.
      out: the final file (folder for "tar-tree"); its folder must exist.
      expected: sha256 of the stored file ("tar-tree": of the archive), or None.
      members: "zip-member": (the member,); "tar-tree": the folders to extract ("data/dev/").
      download_sha256: sha256 of the download when it is not the stored file, or None.

    Returns:
      The sha256 of the stored file ("tar-tree": of the archive).

    Raises:
      Failure: the download or the unpacking failed; nothing is left behind.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown download kind {kind!r} (one of {', '.join(KINDS)})")
    tree = kind == "tar-tree"
    archive: Path | None
    archive, digest = download(
        url, out.parent, download_sha256 or (expected if kind in ("file", "tar-tree") else None)
    )
    made: Path | None = None
    try:
        if kind == "file":
            made, archive = archive, None
        elif kind == "pickle-json":
            made = pickle_to_json(archive, out.parent)
        elif kind == "zip-member":
            made = zip_member(archive, members[0], out.parent)
        else:
            made = tar_tree(archive, members, out.parent)
        if kind in ("pickle-json", "zip-member"):  # the stored file is not the download
            digest = sha256_file(made)
            if expected is not None and digest != expected:
                raise Failure(f"sha256 {digest}, expected {expected}", checksum=True)
        if tree:
            made.chmod(0o755)  # mkdtemp makes it 0700
            if out.is_dir():
                shutil.rmtree(out)
            elif out.exists():
                out.unlink()
        os.replace(made, out)
        made = None
        return digest
    finally:
        if archive is not None:
            archive.unlink(missing_ok=True)
        if made is not None and made.is_dir():
            shutil.rmtree(made)
        elif made is not None:
            made.unlink(missing_ok=True)


def _temp_file(folder: Path) -> tuple[int, Path]:
    fd, name = tempfile.mkstemp(prefix=".download.", suffix=".part", dir=folder)
    os.chmod(name, 0o644)  # mkstemp makes it 0600; the cache holds public data
    return fd, Path(name)


def download(url: str, folder: Path, expected: str | None = None) -> tuple[Path, str]:
    """Streams `url` to a temporary file in `folder`: (its path, its sha256).

    Raises:
      Failure: unreachable, HTTP error, fewer bytes than the announced length, or a sha256 other
        than `expected`; the temporary file is removed.
    """
    fd, tmp = _temp_file(folder)
    try:
        digest, size = hashlib.sha256(), 0
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            while chunk := resp.read(_CHUNK):
                digest.update(chunk)
                f.write(chunk)
                size += len(chunk)
        if length is not None and length.strip().isdigit() and size != int(length):
            raise Failure(f"the download was cut off after {size} of {int(length)} bytes")
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise Failure(f"sha256 {actual}, expected {expected}", checksum=True)
        return tmp, actual
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, Failure):
            raise
        if isinstance(err, urllib.error.HTTPError):
            raise Failure(f"HTTP {err.code} {err.reason}") from None
        if isinstance(err, urllib.error.URLError):
            raise Failure(f"unreachable ({err.reason}; offline?)") from None
        if isinstance(err, http.client.IncompleteRead):
            raise Failure(f"the download was cut off after {len(err.partial)} bytes") from None
        if isinstance(err, (OSError, http.client.HTTPException)):
            raise Failure(f"{type(err).__name__}: {err}") from None
        raise


class _PlainDataUnpickler(pickle.Unpickler):
    """Refuses every class/function lookup: only lists, dicts, strings and numbers load."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused {module}.{name}: only plain data is accepted")


def pickle_to_json(archive: Path, folder: Path) -> Path:
    """A temporary file in `folder` with the JSON form of the plain-data pickle `archive`."""
    try:
        with archive.open("rb") as f:
            obj = _PlainDataUnpickler(f).load()
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, IndexError) as err:
        raise Failure(f"not a pickle of plain data ({type(err).__name__}: {err})") from None
    fd, tmp = _temp_file(folder)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return tmp


def zip_member(archive: Path, member: str, folder: Path) -> Path:
    """A temporary file in `folder` with the member of `archive` whose path ends with `member`."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise Failure(
            "not a zip archive (the server sent something else, e.g. a confirmation page)"
        ) from None
    with zf:
        found = sorted(
            (n for n in zf.namelist() if n == member or n.endswith("/" + member)),
            key=lambda n: (n.startswith("__MACOSX/"), len(n)),
        )
        if not found:
            raise Failure(f"the archive has no member {member}")
        fd, tmp = _temp_file(folder)
        with os.fdopen(fd, "wb") as out, zf.open(found[0]) as src:
            shutil.copyfileobj(src, out, _CHUNK)
    return tmp


def tar_tree(archive: Path, prefixes: tuple[str, ...], folder: Path) -> Path:
    """A temporary folder in `folder` with the regular files of `archive` under `prefixes`."""
    tmp = Path(tempfile.mkdtemp(prefix=".download.", suffix=".part", dir=folder))
    count = 0
    try:
        with tarfile.open(archive) as tf:
            for m in tf:
                name = posixpath.normpath(m.name)
                prefix = next((p for p in prefixes if (name + "/").startswith(p)), None)
                if prefix is None or not m.isfile():
                    continue
                rel = name[len(posixpath.dirname(prefix.rstrip("/"))) :].lstrip("/")
                parts = rel.split("/")
                if any(p in ("", ".", "..") for p in parts):
                    raise Failure(f"unsafe member path {m.name!r}")
                dest = tmp.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                assert src is not None  # a regular file
                with src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                count += 1
        if not count:
            raise Failure(f"the archive has no files under {', '.join(prefixes)}")
    except BaseException as err:
        shutil.rmtree(tmp)
        if isinstance(err, (tarfile.TarError, EOFError)):
            raise Failure(f"not a readable tar archive ({err})") from None
        raise
    return tmp


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at `path`."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_record(path: Path) -> str | None:
    """The digest recorded in `path` ("<sha256>  <name>"), or None when absent or unreadable."""
    try:
        word = path.read_text().split()[0].lower()
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    return word if len(word) == 64 and all(c in "0123456789abcdef" for c in word) else None


def write_record(path: Path, digest: str, name: str) -> None:
    """Writes "<digest>  <name>" to `path` atomically; a read-only cache is not an error."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{digest}  {name}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
