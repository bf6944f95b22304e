"""Uploads do not fill the page cache. With `direct_io` (the default) whole blocks bypass it;
without, ftpd starts writeback as the data arrives, drops pages already written, and with fsync
leaves nothing of the finished file cached. A file written the
ordinary way beside it, also fsynced, stays cached: the contrast shows the kernel would have
kept ftpd's pages too.

Residency is read with util-linux's `fincore`. On tmpfs pages are the file itself and cannot
be dropped, so the test needs a disk-backed temporary directory.
"""

import os
import subprocess
from pathlib import Path

import pytest

from helpers import crc32, key

SIZE = 128 << 20


def resident_bytes(path: Path) -> int:
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[0])


def filesystem(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("direct_io", ["true", "false"])
def test_an_upload_leaves_no_page_cache_behind(ftpd_factory, tmp_path, direct_io):
    ftpd = ftpd_factory(direct_io=direct_io)
    fs = filesystem(tmp_path)
    if fs in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is on {fs}: its pages cannot be dropped")
    data = os.urandom(1 << 20) * (SIZE >> 20)
    src = tmp_path / "recording.ts"
    src.write_bytes(data)

    # The ordinary way: write, fsync, and the pages stay cached.
    plain = ftpd.file("alice", "plain.ts")
    plain.parent.mkdir(parents=True, exist_ok=True)
    with open(plain, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    plain_resident = resident_bytes(plain)

    with ftpd.ftp() as f:
        f.sendcmd(f"SITE KEY {key(crc32(data))} /recording.ts")
        with open(src, "rb") as fh:
            f.storbinary("STOR /recording.ts", fh, blocksize=1 << 20)
    uploaded = ftpd.file("alice", "recording.ts")
    uploaded_resident = resident_bytes(uploaded)  # before reading it back caches it again
    assert uploaded.read_bytes() == data

    assert plain_resident > SIZE // 2, f"the kernel dropped an ordinary file too ({plain_resident} bytes cached)"
    assert uploaded_resident < SIZE // 16, f"{uploaded_resident} of {SIZE} uploaded bytes still cached"
