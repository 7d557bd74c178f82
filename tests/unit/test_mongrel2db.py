"""--mongrel2-db: pick a handler from the config.sqlite that m2sh wrote."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from m2gate.config import mongrel2db
from m2gate.config.declare import ConfigError
from m2gate.config.resolve import resolve_specs
from m2gate.config.settings import Config
from m2gate.testing.mongrel2 import HandlerSpec, Mongrel2

ROOT_SPEC = HandlerSpec("/", send_ident="11111111-aaaa-4aaa-8aaa-000000000001")
API_SPEC = HandlerSpec("/api/", send_ident="22222222-bbbb-4bbb-8bbb-000000000002", protocol="json")


@pytest.fixture
def m2(tmp_path: Path) -> Mongrel2:
    """A real m2sh-loaded database with two handlers (Mongrel2 itself is not started)."""
    mongrel = Mongrel2(tmp_path / "m2", handlers=[ROOT_SPEC, API_SPEC])
    mongrel.write_config()
    return mongrel


def configure(db: Path, **kwargs: str) -> Config:
    return resolve_specs(mongrel2db.apply(Config(mongrel2_db=str(db), **kwargs)))


def one_line(info: pytest.ExceptionInfo[ConfigError]) -> str:
    assert "\n" not in str(info.value)
    return str(info.value)


def test_reads_handlers_routes_and_settings(m2: Mongrel2) -> None:
    db = mongrel2db.read(str(m2.db_path))
    by_ident = {h.send_ident: h for h in db.handlers}
    root, api = by_ident[ROOT_SPEC.send_ident], by_ident[API_SPEC.send_ident]
    assert root.routes == (("localhost", "/"),) and api.routes == (("localhost", "/api/"),)
    assert root.send_spec == m2.handlers[0].send_spec and api.protocol == "json"
    assert db.settings["upload.temp_store"].endswith("upload.XXXXXX")
    assert db.chroot == ""


def test_select_by_route(m2: Mongrel2) -> None:
    cfg = configure(m2.db_path, route="/api/")
    api = m2.handlers[1]
    assert (cfg.send_spec, cfg.recv_spec, cfg.send_ident) == (
        [api.send_spec],
        [api.recv_spec],
        api.send_ident,
    )
    assert cfg.recv_ident == ""
    assert cfg.upload_dir == str(m2.upload_dir)


def test_select_by_ident_and_host(m2: Mongrel2) -> None:
    assert configure(m2.db_path, handler_ident=ROOT_SPEC.send_ident).send_spec == [
        m2.handlers[0].send_spec
    ]
    cfg = configure(m2.db_path, host="localhost", route="/")
    assert cfg.send_ident == ROOT_SPEC.send_ident


def test_explicit_settings_win(m2: Mongrel2) -> None:
    cfg = configure(m2.db_path, route="/", send_ident="mine", upload_dir="/elsewhere")
    assert cfg.send_ident == "mine" and cfg.upload_dir == "/elsewhere"
    assert cfg.send_spec == [m2.handlers[0].send_spec]


def test_ambiguous_selection_lists_handlers(m2: Mongrel2) -> None:
    with pytest.raises(ConfigError) as info:
        configure(m2.db_path, host="localhost")
    text = one_line(info)
    assert "2 handlers match --host localhost" in text
    for spec in m2.handlers:
        assert spec.send_spec in text and spec.send_ident in text
    assert "route localhost/api/" in text


def test_no_selector_with_two_handlers_is_ambiguous(m2: Mongrel2) -> None:
    with pytest.raises(ConfigError) as info:
        configure(m2.db_path)
    assert "choose one with --route, --handler-ident or --host" in one_line(info)


def test_empty_selection_lists_handlers(m2: Mongrel2) -> None:
    with pytest.raises(ConfigError) as info:
        configure(m2.db_path, route="/nope/")
    text = one_line(info)
    assert "no handler matches --route /nope/" in text and ROOT_SPEC.send_ident in text


def test_single_handler_needs_no_selector(tmp_path: Path) -> None:
    mongrel = Mongrel2(tmp_path / "one")
    mongrel.write_config()
    assert configure(mongrel.db_path).send_spec == [mongrel.handler.send_spec]


def test_wildcard_binds_chroot_and_relative_temp_store(m2: Mongrel2) -> None:
    with sqlite3.connect(m2.db_path) as db:
        db.execute(
            "UPDATE handler SET send_spec = 'tcp://*:7001', recv_spec = 'tcp://0.0.0.0:7000'"
        )
        db.execute("UPDATE server SET chroot = './'")
        db.execute(
            "UPDATE setting SET value = '/tmp/up/upload.XXXXXX' WHERE key = 'upload.temp_store'"
        )
    cfg = configure(m2.db_path, route="/")
    assert (cfg.send_spec, cfg.recv_spec) == (["tcp://127.0.0.1:7001"], ["tcp://127.0.0.1:7000"])
    assert cfg.mongrel2_chroot == str(m2.workdir)
    assert cfg.upload_dir == str(m2.workdir / "tmp" / "up")


def test_not_a_database(tmp_path: Path) -> None:
    bogus = tmp_path / "config.sqlite"
    bogus.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(ConfigError) as info:
        configure(bogus)
    assert "not a Mongrel2 config database" in one_line(info)
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    with pytest.raises(ConfigError) as info:
        configure(empty)
    assert "not a Mongrel2 config database" in one_line(info)


def test_selectors_need_a_database() -> None:
    with pytest.raises(ConfigError, match="only meaningful with --mongrel2-db"):
        mongrel2db.apply(Config(route="/"))
