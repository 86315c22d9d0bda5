"""A real, throwaway mosquitto for integration tests: loopback only, a free port, a temp config.

It never touches the shared broker on 1883: every instance binds its own free
port on 127.0.0.1 and keeps that port across `stop()` / `start()` so restart
tests reconnect to the same address. Missing binaries fail the test loudly:
these tests are the only proof the MQTT sink works against a real broker.
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

_START_TIMEOUT_S = 5.0


def _require(path: str, what: str, package: str) -> str:
    """`path` if it is executable; else the test fails naming the Debian package to install."""
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{what} not found. The MQTT sink tests run against a real broker: install it "
            f"(Debian/Ubuntu: apt-get install {package}).",
            pytrace=False,
        )
    return path


def _binary(name: str, fallback: str, package: str | None = None) -> str:
    """`name` on PATH, else `fallback` (see `_require`)."""
    what = f"`{name}` (looked on PATH and at {fallback})"
    return _require(shutil.which(name) or fallback, what, package or name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, a server certificate it signed (127.0.0.1 / localhost), and an
    unrelated CA to prove that verification fails closed."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path


def _openssl(command: str, cwd: Path) -> None:
    openssl = _binary("openssl", "/usr/bin/openssl")
    proc = subprocess.run(
        [openssl, *shlex.split(command)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"openssl {command} failed:\n{proc.stderr}", pytrace=False)


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate the certificates with the `openssl` CLI (P-256 keys: fast)."""
    directory.mkdir(parents=True, exist_ok=True)
    new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    ca_ext = (
        "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
    )
    for name in ("ca", "other-ca"):
        _openssl(
            f"req -x509 {new_key} -keyout {name}.key -out {name}.crt -days 2"
            f" -subj /CN=iwm-alerts-test-{name} {ca_ext}",
            cwd=directory,
        )
    (directory / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(f"req {new_key} -keyout server.key -out server.csr -subj /CN=localhost", cwd=directory)
    _openssl(
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2"
        " -extfile server.ext -out server.crt",
        cwd=directory,
    )
    return TlsFiles(
        ca=directory / "ca.crt",
        cert=directory / "server.crt",
        key=directory / "server.key",
        other_ca=directory / "other-ca.crt",
    )


class Mosquitto:
    """One mosquitto process on `127.0.0.1:<port>`; a context manager that stops it on exit.

    `passwords` switches anonymous access off and writes a password file with
    `mosquitto_passwd`; `tls` makes the listener TLS-only. Persistence is off,
    so a restart forgets retained messages (what a restart test wants to see
    republished).
    """

    name = "mosquitto"
    start_timeout_s = _START_TIMEOUT_S
    env: dict[str, str] | None = None

    def __init__(
        self,
        directory: Path,
        *,
        passwords: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self._binary = _binary("mosquitto", "/usr/sbin/mosquitto")
        self._prepare(directory, "mosquitto.log")
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            # Run as whoever runs the tests: as root mosquitto would otherwise
            # switch to the `mosquitto` user and lose access to the temp files.
            f"user {getpass.getuser()}",
        ]
        if passwords:
            lines += ["allow_anonymous false", f"password_file {self._password_file(passwords)}"]
        else:
            lines.append("allow_anonymous true")
        if tls is not None:
            lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}"]
        lines += extra  # e.g. "max_qos 1", "acl_file PATH"
        self.config_path = directory / "mosquitto.conf"
        self.config_path.write_text("\n".join(lines) + "\n")

    def _prepare(self, directory: Path, log_name: str) -> None:
        """The state every broker here starts from: its directory, a free port, its log."""
        self.directory = directory
        self.port = free_port()
        self.log_path = directory / log_name
        self._process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def _password_file(self, passwords: dict[str, str]) -> Path:
        tool = _binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd", "mosquitto")
        path = self.directory / "passwords"
        path.touch(mode=0o600)
        for user, password in passwords.items():
            subprocess.run([tool, "-b", str(path), user, password], check=True, timeout=10)
        return path

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        return [self._binary, "-c", str(self.config_path)]

    def start(self) -> None:
        """Start on the same port as before and return once it accepts TCP connections."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                pytest.fail(f"{self.name} exited at start:\n{self.log()}", pytrace=False)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        pytest.fail(
            f"{self.name} did not listen on {self.port} within {self.start_timeout_s} s:\n{self.log()}"
        )

    def stop(self) -> None:
        """Terminate (SIGTERM, then SIGKILL) and wait; clients see their sockets close."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
        process.terminate()
        try:
            process.wait(timeout=self.start_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): sockets stay open, nothing is acknowledged."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo `pause`."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        """What the broker wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class NatsMqtt(Mosquitto):
    """A NATS server (Debian's nats-server 2.9) with its MQTT listener on a free port.

    NATS speaks MQTT 3.1.1 at QoS 0 and 1 only: a QoS 2 publish gets the
    connection closed ("publish QoS=2 not supported"). Retained messages live in
    JetStream under `directory`, so they survive `stop()` / `start()`.
    """

    name = "nats-server"

    def __init__(self, directory: Path) -> None:
        self._binary = _binary("nats-server", "/usr/sbin/nats-server")
        self._prepare(directory, "nats.log")
        self.config_path = directory / "nats.conf"
        self.config_path.write_text(
            f"listen: 127.0.0.1:{free_port()}\n"
            "server_name: iwm-alerts-test\n"
            f'jetstream {{ store_dir: "{directory / "js"}" }}\n'
            f"mqtt {{ host: 127.0.0.1, port: {self.port} }}\n"
        )


_BROKERS_DIR = Path(__file__).resolve().parents[2] / "brokers"


class Aedes(Mosquitto):
    """aedes (npm, pinned in `tests/brokers/package-lock.json`), a Node.js MQTT 3.1.1 broker.

    It grants QoS 2, keeps retained messages in memory (a restart forgets them)
    and, unlike Mosquitto 2.0, answers a SUBSCRIBE its ACL forbids with SUBACK
    0x80: `deny_subscribe` names such topics. `passwords` switches anonymous
    access off. Installed by the README's test command (`npm ci --prefix tests/brokers`).
    """

    name = "aedes"

    def __init__(
        self,
        directory: Path,
        *,
        passwords: dict[str, str] | None = None,
        deny_subscribe: Sequence[str] = (),
    ) -> None:
        self._binary = _binary("node", "/usr/bin/node", "nodejs")
        if not (_BROKERS_DIR / "node_modules" / "aedes" / "package.json").exists():
            pytest.fail(
                "aedes is not installed: run `npm ci --prefix tests/brokers` (the README's "
                "test command does)",
                pytrace=False,
            )
        self._prepare(directory, "aedes.log")
        self._options: list[str] = []
        for user, password in (passwords or {}).items():
            self._options += ["--user", f"{user}:{password}"]
        for topic in deny_subscribe:
            self._options += ["--deny-subscribe", topic]

    def _command(self) -> list[str]:
        script = _BROKERS_DIR / "aedes_broker.js"
        return [self._binary, str(script), str(self.port), *self._options]


class RabbitMqtt(Mosquitto):
    """A private RabbitMQ 3.10 node (Debian's rabbitmq-server) with its MQTT plugin on a
    free port: its own node name, data directory and Erlang cookie, never the machine's.

    It answers a QoS 2 publish with PUBACK, the QoS 1 acknowledgement, and keeps no
    retained message for a wildcard subscription. Boots in about ten seconds.
    """

    name = "rabbitmq"
    start_timeout_s = 60.0

    def __init__(self, directory: Path) -> None:
        # Not /usr/sbin/rabbitmq-server: as root, Debian's wrapper switches to the
        # `rabbitmq` user and the machine's data directory.
        path = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        self._binary = _require(path, path, "rabbitmq-server")
        self._prepare(directory, "rabbitmq.log")
        amqp, dist = free_port(), free_port()
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{amqp}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n"
        )
        (directory / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        self.env = {
            **os.environ,
            "HOME": str(directory),  # its own Erlang cookie
            "RABBITMQ_NODENAME": f"iwm-alerts-test-{self.port}@localhost",
            "RABBITMQ_NODE_PORT": str(amqp),
            "RABBITMQ_DIST_PORT": str(dist),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(directory / "plugins"),
            "RABBITMQ_PID_FILE": str(directory / "pid"),
            "RABBITMQ_LOGS": "-",
            "RUNNING_UNDER_SYSTEMD": "1",  # exec the Erlang VM: SIGTERM stops the node
        }

    def _command(self) -> list[str]:
        return [self._binary]
