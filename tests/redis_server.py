"""A private redis-server for tests, on 127.0.0.1 on a free port in a temporary folder."""

import shutil
import socket
import subprocess
import time

import pytest


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server process with append-only persistence (fsync on every write)."""

    def __init__(self, folder, port=None):
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed (`apt-get install redis-server`).")
        self.executable, self.folder, self.port = executable, str(folder), port or free_port()
        self.process = None
        self.start()

    def start(self):
        self.process = subprocess.Popen(
            [
                self.executable, "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", self.folder, "--save", "", "--appendonly", "yes",
                "--appendfsync", "always", "--protected-mode", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server did not start on port {self.port}.")

    def kill(self):
        self.process.kill()
        self.process.wait()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

