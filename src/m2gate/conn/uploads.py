"""Large request bodies that Mongrel2 spools to its ``upload.temp_store``.

By default the app is called once the upload is complete (a slow client must
not pin an app thread); with ``stream_uploads`` it reads the file *while
Mongrel2 is still writing it*: the reader waits at end-of-file until more
bytes arrive, the upload-done notice says the file is complete, the client
goes away or the upload deadline passes.

The announcing headers can be forged by clients, and a path we accept is a
file we delete. Mongrel2 overwrites a client's ``x-mongrel2-upload-start`` on
a real upload, so a forged one only arrives on an ordinary request: one with
a body, or with nothing for Mongrel2 to spool (no positive Content-Length, not
chunked). :func:`announced_path` tells the two apart; :meth:`UploadStore.claim`
then accepts only a regular file (not a link, opened with ``O_NOFOLLOW``)
directly inside the temp store, and records its (dev, ino) so that
:func:`remove_claimed` never unlinks another file put at that name since.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import threading
import time
from typing import Protocol

from m2gate.protocol.errors import ClientDisconnected, RemoteProtocolError
from m2gate.protocol.messages import Message, UploadDone, UploadStart

log = logging.getLogger("m2gate.uploads")

WAIT_S = 0.05


class Closable(Protocol):
    """The one thing an upload reader asks of its connection: is the client gone?"""

    @property
    def closed(self) -> bool: ...


class UploadRejected(RemoteProtocolError):
    """The upload announcement is forged or inconsistent: answer 400."""


class UploadTimedOut(UploadRejected):
    """The upload did not complete within ``upload_timeout``: answer 408."""

    def __init__(self, msg: str = "upload not complete within its timeout") -> None:
        super().__init__(msg, 408)


Identity = tuple[int, int]  # (st_dev, st_ino) of a claimed temp file


def announced_path(msg: Message) -> str | None:
    """The temp file Mongrel2 itself announced with ``msg``, None if the header is forged.

    Mongrel2's upload-start has an empty body and a body worth spooling: a
    positive Content-Length (over its limit) or chunked encoding. A message
    with upload-done set to another path is Mongrel2's upload-start with a
    client-forged upload-done header: its start path is still Mongrel2's.
    """
    if not isinstance(msg, (UploadStart, UploadDone)) or msg.body:
        return None
    if isinstance(msg, UploadDone) and msg.start_path == msg.upload_path:
        return None  # a real upload-done only completes an upload already announced
    length = msg.header("content-length")
    chunked = "chunked" in (msg.header("transfer-encoding") or "").lower()
    if not chunked and not (length and length.isascii() and length.isdigit() and int(length)):
        return None
    return msg.start_path if isinstance(msg, UploadDone) else msg.upload_path


def remove_claimed(path: str, ident: Identity | None) -> bool:
    """Unlink ``path`` if it is still the file claimed as ``ident``; True if removed.

    Opened with ``O_NOFOLLOW`` and compared by fstat: a link, or another file
    created at that name since (Mongrel2 deleted ours, mkstemp reused it),
    is left alone.
    """
    if not path or ident is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("not removing upload %s: %s", path, exc)
        return False
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != ident or not stat.S_ISREG(info.st_mode):
            log.warning("not removing upload %s: no longer the announced file", path)
            return False
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("could not remove upload %s: %s", path, exc)
        return False
    finally:
        os.close(fd)


class UploadStore:
    """Resolves and checks the paths Mongrel2 announces; how long an upload may take.

    ``timeout``: seconds from upload-start to upload-done (0: no limit);
    ``stream``: call the app while the upload is still being written.
    """

    def __init__(
        self, upload_dir: str, chroot: str = "", timeout: float = 0.0, stream: bool = False
    ) -> None:
        self.upload_dir = os.path.realpath(upload_dir) if upload_dir else ""
        self.chroot = chroot
        self.timeout = timeout
        self.stream = stream

    def claim(self, announced: str) -> tuple[str, Identity]:
        """Real path and identity of an announced upload, or :class:`UploadRejected`."""
        real = self.resolve(announced)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            raise UploadRejected("upload file %r cannot be opened" % announced) from None
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UploadRejected("upload path %r is not a regular file" % announced)
        return real, (info.st_dev, info.st_ino)

    def resolve(self, announced: str) -> str:
        """Real path of an announced upload, or :class:`UploadRejected`."""
        if not self.upload_dir:
            raise UploadRejected("uploads are not configured (set upload_dir)")
        if not announced or "\x00" in announced:
            raise UploadRejected("empty or invalid upload path")
        path = announced
        if self.chroot:
            path = os.path.join(self.chroot, announced.lstrip("/"))
        # The directory may be reached through links (/tmp -> /private/tmp); the
        # file itself must not be one (lstat below, O_NOFOLLOW when opened).
        name = os.path.basename(path)
        real = os.path.join(os.path.realpath(os.path.dirname(path) or "."), name)
        if name in ("", ".", "..") or os.path.dirname(real) != self.upload_dir:
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

    def __init__(
        self,
        announced: str,
        real_path: str,
        length: int | None,
        msg: Message | None = None,
        deadline: float | None = None,
    ) -> None:
        self.announced = announced
        self.path = real_path
        self.ident: Identity | None = None  # set when claimed: only then is it ours to delete
        self.length = length
        self.msg = msg  # the message Mongrel2 announced it with
        self.deadline = deadline  # time.monotonic() by which upload-done must arrive
        self.done = threading.Event()
        self.error: str | None = None
        self.rejected: str | None = None  # answer 400 for this reason (forged headers)
        self.timed_out = False
        self.held = False  # waiting in the receiving loop for upload-done

    def finish(self, announced: str) -> None:
        """Upload-done arrived; it must name the file upload-start named."""
        if announced != self.announced:
            self.error = "upload-done path %r differs from upload-start %r" % (
                announced,
                self.announced,
            )
        self.done.set()

    def check_deadline(self) -> None:
        """:class:`UploadTimedOut` once the deadline passed and the upload is not done."""
        if self.timed_out or (
            self.deadline is not None
            and not self.done.is_set()
            and time.monotonic() > self.deadline
        ):
            self.timed_out = True
            raise UploadTimedOut()

    def wait_done(self, conn: Closable) -> None:
        while not self.done.wait(WAIT_S):
            if conn.closed:
                raise ClientDisconnected()
            self.check_deadline()
        if self.error:
            raise UploadRejected(self.error)

    def remove(self) -> None:
        """Delete the temp file, if it is still the one claimed."""
        remove_claimed(self.path, self.ident)


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
        info = os.fstat(fd)
        if upload.ident is not None and (info.st_dev, info.st_ino) != upload.ident:
            os.close(fd)
            raise UploadRejected("upload file %r was replaced" % upload.announced)
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
            self.upload.check_deadline()
            self.upload.done.wait(WAIT_S)

    def close(self) -> None:
        self._fh.close()
        super().close()


def open_upload(upload: Upload, conn: Closable) -> io.BufferedReader:
    """The binary file object an app reads an upload from."""
    return io.BufferedReader(UploadReader(upload, conn), 256 * 1024)
