"""Confining the process: daemonizing, chroot, privilege drop, the app's environment.

Start-up runs them in this order (m2gate.cli.main, then supervisor.master.serve)::

    cfg = config.resolve.configure(cli_values)  # settings, --app-dir, --mongrel2-db
    logs.setup_logging(cfg)                # opens log files: errors still on the terminal
    detach(cfg)                            # preflight checks, then --daemon (before any
                                           # thread or ZeroMQ context)
    <pidfile lock>                         # after daemonize: the PID is final
    confine(cfg)                           # --chroot (root), side listeners bound,
                                           # --user/--group, --env, --virtualenv,
                                           # --pythonpath
    <load the app (preload) or fork workers that load it>
    SIGUSR1 (from the master's loop, never in the handler): logs.reopen_logs()

Without a master, :func:`start_single` replaces the pidfile and confine steps.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import site
import sys
from collections.abc import Iterable

from m2gate import logs
from m2gate.config.declare import ConfigError
from m2gate.config.settings import Config, settings

log = logging.getLogger("m2gate")

# -- daemon, chroot, privileges -----------------------------------------------------


def daemonize() -> None:
    """Detach: fork, setsid, fork again; the original process exits 0.

    Call before any thread or ZeroMQ context exists (fork keeps only the
    calling thread) and after :func:`logs.setup_logging`, so start-up errors
    are still shown on the terminal. stdin/stdout/stderr become /dev/null
    unless a log file captured them; the working directory is kept, since
    relative paths in the settings are relative to it.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() > 0:
        os._exit(0)  # the shell gets its prompt back
    os.setsid()
    if os.fork() > 0:
        os._exit(0)  # the session leader exits: we can never regain a terminal
    os.umask(0o022)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    for fd in (1, 2):
        if os.isatty(fd) or not _captured(fd):
            os.dup2(devnull, fd)
    os.close(devnull)


def _captured(fd: int) -> bool:
    """Whether ``fd`` was pointed at a log file by setup_logging(capture_stdio)."""
    try:
        target = os.fstat(fd)
    except OSError:
        return False
    for handler in logs._reopenable:
        stream = handler.stream
        if handler.capture_stdio and stream is not None and not stream.closed:
            own = os.fstat(stream.fileno())
            if (own.st_dev, own.st_ino) == (target.st_dev, target.st_ino):
                return True
    return False


# Paths already used up when the chroot is entered: not translated, not warned about.
_USED_BEFORE_CHROOT = frozenset({"config", "app_dir", "chroot", "mongrel2_db"})


def enter_chroot(cfg: Config) -> None:
    """chroot() into ``cfg.chroot`` and rewrite path settings to their inside names.

    Needs root; run after daemonize and the pidfile, before drop_privileges.
    Paths outside the new root can no longer be reached: they are reported.
    """
    root = os.path.abspath(cfg.chroot)
    cwd = os.getcwd()  # relative settings are relative to where we started
    try:
        os.chroot(root)
        os.chdir("/")
    except OSError as exc:
        raise ConfigError("chroot: cannot enter %s: %s" % (root, exc.strerror or exc)) from None
    logs.set_chroot(root)

    def inside(path: str) -> str:
        full = os.path.normpath(os.path.join(cwd, path)) if path else path
        if full == root or full.startswith(root + "/"):
            return full[len(root) :] or "/"
        if path and path != "-":
            log.warning("chroot %s: %s is outside it and cannot be reached", root, path)
        return path

    for f, meta, _ in settings():
        if not meta.path or f.name in _USED_BEFORE_CHROOT:
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, list):
            setattr(cfg, f.name, [inside(v) for v in value])
        elif f.name == "paste" and value:
            path, sep, section = value.removeprefix("config:").partition("#")
            cfg.paste = inside(path) + sep + section
        elif value and value != "-":
            setattr(cfg, f.name, inside(value))
    log.info("chrooted into %s", root)


def resolve_ids(user: str, group: str) -> tuple[int | None, int | None, str | None]:
    """(uid, gid, user name) for the settings; gid defaults to the user's group."""
    uid = gid = None
    name = None
    if user:
        try:
            entry = (
                pwd.getpwuid(int(user))
                if (user.isascii() and user.isdigit())
                else pwd.getpwnam(user)
            )
            uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
        except KeyError:
            if not (user.isascii() and user.isdigit()):
                raise ConfigError("user: no such user %r" % user) from None
            uid = int(user)
    if group:
        try:
            gid = (
                int(group) if (group.isascii() and group.isdigit()) else grp.getgrnam(group).gr_gid
            )
        except KeyError:
            raise ConfigError("group: no such group %r" % group) from None
    return uid, gid, name


def drop_privileges(user: str, group: str) -> None:
    """Become ``user``/``group`` for good (groups, then gid, then uid).

    The open log files (reopened on SIGUSR1) are given to the new owner
    first, by ``fchown`` on the fds :func:`m2gate.config.paths.open_own`
    proved ours; no path is ever chowned (a path can be swapped for a link
    to someone else's file). Run it after
    everything that needs root (binding, pidfile, chroot) and before the app
    is imported, so no app code ever runs as root.
    """
    if not user and not group:
        return
    uid, gid, name = resolve_ids(user, group)
    if os.geteuid() != 0:
        if (uid is None or uid == os.geteuid()) and (gid is None or gid == os.getegid()):
            return
        raise ConfigError(
            "user/group: switching to %s/%s needs root (running as uid %d)"
            % (user or "-", group or "-", os.geteuid())
        )
    logs.give_log_files(uid, gid)
    if gid is not None:
        if name is not None:
            os.initgroups(name, gid)
        else:
            os.setgroups([gid])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)
        if name is not None:
            os.environ["HOME"] = _home(uid)
    log.info("running as uid %d, gid %d", os.getuid(), os.getgid())


