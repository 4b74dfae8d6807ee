"""Named public datasets: where each one comes from, its checksum, and a download cache.

Every data file the binaries and the notebook use has a name here (`names()`), with the URL(s) it
is downloaded from (mirrors, tried in order), the sha256 it must have, and its licence.
`resolve(name, local, data_dir)` takes an explicit local path first (it must exist), then
`<data_dir>/<the dataset's relative path>` (the `$JAXEDIT_DATA` layout: `counterfact/`, `zsre/`,
`text/`, `downstream/`, `mmlu/`), then the cache, then downloads (`fetch`). The library never
guesses a data folder: `data_dir` comes from the caller (experiments/paths.py for the binaries).

Cache layout (`<cache>` = `hub.cache_dir()`: `$JAXEDIT_CACHE`, else `~/.cache/jaxedit`):

    <cache>/datasets/<name>/<file>          # what fetch() returns (the folder for several files)
    <cache>/datasets/<name>/<file>.sha256   # "<sha256>  <file>": the digest verified/recorded

Downloads use urllib (http, https, file) into a temporary file beside the target, are hashed as
they stream, unpacked when the source is an archive (one zip member, or folders of a tar) or a
pickle (loaded with every class lookup refused, so only plain lists/dicts/strings/numbers, and
written as JSON), and renamed into place only when complete and verified: an interrupted, truncated
or corrupt download never leaves a file under the final name.

Checksums: a source with a registered `sha256` is verified on download and on every cache hit (a
cached file that differs is downloaded again). A source without one (its upstream file was not
available to the project byte for byte) is trusted on first download: its digest is written to
the `.sha256` record and every later cache hit or re-download must match it (delete the record to
accept a changed upstream file). A file put into the cache by hand is recorded the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import sys
from pathlib import Path

from jaxedit import download, hub
from jaxedit.errors import InputError

logger = logging.getLogger(__name__)


class DatasetError(InputError):
    """A dataset could not be had: unknown name, missing local copy, or a failed download."""


class ChecksumError(DatasetError):
    """A download or a cached file does not have the sha256 it must have."""


class MissingDataError(DatasetError, FileNotFoundError):
    """An explicit local copy does not exist (also a `FileNotFoundError`)."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One file (or, for "tar-tree", one folder) of a dataset and where it comes from.

    Attributes:
      path: its name inside the dataset's cache folder.
      urls: mirrors, tried in order.
      sha256: digest of the file as stored (None: recorded on first download, verified after).
      kind: "file" (the download is the file), "zip-member" (one member of a zip archive),
        "pickle-json" (a pickled list/dict written as JSON), "tar-tree" (folders of a tar).
      members: "zip-member": the member's path (matched as a suffix); "tar-tree": the folders
        extracted (e.g. "data/dev/"), each stored without its parent ("dev/...").
      download_sha256: digest of the download when it differs from the stored file.
    """

    path: str
    urls: tuple[str, ...]
    sha256: str | None = None
    kind: str = "file"
    members: tuple[str, ...] = ()
    download_sha256: str | None = None


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A named dataset: its sources, where a local copy lies in the data layout, its licence."""

    name: str
    description: str
    sources: tuple[Source, ...]
    local: tuple[str, ...]  # paths relative to a data folder, the first that exists is used
    license: str


_ROME = "https://rome.baulab.info/data/dsets/"
_MEMIT = "https://memit.baulab.info/data/dsets/"  # the same files, MEMIT's host
_GH = "https://raw.githubusercontent.com/scalable-model-editing/"
_UME = _GH + "unified-model-editing/23d72b560e52992e675377cc2d1deed7a45b1cd0/"  # EMMET
_ENCORE = _GH + "knowledge-editing-regularization/6e3ba9a87978a23b6db2676ba7540216bf5d4fd0/"
# EasyEdit's editing-data release (Google Drive; its README links it for counterfact and zsre).
_EASYEDIT = (
    "https://drive.usercontent.google.com/download?id=1WRo2SqqgNtZF11Vq0sF5nL_-bHi18Wi4"
    "&export=download&confirm=t"
)
_WIKITEXT2_RAW = (
    "https://wikitext.smerity.com/wikitext-2-raw-v1.zip",  # the author's mirror
    "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-raw-v1.zip",  # original
)
_NO_LICENSE = "no licence stated by the repository (research use)"


def _both(path: str, first: str = _UME) -> tuple[str, ...]:
    """The file at `path` in the EMMET and ENCORE repositories (identical blobs), `first` first."""
    return (first + path, (_ENCORE if first == _UME else _UME) + path)


