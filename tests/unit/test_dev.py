"""``m2gate dev`` without running it: options, the serve command line, run dir, watching,
the Django static-file discovery and the Mongrel2 config the harness renders for it.

tests/integration/test_dev.py runs the command itself behind a real Mongrel2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from m2gate.cli import build_parser, main
from m2gate.cli import dev as devmod
from m2gate.cli.dev import (
    DevOptions,
    Plan,
    SourceTree,
    child_argv,
    dev_defaults,
    parse_host,
    parse_options,
    parse_port,
    prepare_run_dir,
    serve_argv,
    watch_roots,
)
from m2gate.cli.devstatic import (
    DjangoProject,
    django_static,
    find_django,
    normalise_prefix,
    parse_static,
    parse_statics,
)
from m2gate.config.declare import ConfigError
from m2gate.config.loader import load
from m2gate.config.settings import Config
from m2gate.testing.mongrel2 import DirSpec, HandlerSpec, Mongrel2, Mongrel2Error


def dev_values(*argv: str) -> dict[str, Any]:
    return vars(build_parser().parse_args(["dev", *argv]))


def serve_values(*argv: str) -> dict[str, Any]:
    values = vars(build_parser().parse_args(["serve", *argv]))
    values.pop("command")
    return values


# -- options -----------------------------------------------------------------


def test_dev_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["dev", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: m2gate dev" in out
    assert "--static URL_PREFIX=DIR" in out and "--threads" in out


def test_options_dev_decides_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for option in ("--send-spec", "--zeromq", "--daemon", "--mongrel2-db", "--user"):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["dev", "app:x", option, "v"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "unrecognized arguments" in err[0], err


def test_parse_options_defaults_and_serve_settings(tmp_path: Path) -> None:
    opts = parse_options(dev_values("app.py:app", "-p", "2", "--threads", "3"), str(tmp_path))
    assert opts.host == "127.0.0.1" and opts.port is None and opts.reload
    assert opts.run_dir == tmp_path / ".m2gate-dev"
    assert opts.serve == {"app": "app.py:app", "processes": "2", "threads": "3"}
    opts = parse_options(
        dev_values("x:y", "--host", "0.0.0.0", "--port", "8080", "--run-dir", "r", "--no-reload"),
        str(tmp_path),
    )
    assert (opts.host, opts.port, opts.run_dir, opts.reload) == (
        "0.0.0.0",
        8080,
        tmp_path / "r",
        False,
    )


@pytest.mark.parametrize("raw", ["localhost", "300.1.1.1", "", "::1"])
def test_bad_host_is_one_line_naming_it(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^host: invalid value .*accepted: an IPv4 address"):
        parse_host(raw)


@pytest.mark.parametrize("raw", ["http", "-1", "65536", "8o8o", "١٢٣"])
def test_bad_port_is_one_line_naming_it(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^port: invalid value .*accepted: a TCP port 1-65535"):
        parse_port(raw)
    assert parse_port("") is None and parse_port("0") is None and parse_port("443") == 443


def test_static_option(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    spec = parse_static("/assets=assets", str(tmp_path))
    assert spec == DirSpec(route="/assets/", base=str(tmp_path / "assets"))
    assert parse_static("media/=%s" % (tmp_path / "assets"), "/").route == "/media/"
    assert normalise_prefix("/a/b") == "/a/b/"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("assets", "accepted: URL_PREFIX=DIR"),
        ("=assets", "accepted: URL_PREFIX=DIR"),
        ("/assets=", "accepted: URL_PREFIX=DIR"),
        ("/=assets", "URL prefix / is the app's route"),
        ("/a(b)=assets", "invalid URL prefix"),
        ("/a b/=assets", "invalid URL prefix"),
        ("/x/=missing", "is not a directory"),
    ],
)
def test_bad_static_option(tmp_path: Path, raw: str, message: str) -> None:
    (tmp_path / "assets").mkdir()
    with pytest.raises(ConfigError, match=r"^static: ") as exc:
        parse_static(raw, str(tmp_path))
    assert message in str(exc.value)


def test_static_prefix_given_twice(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="/s/ given twice"):
        parse_statics(["/s=%s" % tmp_path, "s/=%s" % tmp_path], "/")


# -- the serve command line ----------------------------------------------------


def test_serve_argv_means_what_dev_was_given() -> None:
    """Parsed by serve's own parser, the rebuilt arguments give the same settings."""
    given = dev_values(
        "app.py:application",
        "--threads=4",
        "-p",
        "2",
        "--env",
        "A=1",
        "--env",
        "B=-x",
        "--no-preload",
        "--stream-uploads",
        "--access-log-format=-%(s)s",
        "--graceful-timeout",
        "-1",
    )
    serve = parse_options(given, "/").serve
    argv = serve_argv(serve)
    assert argv[0] == "app.py:application"
    assert serve_values(*argv) == serve


