"""Data set archives: unpacked once, safely (nothing escapes), atomically and resumably."""

from __future__ import annotations

import json
import stat
import threading
import zipfile
from pathlib import Path

import pytest

from mbt.data import archive as archive_mod
from mbt.data.archive import MARKER, open_data_path, unpack_archive

FILES = {
    "PJZUF-C101/video/Drum/a.mp4": b"video a" * 100,
    "PJZUF-C101/video/Drum/b.mp4": b"video b" * 100,
    "PJZUF-C101/audio/Drum/a.wav": b"audio a" * 100,
    "PJZUF-C101/README.md": b"readme",
}


def make_zip(path: Path, files: dict[str, bytes] = FILES, extra=()) -> Path:
    """A zip of ``files`` (plus raw ``ZipInfo`` entries in ``extra``)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("PJZUF-C101/", b"")  # a directory entry, as zip tools write them
        for name, data in files.items():
            zf.writestr(name, data)
        for info, data in extra:
            zf.writestr(info, data)
    return path


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MARKER
    }


def test_unpacks_once_beside_the_archive(tmp_path):
    zpath = make_zip(tmp_path / "pjzufc101.zip", extra=[(zipfile.ZipInfo("__MACOSX/._a"), b"x")])
    first = unpack_archive(zpath)
    assert first.folder == tmp_path / "pjzufc101" and first.written == first.files == 4
    assert tree(first.folder) == FILES  # __MACOSX skipped
    marker = json.loads((first.folder / MARKER).read_text())
    assert marker["complete"] and marker["size"] == zpath.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pjzufc101", "pjzufc101.zip"]
    again = unpack_archive(zpath)
    assert again.written == 0 and "already unpacked" in again.describe()
    assert open_data_path(zpath, announce=False) == first.folder
    assert open_data_path(tmp_path / "pjzufc101") == tmp_path / "pjzufc101"  # a folder: as is


def test_into_another_folder(tmp_path):
    zpath = make_zip(tmp_path / "pjzufc101.zip")
    out = unpack_archive(zpath, into=tmp_path / "cache")
    assert out.folder == tmp_path / "cache" / "pjzufc101" and tree(out.folder) == FILES


def _link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "entry, why",
    [
        (zipfile.ZipInfo("../evil.txt"), "a '..' part"),
        (zipfile.ZipInfo("data/../../evil.txt"), "a '..' part"),
        (zipfile.ZipInfo("..\\evil.txt"), "a '..' part"),
        (zipfile.ZipInfo("/etc/evil"), "an absolute path"),
        (zipfile.ZipInfo("C:/Windows/evil"), "an absolute path"),
        (_link("PJZUF-C101/video/link.mp4"), "a symbolic link"),
    ],
)
def test_unsafe_members_refuse_the_whole_archive(tmp_path, entry, why):
    zpath = make_zip(tmp_path / "bad.zip", extra=[(entry, b"/etc/passwd")])
    with pytest.raises(ValueError, match=rf"bad\.zip: member .* is {why}; refusing"):
        unpack_archive(zpath)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]  # nothing written


def test_an_interrupted_unpack_continues_and_checks_what_is_there(tmp_path, monkeypatch):
    zpath = make_zip(tmp_path / "pjzufc101.zip")
    real = archive_mod._write_member
    calls = []

    def dies_on_the_third(*args):
        calls.append(args[1].filename)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the unpack
        return real(*args)

    monkeypatch.setattr(archive_mod, "_write_member", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        unpack_archive(zpath)
    assert not (tmp_path / "pjzufc101").exists()  # never a half data set under the real name
    work = tmp_path / ".pjzufc101.unpacking"
    assert len(tree(work)) == 2
    # A file of the right size but wrong bytes (a crash lost its data) is written again.
    damaged = work / calls[0]
    damaged.write_bytes(b"X" * damaged.stat().st_size)
    monkeypatch.setattr(archive_mod, "_write_member", real)
    out = unpack_archive(zpath)
    assert (
        out.written == 3 and out.files == 4 and "resumed: 1 were already there" in (out.describe())
    )
    assert tree(out.folder) == FILES and not work.exists()


def test_a_work_folder_of_another_archive_starts_afresh(tmp_path):
    zpath = make_zip(tmp_path / "pjzufc101.zip")
    work = tmp_path / ".pjzufc101.unpacking"
    (work / "PJZUF-C101").mkdir(parents=True)
    (work / "PJZUF-C101" / "stale.mp4").write_bytes(b"old")
    (work / MARKER).write_text(json.dumps({"archive": "pjzufc101.zip", "size": 1, "mtime_ns": 0}))
    out = unpack_archive(zpath)
    assert tree(out.folder) == FILES  # the stale file is gone


def test_folders_it_did_not_write_are_never_overwritten(tmp_path):
    zpath = make_zip(tmp_path / "pjzufc101.zip")
    (tmp_path / "pjzufc101").mkdir()
    with pytest.raises(ValueError, match="already exists and was not unpacked by mbt"):
        unpack_archive(zpath)
    (tmp_path / "pjzufc101").rmdir()
    unpack_archive(zpath)
    make_zip(zpath, {**FILES, "PJZUF-C101/new.txt": b"new"})  # a newer download
    with pytest.raises(ValueError, match="holds another version of pjzufc101.zip"):
        unpack_archive(zpath)


def test_too_little_space_and_corrupt_archives_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.zip: not a readable zip archive"):
        unpack_archive(tmp_path / "junk.zip")
    zpath = make_zip(tmp_path / "pjzufc101.zip")
    monkeypatch.setattr(archive_mod.shutil, "disk_usage", lambda p: type("U", (), {"free": 10}))
    with pytest.raises(ValueError, match=r"needs 0\.00 GB, only 0\.00 GB free"):
        unpack_archive(zpath)


def test_a_corrupt_member_stops_the_unpack_naming_it(tmp_path):
    zpath = tmp_path / "pjzufc101.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("video/Drum/a.mp4", b"A" * 1000)
    raw = bytearray(zpath.read_bytes())
    raw[raw.index(b"A" * 1000) + 500] = ord("B")  # one flipped byte: the CRC-32 no longer fits
    zpath.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"member 'video/Drum/a.mp4' is corrupt \(Bad CRC-32"):
        unpack_archive(zpath)
    assert not (tmp_path / "pjzufc101").exists()


def test_concurrent_callers_unpack_once(tmp_path):
    zpath = make_zip(tmp_path / "pjzufc101.zip")
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(unpack_archive(zpath))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.written for r in results) == [0, 0, 4]
    assert tree(tmp_path / "pjzufc101") == FILES