# (sha256 of the pickle in the repositories, sha256 of its JSON form = the shared data's file)
_GLUE = {
    "sst2": (
        "e09e2cc85b7182b322012f93951b3c12f5efacd455955675bb9af81433c58b7a",
        "6081acf088b682768fe22d7d6c67bea191d30652ac564f2ea5aa69e7cec01af7",
    ),
    "mrpc": (
        "11c20371e9e078397de2c5005d7358649ff7a6e830eac5af05bd232f4113875a",
        "9ac8f96a3bec5bae326117134f0cfb9128f90cd5d9cfc51cd864a07df7b14648",
    ),
    "cola": (
        "60647626a1552b7070495ae919603a35ba04474b106d132b47067b7884bb6dc3",
        "86a2d858366cd57d26422fa9077b6ec863ed4fac6acd770bd82003f2a6a572c8",
    ),
    "rte": (
        "f7e6b18e88067019e3ca5bddd4c6e54db35542f2822e72b34f7216441508eb84",
        "105f1725a2d89e0eba3247811b10341b96844ab80c745da95395e16921226cef",
    ),
    "nli": (
        "758f03cb511f1e5658648942818e35977998134a8ef35d46f475389b95c7e19b",
        "20983a6ba18e2b6421371b0831b7d1d05b62cca0ffd1d833ede8f6ea9d916969",
    ),
    "mmlu": (
        "fda21bebe7a7cdbaaac856ddb6e214bb78808ab845b64f25c5bf111474c6e715",
        "b6be56e82f025da1918562da09a8545b40a1820738b4f6bd6ebd5d679ac0ff68",
    ),
    "sentiment_analysis": (
        "5c8a278c8521047488ed7ed0ec00a5b9c350fbbcef1dc3603f9c596110f1618f",
        "65adc18b9e93de923e81a3b5e3d48ccc80dbb92a0288662d6c6b80dacd02d7b8",
    ),
    "dialogue": (
        "b908c05f2c7928afbce88843ff07bb84805c5dc51753236260283cba5bbb52a1",
        "3898a0a589f7f033638434f97c9b11f76d3e92bfe9697d15d9b4c2e46cf297c4",
    ),
}


def _file(name, description, local, license, path, urls, sha256=None, **kw) -> Dataset:
    return Dataset(name, description, (Source(path, tuple(urls), sha256, **kw),), local, license)


