"""Log files reopened for logrotate, the ZeroMQ log handler, setup_logging."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from m2gate import logs
from m2gate.config.declare import ConfigError
from m2gate.config.settings import Config
from m2gate.testing.mongrel2 import free_port


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    access = logging.getLogger("m2gate.access")
    saved = (list(root.handlers), root.level, list(access.handlers), access.propagate)
    try:
        yield
    finally:
        for logger in (root, access):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        access.handlers[:] = saved[2]
        access.propagate = saved[3]
        logs.set_chroot("")
        logging.captureWarnings(False)


def emit(handler: logging.Handler, text: str) -> None:
    handler.handle(logging.LogRecord("t", logging.INFO, __file__, 1, text, None, None))


def test_reopen_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "m2gate.log"
    handler = logs.open_log_file(str(path))
    try:
        emit(handler, "before")
        path.rename(tmp_path / "m2gate.log.1")
        emit(handler, "still old file")  # logrotate moved it; we keep writing there
        logs.reopen_logs()
        emit(handler, "after")
    finally:
        handler.close()
    assert (tmp_path / "m2gate.log.1").read_text().splitlines() == ["before", "still old file"]
    assert path.read_text().splitlines() == ["after"]


def test_unopenable_log_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"log_file: cannot open .*missing/x\.log"):
        logs.open_log_file(str(tmp_path / "missing" / "x.log"))


def test_paths_inside_a_chroot() -> None:
    try:
        logs.set_chroot("/srv/site/")
        assert logs._current_path("/srv/site/logs/a.log") == "/logs/a.log"
        assert logs._current_path("/var/log/a.log") is None
    finally:
        logs.set_chroot("")
    assert logs._current_path("/var/log/a.log") == "/var/log/a.log"


def collector() -> tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes], str]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVTIMEO, 10000)
    pull.setsockopt(zmq.LINGER, 0)
    endpoint = "tcp://127.0.0.1:%d" % free_port()
    pull.bind(endpoint)
    return ctx, pull, endpoint


def test_zeromq_handler_pushes_formatted_lines() -> None:
    ctx, pull, endpoint = collector()
    handler = logs.ZeroMQHandler(endpoint)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    try:
        emit(handler, "hello collector \u00e9")
        assert pull.recv() == "INFO hello collector \u00e9".encode()
    finally:
        handler.close()
        pull.close()
        ctx.term()


def test_zeromq_handler_makes_its_socket_after_fork() -> None:
    ctx, pull, endpoint = collector()
    handler = logs.ZeroMQHandler(endpoint)
    handler.setFormatter(logging.Formatter("%(process)d %(message)s"))
    try:
        emit(handler, "parent")  # the parent's socket exists before the fork
        assert pull.recv() == b"%d parent" % os.getpid()
        with warnings.catch_warnings():  # 3.12+ warns about fork with zmq's I/O threads
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # child: must not touch the parent's context
            try:
                emit(handler, "child")
                handler.close()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0
        assert pull.recv() == b"%d child" % pid
        emit(handler, "parent again")
        assert pull.recv() == b"%d parent again" % os.getpid()
    finally:
        handler.close()
        pull.close()
        ctx.term()


def test_zeromq_handler_never_blocks_without_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = logs.ZeroMQHandler("tcp://127.0.0.1:%d" % free_port(), hwm=2)
    errors: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", errors.append)

    def flood() -> None:
        for i in range(50):
            emit(handler, "lost %d" % i)  # queued up to the HWM, then dropped

    # In a thread, so a blocking send fails the test in seconds instead of hanging it.
    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "emit blocked while no collector listens"
    try:
        assert errors == []  # dropped quietly, not reported as logging errors
        # The queue is full at the HWM: the other records were dropped, not queued.
        assert not handler._sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT
    finally:
        handler._sock.setsockopt(zmq.LINGER, 0)
        handler.close()


def test_setup_logging_file_access_log_and_zeromq(tmp_path: Path, restore_logging: None) -> None:
    cfg = Config(
        log_file=str(tmp_path / "m2gate.log"),
        access_log=str(tmp_path / "access.log"),
        log_zeromq="tcp://127.0.0.1:%d" % free_port(),
        log_level="warning",
    )
    access = logs.setup_logging(cfg)
    assert access is not None and logs.access_logger() is access
    root = logging.getLogger()
    assert root.level == logging.WARNING
    kinds = {type(h) for h in root.handlers}
    assert kinds == {logs.ReopenableFileHandler, logs.ZeroMQHandler}
    logging.getLogger("m2gate").warning("to the file")
    logging.getLogger("m2gate.access").info("one request")
    assert "WARNING m2gate: to the file" in (tmp_path / "m2gate.log").read_text()
    assert (tmp_path / "access.log").read_text() == "one request\n"
    assert "one request" not in (tmp_path / "m2gate.log").read_text()
    for handler in root.handlers:
        if isinstance(handler, logs.ZeroMQHandler) and handler._sock is not None:
            handler._sock.setsockopt(zmq.LINGER, 0)


def test_setup_logging_without_access_log(restore_logging: None) -> None:
    assert logs.setup_logging(Config()) is None
    assert logs.access_logger() is None


def test_bad_access_log_path(tmp_path: Path, restore_logging: None) -> None:
    with pytest.raises(ConfigError, match="access_log: cannot open"):
        logs.setup_logging(Config(access_log=str(tmp_path / "no" / "a.log")))


def test_access_lines_bypass_logging_and_survive_reopen(
    tmp_path: Path, restore_logging: None
) -> None:
    from m2gate.protocol.messages import HTTPRequest

    path = tmp_path / "access.log"
    access = logs.setup_logging(Config(access_log=str(path), access_log_format="%(U)s %(s)s"))
    assert access is not None and access.sink is not None
    msg = HTTPRequest("s", 1, "/a", {"METHOD": "GET"}, b"")
    access.log(msg, 200, 1, 0.0)
    path.rename(tmp_path / "access.log.1")
    logs.reopen_logs()
    access.log(msg, 404, 1, 0.0)
    assert (tmp_path / "access.log.1").read_text() == "/a 200\n"
    assert path.read_text() == "/a 404\n"


def test_app_logging_config_closing_our_files_is_undone(
    tmp_path: Path, restore_logging: None
) -> None:
    """dictConfig (Django's LOGGING) closes every handler, ours too; we open ours again."""
    import logging.config

    path = tmp_path / "m2gate.log"
    logs.setup_logging(Config(log_file=str(path), access_log=str(tmp_path / "access.log")))
    everyone = [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    enabled = [lg for lg in everyone if not lg.disabled]
    try:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": True})
        assert logging.getLogger("m2gate").disabled
        logs.after_app_import()
    finally:  # the other tests' loggers
        for lg in enabled:
            if not lg.name.startswith("m2gate"):
                lg.disabled = False
    logging.getLogger("m2gate.worker").warning("still logged")
    access = logs.access_logger()
    assert access is not None and access.sink is not None
    access.sink("an access line")
    text = path.read_text()
    assert "opened it again" in text and "WARNING m2gate.worker: still logged" in text
    assert (tmp_path / "access.log").read_text() == "an access line\n"


def test_console_handlers_that_duplicate_the_root_are_removed(
    tmp_path: Path, restore_logging: None
) -> None:
    import sys

    logs.setup_logging(Config(log_file=str(tmp_path / "m2gate.log")))
    dup = logging.getLogger("test.dup.app")
    console = logging.StreamHandler(sys.stderr)
    dup.addHandler(console)
    kept = logging.getLogger("test.dup.alone")  # does not propagate: its handler is the only one
    alone = logging.StreamHandler(sys.stderr)
    kept.addHandler(alone)
    kept.propagate = False
    to_file = logging.FileHandler(tmp_path / "app.log")
    dup.addHandler(to_file)
    try:
        logs.after_app_import()
        assert console not in dup.handlers and to_file in dup.handlers
        assert kept.handlers == [alone]
        assert (
            "logger 'test.dup.app': removed its console handler"
            in (tmp_path / "m2gate.log").read_text()
        )
    finally:
        for logger in (dup, kept):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()


def test_warnings_go_through_the_log(tmp_path: Path, restore_logging: None) -> None:
    path = tmp_path / "m2gate.log"
    logs.setup_logging(Config(log_file=str(path)))
    with warnings.catch_warnings():  # keeps setup_logging's showwarning, resets the filters
        warnings.simplefilter("always")
        warnings.warn("careful now", UserWarning, stacklevel=1)
    assert "WARNING py.warnings:" in path.read_text() and "careful now" in path.read_text()
