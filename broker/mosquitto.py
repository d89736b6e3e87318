"""Run a private Mosquitto on a free loopback port (for the demo and the tests).

The process can be stopped and started again on the same port and with the
same persistence file, which the fault tests rely on.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BROKER_DIR = Path(__file__).resolve().parent
DEV_CONF = BROKER_DIR / "mosquitto.conf"
START_TIMEOUT_S = 10.0


class MosquittoError(RuntimeError):
    pass


def binary() -> str | None:
    """Path of the mosquitto binary, or None where it is not installed."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(host: str, port: int, timeout: float = START_TIMEOUT_S) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise MosquittoError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


class Mosquitto:
    """A mosquitto process with its own config, data folder and log."""

    def __init__(
        self,
        *,
        port: int | None = None,
        workdir: Path | None = None,
        persistence: bool = False,
        extra_config: str = "",
        base_config: Path | None = DEV_CONF,
    ) -> None:
        exe = binary()
        if exe is None:
            raise MosquittoError("mosquitto is not installed (apt-get install -y mosquitto)")
        self.exe = exe
        self.port = port or free_port()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="chequered-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "mosquitto.log"
        self.conf_path = self.workdir / "mosquitto.conf"
        base = base_config.read_text() if base_config else ""
        # The base config's listeners are replaced by ours; everything else is kept. A
        # sessions listener (one that ties client ids to user names) gets a port too.
        sessions = any(
            line.split() == ["use_username_as_clientid", "true"] for line in base.splitlines()
        )
        base = "\n".join(
            line
            for line in base.splitlines()
            if not line.strip().startswith(("listener", "log_dest", "use_username_as_clientid"))
        )
        self.sessions_port: int | None = free_port() if sessions else None
        """The port of the listener where a client's id is its user name, if the config has one."""
        lines = [
            base,
            f"listener {self.port} 127.0.0.1",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if self.sessions_port is not None:
            lines += [f"listener {self.sessions_port} 127.0.0.1", "use_username_as_clientid true"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Started as root, mosquitto switches to the `mosquitto` user, which
            # cannot write the log or the persistence file in our private folder.
            lines.append("user root")
        if persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
            ]
        lines.append(extra_config)
        self.conf_path.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def sessions_url(self) -> str:
        """The sessions listener's URL (no credentials: add a user's)."""
        if self.sessions_port is None:
            raise MosquittoError("this broker's config has no sessions listener")
        return f"mqtt://127.0.0.1:{self.sessions_port}"

    def start(self) -> Mosquitto:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_listening("127.0.0.1", self.port)
        except MosquittoError:
            self.stop()
            raise MosquittoError(f"mosquitto did not start; see {self.log_path}") from None
        return self

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
