"""Large request bodies that Mongrel2 spools to its ``upload.temp_store``.

The app reads the file *while Mongrel2 is still writing it*: the reader waits
at end-of-file until more bytes arrive, the upload-done notice says the file
is complete, or the client goes away. The announcing headers can be forged by
clients, so a path is accepted only when it resolves to a regular file inside
the configured temp store, and completion only from the same path.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import threading
from typing import Protocol

from m2gate.protocol.errors import ClientDisconnected, RemoteProtocolError

log = logging.getLogger("m2gate.uploads")

WAIT_S = 0.05


class Closable(Protocol):
    """The one thing an upload reader asks of its connection: is the client gone?"""

    @property
    def closed(self) -> bool: ...


class UploadRejected(RemoteProtocolError):
    """The upload announcement is forged or inconsistent: answer 400."""


class UploadStore:
    """Resolves and checks the paths Mongrel2 announces."""

    def __init__(self, upload_dir: str, chroot: str = "") -> None:
        self.upload_dir = os.path.realpath(upload_dir) if upload_dir else ""
        self.chroot = chroot

    def resolve(self, announced: str) -> str:
        """Real path of an announced upload, or :class:`UploadRejected`."""
        if not self.upload_dir:
            raise UploadRejected("uploads are not configured (set upload_dir)")
        if not announced or "\x00" in announced:
            raise UploadRejected("empty or invalid upload path")
        path = announced
        if self.chroot:
            path = os.path.join(self.chroot, announced.lstrip("/"))
        real = os.path.realpath(path)
        if os.path.dirname(real) != self.upload_dir:
            raise UploadRejected("upload path %r is outside %s" % (announced, self.upload_dir))
        try:
            info = os.lstat(real)
        except OSError:
            raise UploadRejected("upload file %r does not exist" % announced) from None
        if not stat.S_ISREG(info.st_mode):
            raise UploadRejected("upload path %r is not a regular file" % announced)
        return real


class Upload:
    """An upload in flight on one connection; the receiver marks it done."""

    def __init__(self, announced: str, real_path: str, length: int | None) -> None:
        self.announced = announced
        self.path = real_path
        self.length = length
        self.done = threading.Event()
        self.error: str | None = None

    def finish(self, announced: str) -> None:
        """Upload-done arrived; it must name the file upload-start named."""
        if announced != self.announced:
            self.error = "upload-done path %r differs from upload-start %r" % (
                announced,
                self.announced,
            )
        self.done.set()

    def wait_done(self, conn: Closable) -> None:
        while not self.done.wait(WAIT_S):
            if conn.closed:
                raise ClientDisconnected()
        if self.error:
            raise UploadRejected(self.error)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove upload %s: %s", self.path, exc)


class UploadReader(io.RawIOBase):
    """Raw reader over a file that is still growing (wrap in ``io.BufferedReader``).

    Reads never return short of ``length`` before the upload is done; end of
    input is ``length`` bytes (Content-Length) or, without one, the size of
    the finished file.
    """

    def __init__(self, upload: Upload, conn: Closable) -> None:
        super().__init__()
        self.upload = upload
        self.conn = conn
        # O_NOFOLLOW: the checked path cannot be swapped for a symlink meanwhile.
        fd = os.open(upload.path, os.O_RDONLY | os.O_NOFOLLOW)
        self._fh = io.FileIO(fd, "rb", closefd=True)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def _remaining(self) -> int | None:
        if self.upload.length is None:
            return None
        return self.upload.length - self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = len(buffer)
        remaining = self._remaining()
        if remaining is not None:
            want = min(want, remaining)
        if want <= 0:
            return 0
        while True:
            n = self._fh.readinto(memoryview(buffer)[:want])
            if n:
                self._pos += n
                return n
            if self.upload.done.is_set():
                if self.upload.error:
                    raise UploadRejected(self.upload.error)
                if remaining is not None:
                    raise UploadRejected(
                        "upload ended at %d of %d bytes" % (self._pos, self.upload.length or 0)
                    )
                return 0
            if self.conn.closed:
                raise ClientDisconnected()
            self.upload.done.wait(WAIT_S)

    def close(self) -> None:
        self._fh.close()
        super().close()


def open_upload(upload: Upload, conn: Closable) -> io.BufferedReader:
    """The binary file object an app reads an upload from."""
    return io.BufferedReader(UploadReader(upload, conn), 256 * 1024)
