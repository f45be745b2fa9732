"""A bbt-server on the real default model for the whole test session, and the paths of bbt's
binaries (built by `cargo build`; `$BBT_BIN_DIR` overrides `target/debug`)."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("BBT_BIN_DIR", REPO / "target" / "debug"))


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"{path} does not exist: run `cargo build` first (or set BBT_BIN_DIR)")
    return path


class Server:
    """A `bbt-server` child process on a free loopback port."""

    def __init__(self, *flags: str):
        self.process = subprocess.Popen(
            [str(binary("bbt-server")), "--bind", "127.0.0.1:0", *flags],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: List[str] = []
        url: Optional[str] = None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "listening on " in line:
                url = line.split("listening on ", 1)[1].strip()
                break
        if url is None:
            self.process.wait()
            raise RuntimeError("bbt-server exited before listening:\n" + "".join(self.lines))
        self.url = url
        # Keep reading so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def quota_server(tmp_path: Path) -> Iterator[Server]:
    """A server whose one key, `k1`, may make 30 API calls."""
    keys = tmp_path / "keys.txt"
    keys.write_text("k1 30\n")
    s = Server("--api-keys", str(keys))
    yield s
    s.stop()
