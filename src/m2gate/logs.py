"""Logging set-up: stderr or a log file (reopened for logrotate), ZeroMQ, access log.

The master calls :func:`setup_logging` once at start-up (before daemonizing,
so a bad log path is reported on the terminal) and :func:`reopen_logs` from its
main loop when SIGUSR1 arrives; signal handlers themselves must never log.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, TextIO

from m2gate.adapters.accesslog import AccessLogger
from m2gate.config.declare import ConfigError
from m2gate.config.paths import open_own, uid_of
from m2gate.config.settings import Config

LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("m2gate")

_reopenable: list[ReopenableFileHandler] = []
_access: AccessLogger | None = None
_chroot = ""  # set by enter_chroot(): reopen paths inside it
_owners: tuple[int, ...] = ()  # --user's uid: a log file it owns (logrotate's create) is ours


def set_chroot(root: str) -> None:
    """Tell reopen where the process now lives (called by service.enter_chroot)."""
    global _chroot
    _chroot = root.rstrip("/")


def _current_path(path: str) -> str | None:
    """``path`` as seen from inside the chroot, or None if it is outside it."""
    if not _chroot:
        return path
    if path == _chroot or path.startswith(_chroot + "/"):
        return path[len(_chroot) :] or "/"
    return None


class ReopenableFileHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Appends to a file; :meth:`reopen` starts a new file after logrotate moved it.

    With ``capture_stdio`` the file also becomes fds 1 and 2, so tracebacks
    printed by C code or a dying interpreter end up in the log as well.
    """

    def __init__(self, path: str, capture_stdio: bool = False, setting: str = "log_file") -> None:
        self.path = os.path.abspath(path)
        self.capture_stdio = capture_stdio
        self.setting = setting
        super().__init__(self._open(self.path))

    def _open(self, path: str) -> TextIO:
        """Open ``path`` for appending, never through a symlink nor into someone else's file."""
        fd = open_own(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.setting, 0o644, _owners)
        stream = os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace", buffering=1)
        if self.capture_stdio:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(stream.fileno(), 1)
            os.dup2(stream.fileno(), 2)
        return stream

    def write_line(self, line: str) -> None:
        """Append one line without a LogRecord: the access log's fast path."""
        self.acquire()
        try:
            self.stream.write(line + "\n")
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": line}))
        finally:
            self.release()

    def reopen(self) -> None:
        """Close the current file and open ``path`` again (a new file after rotation)."""
        path = _current_path(self.path)
        if path is None:
            log.warning("cannot reopen %s: it is outside the chroot %s", self.path, _chroot)
            return
        self.acquire()
        try:
            try:
                stream = self._open(path)
            except (OSError, ConfigError) as exc:
                log.error("cannot reopen log file %s: %s", path, exc)
                return
            old = self.setStream(stream)
            if old is not None:
                old.close()
        finally:
            self.release()

    def revive(self) -> bool:
        """Open the file again if someone else closed this handler; True if it did.

        ``logging.config.dictConfig`` (Django's LOGGING, for one) closes every
        existing handler yet leaves the root logger's attached: each later
        record then failed with "I/O operation on closed file" and was lost.
        """
        if self.stream is not None and not self.stream.closed:
            return False
        self.acquire()
        try:
            self.stream = self._open(_current_path(self.path) or self.path)
        finally:
            self.release()
        if self not in _reopenable:
            _reopenable.append(self)
        return True

    def close(self) -> None:
        self.acquire()
        try:
            stream = self.stream
            if stream is not None and not stream.closed:
                stream.flush()
                stream.close()
        finally:
            self.release()
        if self in _reopenable:
            _reopenable.remove(self)
        super().close()


def open_log_file(
    path: str, capture_stdio: bool = False, setting: str = "log_file"
) -> ReopenableFileHandler:
    """A reopenable handler for ``path``; ConfigError (one line) if it cannot be opened."""
    try:
        handler = ReopenableFileHandler(path, capture_stdio, setting)
    except OSError as exc:
        raise ConfigError("%s: cannot open %s: %s" % (setting, path, exc.strerror or exc)) from None
    _reopenable.append(handler)
    return handler


def give_log_files(uid: int | None, gid: int | None) -> None:
    """Hand the open log files to the user we are about to become (``fchown`` on the fd).

    The fd is the file :func:`m2gate.config.paths.open_own` proved ours, so
    no path is followed and no swapped file can be given away.
    """
    for handler in _reopenable:
        stream = handler.stream
        if stream is not None and not stream.closed:
            os.fchown(stream.fileno(), -1 if uid is None else uid, -1 if gid is None else gid)


def reopen_logs() -> None:
    """Reopen every log file (the master's SIGUSR1 action, also run in workers)."""
    for handler in list(_reopenable):
        handler.reopen()
    log.info("log files reopened")


def reopen_on_sigusr1() -> None:
    """Single-process serve: SIGUSR1 reopens the log files from a helper thread.

    The handler must not reopen itself: it could run while the same thread is
    inside a handler's emit() holding its (reentrant) lock. A master replaces
    this with its own queued signal handling and calls :func:`reopen_logs`.
    """
    import signal

    def on_usr1(signum: int, frame: object) -> None:
        threading.Thread(target=reopen_logs, name="m2gate-reopen-logs", daemon=True).start()

    signal.signal(signal.SIGUSR1, on_usr1)