def _home(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return "/"


# -- the app's environment -----------------------------------------------------------


def venv_site_packages(venv: str) -> str:
    """``venv``'s site-packages for this Python version; ConfigError if there is none."""
    if not os.path.isdir(venv):
        raise ConfigError("virtualenv: %s is not a directory" % venv)
    version = "python%d.%d" % sys.version_info[:2]
    site_packages = os.path.join(venv, "lib", version, "site-packages")
    if not os.path.isdir(site_packages):
        lib = os.path.join(venv, "lib")
        found = (
            sorted(d for d in os.listdir(lib) if d.startswith("python"))
            if os.path.isdir(lib)
            else []
        )
        raise ConfigError(
            "virtualenv: %s has no lib/%s/site-packages (found: %s); it must be made"
            " with the Python running m2gate (%s)"
            % (venv, version, ", ".join(found) or "none", sys.executable)
        )
    return site_packages


def activate_virtualenv(venv: str) -> None:
    """Import from ``venv``'s site-packages (before ours), as ``bin/activate`` would.

    Its Python must be the same major.minor as the one running m2gate: compiled
    packages are built for one version.
    """
    venv = os.path.abspath(venv)
    site_packages = venv_site_packages(venv)
    before = list(sys.path)
    site.addsitedir(site_packages)  # also runs its .pth files
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before
    os.environ["VIRTUAL_ENV"] = venv
    os.environ["PATH"] = os.path.join(venv, "bin") + os.pathsep + os.environ.get("PATH", "")
    log.info("using virtualenv %s", venv)


def _check_dirs(dirs: Iterable[str]) -> list[str]:
    dirs = [os.path.abspath(d) for d in dirs]
    for d in dirs:
        if not os.path.isdir(d):
            raise ConfigError("pythonpath: %s is not a directory" % d)
    return dirs


def add_pythonpath(dirs: Iterable[str]) -> None:
    """Put ``dirs`` first on sys.path, in the order given."""
    dirs = _check_dirs(dirs)
    sys.path[:] = dirs + [p for p in sys.path if p not in dirs]


def apply_env(pairs: Iterable[str]) -> None:
    """Set each ``KEY=VALUE`` in os.environ (validated by the setting already)."""
    for pair in pairs:
        key, _, value = pair.partition("=")
        os.environ[key] = value


def prepare_app_environment(cfg: Config) -> None:
    """--env, --virtualenv, --pythonpath: call once in the process that imports the app."""
    apply_env(cfg.env)
    if cfg.virtualenv:
        activate_virtualenv(cfg.virtualenv)
    if cfg.pythonpath:
        add_pythonpath(cfg.pythonpath)


def preflight(cfg: Config) -> None:
    """Check what confine() will need, while errors still reach the terminal."""
    if cfg.chroot and not os.path.isdir(cfg.chroot):
        raise ConfigError("chroot: %s is not a directory" % cfg.chroot)
    if cfg.chroot and os.geteuid() != 0:
        raise ConfigError("chroot: needs root (running as uid %d)" % os.geteuid())
    if cfg.user or cfg.group:
        uid, gid, _ = resolve_ids(cfg.user, cfg.group)
        if os.geteuid() != 0 and (
            uid not in (None, os.geteuid()) or gid not in (None, os.getegid())
        ):
            raise ConfigError(
                "user/group: switching to %s/%s needs root (running as uid %d)"
                % (cfg.user or "-", cfg.group or "-", os.geteuid())
            )
    if cfg.metrics:
        from m2gate.ops.stats import require_metrics

        require_metrics()
    if not cfg.chroot:  # inside a chroot these paths are checked when they are used
        if cfg.virtualenv:
            venv_site_packages(os.path.abspath(cfg.virtualenv))
        _check_dirs(cfg.pythonpath)


def detach(cfg: Config) -> None:
    """--daemon: step one of start-up, before the pidfile lock (the PID changes here).

    Everything that can be checked is checked first (:func:`preflight`), so a
    daemon does not die in the background for a typo.
    """
    preflight(cfg)
    if cfg.daemon:
        if not cfg.log_file:
            log.warning("--daemon without --log-file: the log will be lost")
        daemonize()


def bind_side_listeners(cfg: Config) -> None:
    """Bind the control socket and ``--stats``/``--metrics`` while still root.

    Their directories can then stay root's (the unprivileged master could not
    create a socket there), and a port below 1024 works. The master's
    servers adopt these sockets (:func:`m2gate.ops.listener.adopt`).
    """
    from m2gate.ops.control import prebind_control
    from m2gate.ops.pidfile import control_path_for
    from m2gate.ops.stats import prebind_document

    if cfg.pidfile:
        prebind_control(control_path_for(os.path.abspath(cfg.pidfile)))
    for name in ("stats", "metrics"):
        addr = getattr(cfg, name)
        if addr:
            prebind_document(addr, name)


def confine(cfg: Config, listeners: bool = True) -> None:
    """--chroot, --user/--group, then --env/--virtualenv/--pythonpath.

    Step two, after the pidfile lock and before the app is imported. With
    ``listeners`` (the master), its side listeners are bound before the
    privilege drop. Nothing is chowned by path: the
    log files are handed over by fd, and directories (an app folder's run/
    and logs/) stay root's, so nothing in them can be swapped by the user.
    """
    if cfg.chroot:
        enter_chroot(cfg)
    if listeners:
        bind_side_listeners(cfg)
    drop_privileges(cfg.user, cfg.group)
    prepare_app_environment(cfg)


def start_single(cfg: Config) -> None:
    """The single-process serve: :func:`confine`, and SIGUSR1 reopens the log files."""
    confine(cfg, listeners=False)
    logs.reopen_on_sigusr1()