def _easyedit_counterfact(split: str) -> Dataset:
    """EasyEdit's flattened CounterFact (one record per edit), `counterfact-{split}.json` of its
    data zip."""
    member = f"counterfact/counterfact-{split}.json"
    description = f"CounterFact flattened one record per edit, EasyEdit's counterfact-{split}.json"
    return _file(
        f"counterfact-{split}",
        description,
        (member,),
        "MIT (CounterFact; EasyEdit)",
        f"counterfact-{split}.json",
        (_EASYEDIT,),
        kind="zip-member",
        members=(member,),
    )


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        _file(
            "counterfact",
            "CounterFact, ROME's nested records (21,919)",
            ("counterfact/counterfact.json",),
            "MIT (ROME, Meng et al. 2022)",
            "counterfact.json",
            (_ROME + "counterfact.json", _MEMIT + "counterfact.json"),
        ),
        *(_easyedit_counterfact(split) for split in ("edit", "train")),
        _file(
            "cf-generation-prompts",
            "generation prompts for Generation Entropy (62,346 strings)",
            ("counterfact/cf_generation_prompts.json",),
            _NO_LICENSE,
            "cf_generation_prompts.json",
            _both("data/cf_generation_prompts.pkl"),
            "d491e1de5820aabd9133f3ab8b9e2a6e3a7c89e4a154dafc29ab5b8063dc9f35",
            kind="pickle-json",
            download_sha256="7197d84632bb81c2c4680545e10e8d34f600d2bb41467a2970aa49399423864a",
        ),
        _file(
            "counterfact-qna",
            "question forms of the first 1,000 CounterFact cases",
            ("counterfact/counterfact_qna.json",),
            _NO_LICENSE,
            "counterfact_qna.json",
            _both("data/counterfact_qna.json"),
            "ccfb732fcb886b106fe2e16860b0c3e64ca0d263d479106977447a2d674658c7",
        ),
        _file(
            "counterfact-orders-mcf",
            "edit orders of the EMMET/ENCORE experiments (10 x 20,000 case positions)",
            ("counterfact/counterfact_sampled_unique_mcf_10_20000.json",),
            _NO_LICENSE,
            "counterfact_sampled_unique_mcf_10_20000.json",
            _both("data/counterfact_sampled_unique_mcf_10_20000.json"),
            "8ed45d7ce1e0bc6c1c4822b385ffeae93048bde55bbcc46a6e1207c91ef7cfd7",
        ),
        _file(
            "counterfact-orders-cf",
            "edit orders over CounterFact (cf variant, 10 x 20,000)",
            ("counterfact/counterfact_sampled_unique_cf_10_20000.json",),
            _NO_LICENSE,
            "counterfact_sampled_unique_cf_10_20000.json",
            _both("data/counterfact_sampled_unique_cf_10_20000.json"),
            "dcecf276656879f2862cd513b587f658fa1e1b0b9bae09890ddfb2f718811870",
        ),
        _file(
            "zsre",
            "zsRE eval split in the MEND/ROME schema (zsre_mend_eval.json, 19,086)",
            ("zsre/zsre_mend_eval.json",),
            "MIT (MEND/ROME)",
            "zsre_mend_eval.json",
            (_ROME + "zsre_mend_eval.json", _MEMIT + "zsre_mend_eval.json"),
        ),
        _file(
            "zsre-train",
            "zsRE train split in the MEND schema (zsre_mend_train.json; the shared data holds "
            "an 800-record excerpt, zsre_mend_train_800.json)",
            ("zsre/zsre_mend_train.json", "zsre/zsre_mend_train_800.json"),
            "MIT (MEND/ROME)",
            "zsre_mend_train.json",
            (_ROME + "zsre_mend_train.json", _MEMIT + "zsre_mend_train.json"),
        ),
        _file(
            "zsre-orders",
            "zsRE edit orders of the EMMET/ENCORE experiments (10 x 10,000)",
            ("zsre/zsre_sampled_unique_10_10000.json",),
            _NO_LICENSE,
            "zsre_sampled_unique_10_10000.json",
            _both("data/zsre_sampled_unique_10_10000.json"),
            "386bd744dde14e988f90ff1564f984d4bd08966bd9ab5f029e317d93c5043eb7",
        ),
        _file(
            "zsre-text-completion-prompts",
            "text-completion forms of zsRE questions (280)",
            ("zsre/zsre_text_completion_prompts.json",),
            _NO_LICENSE,
            "zsre_text_completion_prompts.json",
            _both("data/zsre_text_completion_prompts.json"),
            "2be493f1eb7fcf9b06ab4446cbbf527c2759385e97b54423ac55482f2a1fd7c7",
        ),
        _file(
            "wikitext-2-raw-test",
            "raw WikiText-2 test split (wiki.test.raw; the C0 corpus)",
            ("text/wikitext-2-raw.wiki.test.raw",),
            "CC BY-SA 3.0 (WikiText, Merity et al. 2016)",
            "wiki.test.raw",
            _WIKITEXT2_RAW,
            kind="zip-member",
            members=("wikitext-2-raw/wiki.test.raw",),
        ),
        Dataset(
            "downstream",
            "the few-shot downstream sets (glue_eval of EMMET/ENCORE) as {task}.json",
            tuple(
                Source(
                    f"{task}.json",
                    _both(f"glue_eval/dataset/{task}.pkl", first=_ENCORE),
                    js,
                    kind="pickle-json",
                    download_sha256=pk,
                )
                for task, (pk, js) in _GLUE.items()
            ),
            ("downstream",),
            "per task (GLUE SST-2/MRPC/CoLA/RTE, MultiNLI, MMLU MIT, ...); " + _NO_LICENSE,
        ),
        _file(
            "mmlu",
            "full MMLU: dev/, val/, test/ CSVs of 57 subjects",
            ("mmlu",),
            "MIT (Hendrycks et al. 2020)",
            "data",
            ("https://people.eecs.berkeley.edu/~hendrycks/data.tar",),
            kind="tar-tree",
            members=("data/dev/", "data/val/", "data/test/"),
        ),
    )
}


def names() -> list[str]:
    """The registered dataset names."""
    return sorted(DATASETS)


