"""Fetch the official MovieLens archives (GroupLens), verify them, and unzip them.

``download("ml-100k", root)`` returns ``root / "ml-100k"`` once the expected files are there;
it does nothing when they already are. Without network access it fails at once (10 s timeout)
with a DataError that says which files to place where (``files_hint``).

Checksums: the sha256 values of the official archives are the ones pinned by TensorFlow
Datasets (``tensorflow_datasets/url_checksums/movielens.txt``) and by many independent
projects; the md5 values are the ones GroupLens publishes beside the archives
(``ml-100k.zip.md5``, ``ml-1m.zip.md5``). Both are checked.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from recsys.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DATASETS: dict[str, dict] = {
    "ml-100k": {
        "url": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "sha256": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        "md5": "0e33842e24a9c977be4e0107933c0723",
        "bytes": 4_924_029,
        "folder": "ml-100k",  # the folder inside the zip, and under root
        "files": ("u.data", "u.item", "u.user", "u.genre", "u.occupation"),
    },
    "ml-1m": {
        "url": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "sha256": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        "md5": "c4d9eecfca2ab87c1945afe126590906",
        "bytes": 5_917_549,
        "folder": "ml-1m",
        "files": ("ratings.dat", "movies.dat", "users.dat"),
    },
}
TIMEOUT_S = 10.0
_NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)


# Datasets that cannot be downloaded from an official URL: the files to place by hand.
LOCAL_ONLY: dict[str, tuple[str, ...]] = {
    "bibtex": ("xc_train.txt", "xc_test.txt"),
    "delicious": ("delicious-train.arff", "delicious-test.arff", "delicious.xml"),  # the Mulan files
}


def _spec(name: str) -> dict:
    if name not in DATASETS:
        raise ConfigError(
            f"dataset {name!r}: not downloadable; known names: {sorted(DATASETS)}. "
            "Fix: use one of those names, or place the files yourself (see files_hint)."
        )
    return DATASETS[name]


def _present(folder: Path, files: tuple[str, ...]) -> bool:
    """All expected files are there (each plain or gzipped)."""
    return all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in files)


def files_hint(name: str, root: str | os.PathLike) -> str:
    """Which files to place where for dataset ``name`` under ``root`` (the text after 'Fix:').

    Used by ``download`` when offline and by the dataset registry when files are missing.
    """
    folder = Path(root) / name
    if name in LOCAL_ONLY:
        return (f"place {', '.join(LOCAL_ONLY[name])} (each plain or .gz) in {folder}/, or set "
                f"RECSYS_DATA to a folder that already holds {name}/")
    spec = _spec(name)
    folder = Path(root) / spec["folder"]
    return (
        f"place {', '.join(spec['files'])} (each plain or .gz) in {folder}/, e.g. download "
        f"{spec['url']} on a machine with internet access (sha256 {spec['sha256']}), unzip it "
        f"into {Path(root)}/ and copy the folder here; or set RECSYS_DATA to a folder that "
        f"already holds {spec['folder']}/"
    )


def _fetch(url: str, dest: Path, timeout: float) -> tuple[str, str]:
    """Stream ``url`` into ``dest``; return its (sha256, md5)."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
        while chunk := resp.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
            out.write(chunk)
    return sha.hexdigest(), md5.hexdigest()


def _safe_extract(archive: Path, root: Path) -> None:
    """Unzip ``archive`` into ``root``, refusing members that would land outside it."""
    root_r = root.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            target = (root / member).resolve()
            if root_r != target and root_r not in target.parents:
                raise DataError(
                    f"{archive}: member {member!r} would be written outside {root}; archives "
                    "must hold relative paths only. Fix: delete the archive and download it again."
                )
        zf.extractall(root)


def download(
    name: str, root: str | os.PathLike, timeout: float = TIMEOUT_S, force: bool = False
) -> Path:
    """Download, verify (sha256 and md5) and unzip dataset ``name`` into ``root``.

    Args:
        name: a key of ``DATASETS`` ("ml-100k", "ml-1m").
        root: the data folder (e.g. $RECSYS_DATA); the dataset lands in ``root / name``.
        timeout: seconds for the connection and each read.
        force: download again even if the files are already there.

    Returns:
        The dataset folder ``root / DATASETS[name]["folder"]``.

    Raises:
        DataError: offline / unreachable (with ``files_hint``), checksum mismatch, bad zip, or
            expected files missing after unzipping.
    """
    spec = _spec(name)
    root = Path(root).expanduser()
    folder = root / spec["folder"]
    if not force and _present(folder, spec["files"]):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"{spec['folder']}.zip"
    part = archive.with_name(archive.name + ".part")
    log.info("downloading %s -> %s", spec["url"], archive)
    try:
        sha, md5 = _fetch(spec["url"], part, timeout)
    except _NETWORK_ERRORS as e:
        part.unlink(missing_ok=True)
        raise DataError(
            f"{spec['url']}: download of {name} failed ({type(e).__name__}: {e}); network "
            f"access is needed to fetch it. Fix: {files_hint(name, root)}."
        ) from e
    if sha != spec["sha256"] or md5 != spec["md5"]:
        part.unlink(missing_ok=True)
        raise DataError(
            f"{archive.name}: checksum mismatch for {spec['url']} (sha256 {sha}, expected "
            f"{spec['sha256']}; md5 {md5}, expected {spec['md5']}); the archive is damaged or "
            f"not the official release. Fix: retry the download; if it keeps failing, "
            f"{files_hint(name, root)}."
        )
    part.replace(archive)
    try:
        _safe_extract(archive, root)
    except zipfile.BadZipFile as e:
        raise DataError(
            f"{archive}: not a valid zip archive ({e}). Fix: delete it and download again."
        ) from e
    if not _present(folder, spec["files"]):
        raise DataError(
            f"{archive}: unzipped, but {folder} lacks some of {list(spec['files'])}. "
            f"Fix: {files_hint(name, root)}."
        )
    return folder
