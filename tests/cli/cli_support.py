"""Helpers of the command-line tests: a free port, a ``dotproxy serve`` subprocess, dig."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

DOTPROXY = shutil.which("dotproxy")
DIG = shutil.which("dig")


def free_port() -> int:
    """A loopback port free for both TCP and UDP right now."""
    for _ in range(50):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
        finally:
            t.close()
            u.close()
    raise AssertionError("no port free for both TCP and UDP")


class Serve:
    """``dotproxy serve ARGS`` as a subprocess, its stderr (the log) collected line by line."""

    def __init__(self, *args: str) -> None:
        self.args = [DOTPROXY, "serve", *args]
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                m = re.search(pattern, "".join(self.lines))
                if m:
                    return m
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{pattern!r} not logged in {timeout}s (exit {self.proc.poll()}):\n"
                                         + "".join(self.lines))
                self._changed.wait(min(left, 0.1))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def stop(self) -> None:
        """End it whatever state it is in (by pid), and release its pipes."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(Exception):
                pipe.close()

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def run_serve(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    """``dotproxy serve ARGS`` that is expected to exit by itself (a config error); one still
    running after ``timeout`` seconds is killed and fails the test (it took the config)."""
    try:
        return subprocess.run([DOTPROXY, "serve", *args], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"dotproxy serve {' '.join(args)} still ran after {timeout}s: the configuration "
                             f"was accepted; log: {e.stderr!r}") from None


def dig(port: int, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run([DIG, "@127.0.0.1", "-p", str(port), "+tries=1", "+time=2", *args],
                          capture_output=True, text=True, timeout=timeout)
