"""load_app: module:attr, factories, Flask's create_app, Django dirs, Paste ini; one-line errors."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from m2gate.loading import (
    AppLoadError,
    django_settings_module,
    load_app,
    paste_uri,
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh cwd; sys.path and sys.modules are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    try:
        yield tmp_path
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            del sys.modules[name]


def module(workdir: Path, source: str) -> str:
    """Write a uniquely named module and return its name."""
    name = "app_%s" % uuid.uuid4().hex[:10]
    (workdir / (name + ".py")).write_text(textwrap.dedent(source))
    return name


APP = """
def app(environ, start_response):
    return [b"app"]
def application(environ, start_response):
    return [b"application"]
"""

FACTORY = """
def make(name="default", debug=False):
    def wsgi(environ, start_response):
        return [("%s %s" % (name, debug)).encode()]
    return wsgi
def create_app():
    return make("created")
not_callable = 42
def broken():
    raise ValueError("bad factory")
"""


def body(app: Any) -> bytes:
    return b"".join(app({}, lambda *a: None))


def one_line(exc: pytest.ExceptionInfo[AppLoadError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_module_attr_and_default_names(workdir: Path) -> None:
    name = module(workdir, APP)
    assert body(load_app(name + ":app")) == b"app"
    assert body(load_app(name)) == b"application"  # application first, like mod_wsgi
    only_app = module(workdir, "def app(e, s):\n    return [b'only']\n")
    assert body(load_app(only_app)) == b"only"


def test_file_path_target(workdir: Path) -> None:
    sub = workdir / "sub"
    sub.mkdir()
    name = module(sub, APP)
    assert body(load_app("sub/%s.py:app" % name)) == b"app"


def test_factory_call_with_literal_arguments(workdir: Path) -> None:
    name = module(workdir, FACTORY)
    assert body(load_app(name + ":make()")) == b"default False"
    assert body(load_app(name + ":make('x', debug=True)")) == b"x True"


def test_create_app_convention_when_no_app(workdir: Path) -> None:
    name = module(workdir, FACTORY)
    assert body(load_app(name)) == b"created False"


def test_chdir_then_import(tmp_path: Path, workdir: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    name = module(inner, APP)
    assert body(load_app(name + ":app", chdir=str(inner))) == b"app"
    assert Path.cwd() == inner


@pytest.mark.parametrize(
    ("attr", "expected"),
    [
        (":missing", "has no attribute missing"),
        (":not_callable", "is not callable"),
        (":broken()", "raised ValueError: bad factory"),
        (":make(os.system('x'))", "is not a factory call"),
        (":make(1)(2)", "is not a factory call"),
        (":missing()", "has no attribute missing"),
    ],
)
def test_factory_and_attribute_errors(workdir: Path, attr: str, expected: str) -> None:
    name = module(workdir, FACTORY)
    with pytest.raises(AppLoadError) as info:
        load_app(name + attr)
    assert expected in one_line(info)


def test_module_without_app(workdir: Path) -> None:
    name = module(workdir, "x = 1\n")
    with pytest.raises(AppLoadError) as info:
        load_app(name)
    assert "no attribute application or app, and no create_app()" in one_line(info)


def test_missing_module_and_import_errors(workdir: Path) -> None:
    with pytest.raises(AppLoadError) as info:
        load_app("no_such_module_xyz:app")
    assert "no module named 'no_such_module_xyz'" in one_line(info)
    name = module(workdir, "import no_such_dependency_xyz\n")
    with pytest.raises(AppLoadError) as info:
        load_app(name)
    text = one_line(info)
    assert "ModuleNotFoundError" in text and "no_such_dependency_xyz" in text
    bad = module(workdir, "def app(:\n")
    with pytest.raises(AppLoadError) as info:
        load_app(bad)
    assert "SyntaxError" in one_line(info) and "line 1" in one_line(info)


def test_nothing_given_and_both_given(workdir: Path) -> None:
    with pytest.raises(AppLoadError) as info:
        load_app("")
    assert "no application given" in one_line(info)
    with pytest.raises(AppLoadError) as info:
        load_app("x:app", paste="dev.ini")
    assert "only one" in one_line(info)


def test_bad_chdir(workdir: Path) -> None:
    with pytest.raises(AppLoadError) as info:
        load_app("x:app", chdir=str(workdir / "missing"))
    assert "chdir" in one_line(info)


# -- Django settings discovery (the real project is served in the integration tests)


def test_django_settings_from_manage_py(tmp_path: Path) -> None:
    (tmp_path / "manage.py").write_text(
        'import os\nos.environ.setdefault("DJANGO_SETTINGS_MODULE", "conf.prod_settings")\n'
    )
    assert django_settings_module(str(tmp_path)) == "conf.prod_settings"


def test_django_settings_by_project_name(tmp_path: Path) -> None:
    project = tmp_path / "mysite"
    (project / "mysite").mkdir(parents=True)
    (project / "other").mkdir()
    (project / "manage.py").write_text("# no default here\n")
    (project / "mysite" / "settings.py").write_text("")
    (project / "other" / "settings.py").write_text("")
    assert django_settings_module(str(project)) == "mysite.settings"


def test_django_settings_single_candidate_or_error(tmp_path: Path) -> None:
    (tmp_path / "manage.py").write_text("\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "settings.py").write_text("")
    assert django_settings_module(str(tmp_path)) == "conf.settings"
    (tmp_path / "conf2").mkdir()
    (tmp_path / "conf2" / "settings.py").write_text("")
    with pytest.raises(AppLoadError) as info:
        django_settings_module(str(tmp_path))
    assert "conf/settings.py, conf2/settings.py" in one_line(info)


def test_paste_uri_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ini = str(tmp_path / "dev.ini")
    assert paste_uri("dev.ini") == ("config:" + ini, None)
    assert paste_uri("config:dev.ini#api") == ("config:" + ini, "api")
    assert paste_uri(ini + "#main") == ("config:" + ini, "main")


def test_paste_errors(workdir: Path) -> None:
    with pytest.raises(AppLoadError) as info:
        load_app("", paste="missing.ini")
    assert "no such file" in one_line(info)
    (workdir / "dev.ini").write_text("[app:main]\nuse = call:no_such_module_q:main\n")
    with pytest.raises(AppLoadError) as info:
        load_app("", paste="dev.ini")
    assert "ModuleNotFoundError" in one_line(info) or "no_such_module_q" in one_line(info)
    (workdir / "two.ini").write_text("[app:other]\nuse = call:x:y\n")
    with pytest.raises(AppLoadError) as info:
        load_app("", paste="two.ini")
    assert "paste two.ini" in one_line(info)