def test_child_argv_adds_the_specs_and_the_master_reload(tmp_path: Path) -> None:
    m2 = Mongrel2(tmp_path, handlers=[HandlerSpec(route="/")], port=8000)
    opts = parse_options(dev_values("app:x", "-p", "2"), str(tmp_path))
    cfg = load({**opts.serve, "send_spec": "tcp://127.0.0.1:1"}, environ={})
    plan = Plan(opts, cfg, master=True, statics=[], hints=[], django_dir="")
    argv = child_argv(plan, m2, environ={})
    assert argv[:4] == [sys.executable, "-m", "m2gate", "serve"]
    values = serve_values(*argv[4:])
    assert values["send_spec"] == [m2.handler.send_spec]
    assert values["recv_spec"] == [m2.handler.recv_spec]
    assert values["send_ident"] == m2.handler.send_ident
    assert values["upload_dir"] == str(m2.upload_dir)
    assert values["reload_on_change"] is True
    assert values["access_log"] == "-" and values["graceful_timeout"] == "5"
    # one process: dev restarts it itself, the child does not watch
    plan.master = False
    assert "reload_on_change" not in serve_values(*child_argv(plan, m2, environ={})[4:])


def test_dev_defaults_yield_to_every_source() -> None:
    cfg = Config()
    assert dev_defaults({}, cfg, {}) == {"access_log": "-", "graceful_timeout": "5"}
    assert "access_log" not in dev_defaults({"access_log": "x.log"}, cfg, {})
    assert "graceful_timeout" not in dev_defaults({}, cfg, {"M2GATE_GRACEFUL_TIMEOUT": "30"})
    from_file = Config(graceful_timeout=12.0)
    assert "graceful_timeout" not in dev_defaults({}, from_file, {})


def test_missing_app_and_bad_serve_values_fail_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^app: missing"):
        devmod.make_plan(dev_values(), {})
    with pytest.raises(ConfigError, match="threads"):
        devmod.make_plan(dev_values("a:b", "--threads", "many"), {})
    assert not (tmp_path / ".m2gate-dev").exists()


