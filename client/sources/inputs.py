"""What an input spec names: a file, a folder, a glob or a zip, as one sorted list of files.

Zips are read in place (a member is decompressed as it is read, never extracted to disk). A zip
found in a folder or by a glob counts as its members. Hidden files and the ``__MACOSX`` copies a
Mac adds to zips it makes are not inputs.
"""

from __future__ import annotations

import glob
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from music_analytics.client.csv_source import InputError

HEAD_BYTES = 64 * 1024  # read to tell a file's format


@dataclass(frozen=True)
class Member:
    """One file of the input."""

    name: str  # as shown to the user: the path, or ``export.zip:listens/2021/3.jsonl``
    relative: str  # its path inside the folder or zip (the file's name for a single file)
    size: int  # bytes (uncompressed, for a zip's member)
    opener: Callable[[], BinaryIO] = field(repr=False, compare=False)

    def open(self) -> BinaryIO:
        try:
            return self.opener()
        except OSError as exc:
            raise InputError(f"{self.name}: cannot read: {exc.strerror or exc}") from None
        except (zipfile.BadZipFile, EOFError) as exc:
            raise InputError(f"{self.name}: damaged zip member: {exc}") from None

    def head(self, size: int = HEAD_BYTES) -> bytes:
        with self.open() as f:
            try:
                return f.read(size)
            except (zipfile.BadZipFile, EOFError, OSError) as exc:
                raise InputError(f"{self.name}: cannot read: {exc}") from None

    @property
    def basename(self) -> str:
        return PurePosixPath(self.relative).name


def _hidden(relative: str) -> bool:
    parts = PurePosixPath(relative).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _file_member(path: Path, relative: str) -> Member:
    return Member(str(path), relative, path.stat().st_size, lambda: path.open("rb"))


def _zip_members(path: Path, display: str) -> list[Member]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir() and not _hidden(i.filename)]
    except zipfile.BadZipFile as exc:
        raise InputError(f"{display}: not a readable zip file: {exc}") from None
    except OSError as exc:
        raise InputError(f"{display}: cannot read: {exc.strerror or exc}") from None

    def opener(info: zipfile.ZipInfo) -> Callable[[], BinaryIO]:
        # Each open has its own ZipFile: the member keeps the archive's file open until it is closed.
        return lambda: zipfile.ZipFile(path).open(info)

    return [
        Member(f"{display}:{info.filename}", info.filename, info.file_size, opener(info))
        for info in sorted(infos, key=lambda i: i.filename)
    ]


def _expand(path: Path, relative: str) -> list[Member]:
    if zipfile.is_zipfile(path):
        return _zip_members(path, str(path))
    return [_file_member(path, relative)]


def list_members(spec: str | Path) -> tuple[list[Member], bool]:
    """The files ``spec`` names, in reading order, and whether it names more than one file
    (a folder, a glob or a zip) rather than a single file."""
    path = Path(spec)
    text = str(spec)
    if path.is_file():
        if zipfile.is_zipfile(path):
            members = _zip_members(path, text)
            if not members:
                raise InputError(f"{text}: the zip holds no files")
            return members, True
        return [_file_member(path, path.name)], False
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path).as_posix())),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        members = [m for p in files for m in _expand(p, p.relative_to(path).as_posix())]
        if not members:
            raise InputError(f"{text}: empty folder: no files to read")
        return members, True
    if any(c in text for c in "*?["):
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
        files = [p for p in matches if p.is_file() and not _hidden(p.name)]
        if not files:
            raise InputError(f"{text}: no file matches this pattern")
        return [m for p in files for m in _expand(p, p.name)], True
    if path.exists():
        raise InputError(f"{text}: not a regular file, folder or zip")
    raise InputError(f"{text}: no such file or folder")