class ZeroMQHandler(logging.Handler):
    """PUSHes each formatted record to a ZeroMQ PULL collector (uWSGI's zeromq logger).

    The socket is made lazily in the process that logs, so a handler set up in
    the master before fork gets a fresh context in every worker: ZeroMQ
    contexts must never cross a fork. A collector that is away or slow costs
    nothing: records beyond the send queue are dropped, never blocking the app.
    """

    def __init__(self, endpoint: str, level: int = logging.NOTSET, hwm: int = 10000) -> None:
        super().__init__(level)
        self.endpoint = endpoint
        self.hwm = hwm
        self._pid = 0
        self._ctx: Any = None
        self._sock: Any = None

    def _socket(self) -> Any:
        pid = os.getpid()
        if self._pid != pid:  # emit() holds the handler's lock (reset after fork)
            import zmq

            # After fork the parent's socket is not ours to use or close.
            ctx = zmq.Context()
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.setsockopt(zmq.SNDHWM, self.hwm)
            sock.connect(self.endpoint)
            self._ctx, self._sock, self._pid = ctx, sock, pid
        return self._sock

    def emit(self, record: logging.LogRecord) -> None:
        import zmq

        try:
            line = self.format(record)
            self._socket().send(line.encode("utf-8", "backslashreplace"), zmq.NOBLOCK)
        except zmq.Again:
            pass  # collector gone or slow: drop rather than block a request
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.acquire()
        try:
            if self._sock is not None and self._pid == os.getpid():
                self._sock.close()
                self._ctx.term()
            self._sock = self._ctx = None
            self._pid = 0
        finally:
            self.release()
        super().close()


def _to_console(handler: logging.Handler) -> bool:
    """Whether ``handler`` is a plain StreamHandler writing to this process's stdout/stderr."""
    if type(handler) is not logging.StreamHandler:  # files, sockets, our own handlers
        return False
    stream = getattr(handler, "stream", None)
    if stream is None:
        return False
    if stream is sys.stderr or stream is sys.stdout:
        return True
    try:
        return stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError):
        return False


def _reaches_root(logger: logging.Logger) -> bool:
    """Whether records of ``logger`` propagate all the way to the root logger's handlers."""
    current: logging.Logger | None = logger
    while current is not None and current is not logging.root:
        if not current.propagate:
            return False
        current = current.parent
    return current is logging.root


def after_app_import() -> None:
    """Repair what importing the app did to m2gate's logging; call it right after.

    An app may configure logging itself (Django does, from its LOGGING setting,
    as soon as its WSGI/ASGI application is made):

    - ``dictConfig`` closes every existing handler: m2gate's log files are
      opened again (and its own loggers enabled again, should the config
      have disabled existing loggers).
    - Django's default config puts a StreamHandler on the ``django`` logger
      (active with DEBUG) and lets the records propagate: each warning
      appeared twice, bare from Django and formatted by m2gate's root handler
      (which has no level, so it writes every record such a handler would).
      Console handlers on loggers that propagate to the root are removed.
    """
    loggers = [
        (name, logger)
        for name, logger in list(logging.root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger)  # not a PlaceHolder
    ]
    for name, logger in loggers:
        if logger.disabled and (name == "m2gate" or name.startswith("m2gate.")):
            logger.disabled = False
    for logger in (logging.root, logging.getLogger("m2gate.access")):
        for handler in logger.handlers:
            if isinstance(handler, ReopenableFileHandler) and handler.revive():
                log.info("the app's logging config closed %s: opened it again", handler.path)
    if not logging.root.handlers:
        return
    for name, logger in loggers:
        if not _reaches_root(logger):
            continue
        for handler in list(logger.handlers):
            if _to_console(handler):
                logger.removeHandler(handler)
                log.info(
                    "logger %r: removed its console handler; its records reach m2gate's log"
                    " through the root logger (they were written twice)",
                    name,
                )


def access_logger() -> AccessLogger | None:
    """The AccessLogger made by the last :func:`setup_logging` (None: no access log)."""
    return _access


def _stderr_handler() -> logging.Handler:
    return logging.StreamHandler(sys.stderr)


def setup_logging(cfg: Config) -> AccessLogger | None:
    """Configure the root and ``m2gate.access`` loggers from ``cfg``.

    Returns the :class:`AccessLogger` to hand to the request path, or None
    when no access log is wanted. Raises ConfigError when a file cannot be
    opened, so call it before daemonizing.
    """
    global _owners
    owner = uid_of(cfg.user)
    _owners = () if owner is None else (owner,)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    formatter = logging.Formatter(LOG_FORMAT)
    main: logging.Handler
    if cfg.log_file:
        main = open_log_file(cfg.log_file, capture_stdio=cfg.daemon)
    else:
        main = _stderr_handler()
    main.setFormatter(formatter)
    root.addHandler(main)
    if cfg.log_zeromq:
        zmq_handler = ZeroMQHandler(cfg.log_zeromq)
        zmq_handler.setFormatter(formatter)
        root.addHandler(zmq_handler)
    root.setLevel(cfg.log_level.upper())
    # warnings.warn() goes through the root handler too, so it reaches --log-file
    # (not only the terminal) in the same format as every other line.
    logging.captureWarnings(True)

    global _access
    _access = None
    access = logging.getLogger("m2gate.access")
    for old in list(access.handlers):
        access.removeHandler(old)
        old.close()
    if not cfg.access_log:
        access.propagate = True
        return None
    access.propagate = False
    access.setLevel(logging.INFO)
    target: logging.Handler
    sink = None
    if cfg.access_log == "-":
        target = _stderr_handler()
    else:
        target = open_log_file(cfg.access_log, setting="access_log")
        sink = target.write_line
    target.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(target)
    _access = AccessLogger(cfg.access_log_format, access, cfg.trust_x_forwarded_for, sink)
    return _access
