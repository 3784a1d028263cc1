"""Files written whole or not at all, and created at most once, safely from many processes.

write    a temporary file beside the target, synced, then moved into place with ``os.replace``:
         readers see the old or the new version, never a part of one.
create   the same temporary file, hard-linked to the target: ``link`` fails when the target exists,
         on local and network file systems alike (NFS makes link atomic, not O_EXCL), so exactly
         one of several processes creates it; the others learn that it exists.
stale    a killed writer leaves ``.<name>.tmp-<host>-<pid>-<n>``. ``clear_stale`` removes those of
         processes that no longer run on this host, and those of other hosts after a day, never a
         live writer's (another process may be writing the same target right now).
A full disk or a folder that cannot be written ends in one line naming the folder.
"""

from __future__ import annotations

import csv
import errno
import io
import itertools
import os
import re
import resource
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ablate_lit.common.errors import AblateError

HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
_counter = itertools.count()
_TMP = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-\d+$")
_LEGACY_TMP = re.compile(r"^\..+\.tmp(?P<pid>\d+)$")
OTHER_HOST_STALE_S = 24 * 3600


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{HOST}-{os.getpid()}-{next(_counter)}")


def disk_error(path: Path, exc: OSError) -> AblateError:
    """A one-line error for a failed write: full disk, no permission, or anything else the OS says."""
    if exc.errno == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        size = f" of {limit / 2**20:.1f} MiB" if limit != resource.RLIM_INFINITY else ""
        return AblateError(
            f"the file size limit{size} of this process (ulimit -f) stopped writing {path.name} to "
            f"'{path.parent}'; raise it (ulimit -f unlimited) or lower what is cached (⟨--ablation.n_bins⟩, "
            "⟨--ablation.n_resample⟩)"
        )
    if exc.errno == errno.EDQUOT:
        return AblateError(
            f"the disk quota is exceeded on the device holding '{path.parent}' while writing {path.name}; free "
            "some space or choose another folder (⟨--root⟩, ⟨--ablation.cache_dir⟩)"
        )
    if exc.errno == errno.ENOSPC:
        return AblateError(
            f"no space left on the device holding '{path.parent}' while writing {path.name}; free some "
            "space or choose another folder (⟨--root⟩, ⟨--ablation.cache_dir⟩)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AblateError(
            f"cannot write '{path}' ({os.strerror(exc.errno)}); choose a writable folder (⟨--root⟩, "
            "⟨--ablation.cache_dir⟩)"
        )
    return AblateError(f"cannot write '{path}' ({exc.strerror or exc})")


@contextmanager
def atomic_path(path: Path, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write. On success it replaces ``path`` or, with ``exclusive``, becomes
    ``path`` only if no file is there yet (``FileExistsError`` otherwise)."""
    path = Path(path)
    tmp = _tmp_for(path)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                yield tmp
            except RuntimeError as exc:  # torch.save reports a failed write as its own error, without errno
                cause = _write_limit(tmp)
                if cause is None:
                    raise
                raise OSError(cause, os.strerror(cause)) from exc
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            if exclusive:
                os.link(tmp, path)
            else:
                os.replace(tmp, path)
        except FileExistsError:
            raise
        except OSError as exc:
            raise disk_error(path, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _write_limit(tmp: Path) -> int | None:
    """Why writing ``tmp`` may have stopped short: EFBIG (the process's file size limit reached), ENOSPC
    (the device is full), or None (neither: some other failure)."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    size = tmp.stat().st_size if tmp.exists() else 0
    if limit != resource.RLIM_INFINITY and size >= limit - 2**16:
        return errno.EFBIG
    try:
        if shutil.disk_usage(tmp.parent).free < 2**20:
            return errno.ENOSPC
    except OSError:
        return None
    return None


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        fh.write(text)


def create_text(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists; True if this call created it."""
    try:
        with atomic_path(path, exclusive=True) as tmp, open(tmp, "w", newline="") as fh:
            fh.write(text)
    except FileExistsError:
        return False
    return True


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    write_text(path, csv_text(rows, columns))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_stale(folder: Path) -> int:
    """Remove the temporary files that killed writers left in ``folder``; returns how many."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    now = time.time()
    for tmp in folder.glob(".*.tmp*"):
        match, legacy = _TMP.match(tmp.name), _LEGACY_TMP.match(tmp.name)
        if not (match or legacy):
            continue
        host, pid = (match["host"], int(match["pid"])) if match else (HOST, int(legacy["pid"]))
        try:
            stale = not pid_alive(pid) if host == HOST else now - tmp.stat().st_mtime > OTHER_HOST_STALE_S
            if stale:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:  # its writer finished meanwhile
            continue
    return removed


def check_folder(path: str | Path, flag: str, create: bool = False) -> Path:
    """A folder that can be written, or a one-line error naming ``flag``. A folder that does not exist
    yet is made only with ``create`` (else its nearest existing parent must be a writable folder, and
    the folder is made by the first write into it: a run refused before then leaves nothing behind)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise AblateError(f"{flag} '{path}' is a file, not a folder; pass a folder")
    existing = next((p for p in (path, *path.absolute().parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        raise AblateError(f"{flag} '{path}' lies under the file '{existing}', not a folder; pass a folder")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
            existing = path
        if existing == path:
            probe = _tmp_for(path / "write-check")
            probe.write_bytes(b"")
            probe.unlink()
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"{existing} is not writable")
    except OSError as exc:
        raise AblateError(f"{flag} '{path}' cannot be written ({exc.strerror or exc}); pass a writable folder") from exc
    return path
