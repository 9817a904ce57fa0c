"""A Beam filesystem kept in memory under `memgcs://`, standing in for gs:// in tests.

The code under test reaches gs:// only through Beam's FileSystems (match, open, create, rename,
delete), so a filesystem with another scheme exercises the same calls without GCS credentials.
Importing this module registers the scheme (Beam finds FileSystem subclasses by `scheme()`);
all instances share one store, as all clients of one bucket do.
"""
from __future__ import annotations

import io
import threading
import time

from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileMetadata, FileSystem

SCHEME = "memgcs"
_FILES: dict[str, bytes] = {}
_LOCK = threading.Lock()


def files(prefix: str = f"{SCHEME}://") -> dict[str, bytes]:
    with _LOCK:
        return {p: d for p, d in _FILES.items() if p.startswith(prefix)}


class _Writer(io.BytesIO):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def close(self) -> None:
        if not self.closed:
            with _LOCK:
                _FILES[self.path] = self.getvalue()
        super().close()


class MemoryFileSystem(FileSystem):
    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        pass  # object stores have no directories

    def has_dirs(self) -> bool:
        return False

    def _list(self, dir_or_prefix: str):
        for path, data in files(dir_or_prefix).items():
            yield FileMetadata(path, len(data), time.time())

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        return _Writer(path)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        with _LOCK:
            if path not in _FILES:
                raise BeamIOError(f"no such object: {path}")
            return io.BytesIO(_FILES[path])

    def copy(self, source_file_names, destination_file_names) -> None:
        with _LOCK:
            for src, dst in zip(source_file_names, destination_file_names):
                _FILES[dst] = _FILES[src]

    def rename(self, source_file_names, destination_file_names) -> None:
        with _LOCK:
            for src, dst in zip(source_file_names, destination_file_names):
                _FILES[dst] = _FILES.pop(src)

    def exists(self, path: str) -> bool:
        with _LOCK:
            return path in _FILES

    def size(self, path: str) -> int:
        with _LOCK:
            return len(_FILES[path])

    def last_updated(self, path: str) -> float:
        return time.time()

    def checksum(self, path: str) -> str:
        return str(self.size(path))

    def metadata(self, path: str) -> FileMetadata:
        return FileMetadata(path, self.size(path), time.time())

    def delete(self, paths) -> None:
        with _LOCK:
            for path in paths:
                _FILES.pop(path, None)