def test_missing_mongrel2_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["dev", "app:x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [devmod.MISSING_MONGREL2]
    assert not (tmp_path / ".m2gate-dev").exists()


# -- run directory -------------------------------------------------------------


def test_run_dir_new_empty_or_ours(tmp_path: Path) -> None:
    fresh = prepare_run_dir(tmp_path / "a" / "run")
    assert (fresh / ".m2gate-dev").is_file()
    (fresh / "m2.conf").write_text("x")
    assert prepare_run_dir(fresh) == fresh  # ours: reused
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_run_dir(empty) == empty


def test_run_dir_holding_other_files_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "prod"
    theirs.mkdir()
    (theirs / "config.sqlite").write_text("their production config")
    with pytest.raises(ConfigError, match=r"^run_dir: .* m2gate dev did not make"):
        prepare_run_dir(theirs)
    assert (theirs / "config.sqlite").read_text() == "their production config"
    (theirs / ".m2gate-dev").symlink_to(theirs / "config.sqlite")  # a planted marker
    with pytest.raises(ConfigError, match=r"^run_dir: "):
        prepare_run_dir(theirs)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        prepare_run_dir(tmp_path / "file")


# -- watching --------------------------------------------------------------------


def test_source_tree_sees_changes_additions_and_removals(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text("x = 1\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("")
    tree = SourceTree([str(tmp_path)])
    assert set(tree.files) == {str(app), str(tmp_path / "pkg" / "mod.py")}
    assert tree.changed() == ""
    os.utime(app, (1, 1))
    assert tree.changed() == "%s changed" % app
    assert tree.changed() == ""
    (tmp_path / "new.py").write_text("")
    assert tree.changed() == "%s added" % (tmp_path / "new.py")
    (tmp_path / "pkg" / "mod.py").unlink()
    assert tree.changed() == "%s removed" % (tmp_path / "pkg" / "mod.py")


def test_source_tree_skips_what_is_not_the_apps(tmp_path: Path) -> None:
    for rel in (
        ".git/hook.py",
        ".m2gate-dev/x.py",
        "venv/lib/x.py",
        "__pycache__/x.py",
        "node_modules/x.py",
        "run/x.py",
        "static/x.py",
        "notes.txt",
        "page.html",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    (tmp_path / "venv" / "pyvenv.cfg").write_text("")
    (tmp_path / "app.py").write_text("")
    tree = SourceTree([str(tmp_path)], skip=[str(tmp_path / "run"), str(tmp_path / "static")])
    assert list(tree.files) == [str(tmp_path / "app.py")]
    html = SourceTree([str(tmp_path)], suffixes=(".py", ".html"), skip=[str(tmp_path / "run")])
    assert str(tmp_path / "page.html") in html.files


def test_source_tree_scan_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devmod, "MAX_SCANNED", 5)
    for i in range(10):
        (tmp_path / ("m%d.py" % i)).write_text("")
    tree = SourceTree([str(tmp_path)])
    assert tree.truncated and len(tree.files) < 10


def test_watch_roots(tmp_path: Path) -> None:
    assert watch_roots(Config(app="examples/hello.py:application", chdir=str(tmp_path))) == [
        str(tmp_path / "examples")
    ]
    assert watch_roots(Config(app="pkg.mod:app", chdir=str(tmp_path))) == [str(tmp_path)]
    assert watch_roots(Config(app="x", chdir="/"), django_dir=str(tmp_path)) == [str(tmp_path)]
    ini = Config(paste=str(tmp_path / "conf" / "dev.ini"), chdir="/")
    assert watch_roots(ini) == [str(tmp_path / "conf")]


# -- Django ----------------------------------------------------------------------


def make_project(root: Path, name: str = "mysite") -> Path:
    (root / name).mkdir(parents=True)
    (root / "manage.py").write_text(
        "import os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', '%s.settings')\n" % name
    )
    (root / name / "__init__.py").write_text("")
    (root / name / "settings.py").write_text("")
    (root / name / "wsgi.py").write_text(
        'import os\nos.environ.setdefault("DJANGO_SETTINGS_MODULE", "%s.settings")\n' % name
    )
    return root


def test_find_django_from_project_dir_module_file_or_env(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    assert find_django(Config(app=str(project)), {}) == DjangoProject(
        "mysite.settings", str(project)
    )
    # the project's wsgi module, by dotted name from the project or as a file
    assert find_django(Config(app="mysite.wsgi:application", chdir=str(project)), {}) == (
        DjangoProject("mysite.settings", str(project))
    )
    by_file = Config(app=str(project / "mysite" / "wsgi.py") + ":application", chdir="/")
    assert find_django(by_file, {}) == DjangoProject("mysite.settings", str(project))
    # DJANGO_SETTINGS_MODULE wins over the defaults
    env = {"DJANGO_SETTINGS_MODULE": "mysite.prod"}
    assert find_django(Config(app=str(project)), env) == DjangoProject("mysite.prod", str(project))


def test_find_django_is_none_for_other_apps(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text("def application(e, s): pass\n")
    assert find_django(Config(app="hello.py:application", chdir=str(tmp_path)), {}) is None
    assert find_django(Config(app="hello:application", chdir=str(tmp_path)), {}) is None
    assert find_django(Config(app="nosuchmodule:app", chdir=str(tmp_path)), {}) is None


PROJECT = DjangoProject("mysite.settings", "/srv/proj")


def test_django_static_route_when_collected(tmp_path: Path) -> None:
    (tmp_path / "admin").mkdir()
    found = django_static(PROJECT, {"url": "/static/", "root": str(tmp_path)})
    assert found.route == DirSpec("/static/", str(tmp_path)) and found.hint == ""
    relative = django_static(PROJECT, {"url": "assets/", "root": str(tmp_path)})
    assert relative.route is not None and relative.route.route == "/assets/"


def test_django_static_hints(tmp_path: Path) -> None:
    empty = django_static(PROJECT, {"url": "/static/", "root": str(tmp_path)})
    assert empty.route is not None  # routed: collectstatic later needs no restart
    assert "is empty: run `python manage.py collectstatic`" in empty.hint
    missing = django_static(PROJECT, {"url": "/static/", "root": str(tmp_path / "nope")})
    assert missing.route is not None and "does not exist" in missing.hint
    unset = django_static(PROJECT, {"url": "/static/", "root": ""})
    assert unset.route is None and "STATIC_ROOT is not set" in unset.hint
    assert "collectstatic" in unset.hint
    cdn = django_static(PROJECT, {"url": "https://cdn.example/s/", "root": str(tmp_path)})
    assert cdn.route is None and "another server" in cdn.hint
    broken = django_static(PROJECT, {"error": "ImportError: no module named x"})
    assert broken.route is None and "could not be read" in broken.hint
    for found in (empty, missing, unset, cdn, broken):
        assert "\n" not in found.hint


def test_read_static_settings_from_a_real_project(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "mysite", str(project)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + "\nSTATIC_ROOT = BASE_DIR / 'collected'\n")
    found = find_django(Config(app=str(project)), {})
    assert found is not None
    values = devmod.read_static_settings(found, dict(os.environ))
    assert values == {"url": "/static/", "root": str(project / "collected")}
    settings.write_text("raise RuntimeError('broken settings')\n")
    assert "RuntimeError: broken settings" in devmod.read_static_settings(found, {})["error"]


# -- the Mongrel2 config -----------------------------------------------------------


def test_config_has_dir_routes_and_the_bind_address(tmp_path: Path) -> None:
    m2 = Mongrel2(
        tmp_path,
        handlers=[HandlerSpec(route="/")],
        port=8080,
        bind_addr="0.0.0.0",
        dirs=[DirSpec("/static/", "/srv/static"), DirSpec("/media/", "/srv/media/")],
    )
    text = m2.render_config()
    assert 'bind_addr="0.0.0.0"' in text and "port=8080" in text
    assert (
        '"/static/": Dir(base="/srv/static/", index_file="index.html",'
        ' default_ctype="application/octet-stream")' in text
    )
    assert '"/media/": Dir(base="/srv/media/"' in text
    assert '"/": Handler(' in text
    assert m2.url == "http://127.0.0.1:8080"  # a wildcard address is reached on loopback
    assert "limits.dir_max_path" not in text


def test_long_dir_paths_raise_mongrel2s_limit(tmp_path: Path) -> None:
    base = "/" + "d" * 300
    m2 = Mongrel2(tmp_path, dirs=[DirSpec("/static/", base)])
    assert m2.settings["limits.dir_max_path"] == len(base) + 2  # with its trailing /


@pytest.mark.parametrize(
    ("dirs", "message"),
    [
        ([DirSpec("static/", "/srv")], "must start and end with /"),
        ([DirSpec("/static", "/srv")], "must start and end with /"),
        ([DirSpec("/static/", "srv")], "absolute"),
        ([DirSpec("/", "/srv")], "duplicate routes"),
        ([DirSpec("/a/", "/srv"), DirSpec("/a/", "/tmp")], "duplicate routes"),
    ],
)
def test_bad_dir_routes(tmp_path: Path, dirs: list[DirSpec], message: str) -> None:
    with pytest.raises(Mongrel2Error, match=message):
        Mongrel2(tmp_path, dirs=dirs)


def test_dev_options_defaults() -> None:
    assert DevOptions().run_dir == Path(".m2gate-dev").absolute()