def get(name: str) -> Dataset:
    """The registry entry of `name`; DatasetError for an unknown name."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r} (fix: use one of {', '.join(names())})"
        ) from None


def dataset_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    """`<cache>/datasets/<name>`, where `fetch` keeps the dataset (cache: hub.cache_dir())."""
    root = Path(cache).expanduser() if cache is not None else hub.cache_dir()
    return root / "datasets" / get(name).name


def fetch(name: str, cache: str | os.PathLike | None = None) -> Path:
    """The dataset's file (or folder, for several files) in the cache, downloaded when missing.

    Args:
      name: a registered name (`names()`).
      cache: the cache root (default `hub.cache_dir()`); files go to `<cache>/datasets/<name>/`.

    Returns:
      The verified file, or the folder holding the dataset's files.

    Raises:
      DatasetError: unknown name, or no mirror could be downloaded (offline, HTTP error, truncated,
        not the expected archive); the message names the dataset, the URLs and the fix.
      ChecksumError: a download does not have the registered (or first recorded) sha256.
    """
    return _fetch(get(name), cache, [])


def resolve(
    name: str,
    local: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    cache: str | os.PathLike | None = None,
    hint: str | None = None,
) -> Path:
    """Where to read dataset `name`: `local`, else its place under `data_dir`, else the cache.

    Args:
      name: a registered name.
      local: an explicit file or folder (a flag's value); it must exist.
      data_dir: a data folder in the `$JAXEDIT_DATA` layout, used when it holds the dataset.
      cache: the download cache root (default `hub.cache_dir()`).
      hint: one more fix for the error messages (e.g. "pass --data_path").

    Returns:
      An existing path: `local`, `<data_dir>/<relative path>`, or the fetched copy.

    Raises:
      DatasetError: `local` does not exist, or the dataset is not local and cannot be downloaded.
    """
    ds = get(name)
    if local is not None and str(local) != "":
        path = Path(local).expanduser()
        if path.exists():
            return path
        raise MissingDataError(
            f"local copy {path} of dataset {name!r} does not exist (fix: give an existing path, "
            f"or none to use {ds.local[0]} of the data folder or the download cache)"
        )
    fixes = []
    if data_dir is not None:
        for rel in ds.local:
            path = Path(data_dir).expanduser() / rel
            if path.exists():
                return path
        fixes.append(f"put a copy at {Path(data_dir).expanduser() / ds.local[0]}")
    if hint:
        fixes.append(hint)
    return _fetch(ds, cache, fixes)


def _fetch(ds: Dataset, cache: str | os.PathLike | None, fixes: list[str]) -> Path:
    folder = dataset_dir(ds.name, cache)
    for src in ds.sources:
        _ensure(ds, src, folder, fixes)
    return folder / ds.sources[0].path if len(ds.sources) == 1 else folder


def _ensure(ds: Dataset, src: Source, folder: Path, fixes: list[str]) -> None:
    """Makes `folder/src.path` present and verified: a cache hit, else a download from a mirror."""
    out = folder / src.path
    record = out.with_name(out.name + ".sha256")
    recorded = download.read_record(record)
    tree = src.kind == "tar-tree"
    # For a file: the digest of the file; for a tree: of the archive it came from.
    expected = (src.download_sha256 if tree else src.sha256) or recorded
    notes = []
    if tree and out.is_dir():
        if recorded is None or recorded == expected:
            logger.debug("using cached %s", out)
            return
    elif out.is_file():
        actual = download.sha256_file(out)
        if expected is None or actual == expected:
            if recorded != actual:
                download.write_record(record, actual, out.name)
            return
        notes.append(f"the cached {out} has sha256 {actual}, expected {expected}")
        logger.warning("%s: downloading it again", notes[-1])

    folder.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, download.Failure]] = []
    for url in src.urls:
        logger.info("dataset %s: downloading %s", ds.name, url)
        try:
            digest = download.produce(
                src.kind,
                url,
                out,
                expected,
                members=src.members,
                download_sha256=src.download_sha256,
            )
        except download.Failure as err:
            logger.info("dataset %s: %s: %s", ds.name, url, err)
            failures.append((url, err))
            continue
        download.write_record(record, digest, out.name if not tree else posixpath.basename(url))
        logger.info("dataset %s: %s ready (sha256 %s)", ds.name, out, digest)
        return
    if not any(folder.iterdir()):
        folder.rmdir()  # leave no empty folder behind either
    what = "; ".join(notes + [f"{url}: {err}" for url, err in failures])
    how = [_manual_fix(src, out)]
    if src.sha256 is None and recorded is not None and any(f.checksum for _, f in failures):
        how.append(f"delete {record} if the upstream file changed on purpose")
    cls = ChecksumError if any(f.checksum for _, f in failures) else DatasetError
    raise cls(
        f"dataset {ds.name!r} could not be downloaded: {what} (fix: {', or '.join(how + fixes)})"
    )


def _manual_fix(src: Source, out: Path) -> str:
    url = src.urls[0]
    if src.kind == "zip-member":
        return f"download {url} by hand and put its member {src.members[0]} at {out}"
    if src.kind == "pickle-json":
        return f"put the JSON form of {url} (a pickled list) at {out}"
    if src.kind == "tar-tree":
        return f"download {url} by hand and extract its {', '.join(src.members)} into {out}"
    return f"download {url} by hand to {out}"


def main(argv: list[str]) -> int:
    """`python -m jaxedit.datasets [NAME ...]`: fetch each and print its path (no names: list)."""
    if not argv:
        for name in names():
            ds = DATASETS[name]
            print(f"{name:30s} {ds.description} [{ds.license}]")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for name in argv:
            print(fetch(name))
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
