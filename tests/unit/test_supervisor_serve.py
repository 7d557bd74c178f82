"""One process or a master (supervisor/serve.py)."""

from __future__ import annotations

import pytest

from m2gate.config.declare import ConfigError
from m2gate.config.settings import Config
from m2gate.supervisor.serve import needs_master, serve


def test_plain_settings_run_one_process() -> None:
    assert not needs_master(Config())
    assert not needs_master(Config(processes=0, threads=8))


def test_asking_for_one_worker_process_gets_a_master() -> None:
    """``-p 1``: one worker under a master (reloads), not a single process."""
    assert needs_master(Config(processes=1))
    assert Config(processes=1).workers == 1
    assert Config(pidfile="/tmp/m2gate.pid").workers == 1  # master for another reason


@pytest.mark.parametrize(
    "settings",
    [
        {"processes": 1},
        {"processes": 2},
        {"preload": True},
        {"pidfile": "/tmp/m2gate.pid"},
        {"harakiri": 30.0},
        {"max_requests": 1000},
        {"reload_on_rss": 200},
        {"touch_reload": "/tmp/reload"},
        {"reload_on_change": True},
        {"stats": "127.0.0.1:9191"},
        {"metrics": "127.0.0.1:9192"},
    ],
)
def test_master_only_settings_need_the_master(settings: dict[str, object]) -> None:
    assert needs_master(Config(**settings))  # type: ignore[arg-type]


def test_worker_processes_refuse_gevent_before_forking_anything() -> None:
    with pytest.raises(ConfigError, match="worker_class=gevent"):
        serve(Config(processes=2, worker_class="gevent"))
    with pytest.raises(ConfigError, match="worker_class=gevent"):
        serve(Config(processes=2, worker_class="gevent", interface="asgi"))


def test_asgi_worker_processes_refuse_dispatch_direct_before_forking_anything() -> None:
    with pytest.raises(ConfigError, match=r"^dispatch: .*idle, round-robin"):
        serve(Config(processes=2, interface="asgi", dispatch="direct"))


def test_asgi_workers_count_asgi_connections_as_their_capacity() -> None:
    assert Config(interface="asgi", asgi_connections=7, threads=3).worker_capacity == 7
    assert Config(interface="wsgi", asgi_connections=7, threads=3).worker_capacity == 3
    # auto: the app is not imported yet; an ASGI app found then is refused (child.py)
    assert Config(interface="auto", asgi_connections=7, threads=3).worker_capacity == 3
