"""A bbt-server on the real default model for the whole test session, and the paths of bbt's
binaries (built by `cargo build`; `$BBT_BIN_DIR` overrides `target/debug`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

import bbt

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("BBT_BIN_DIR", REPO / "target" / "debug"))
# The paper's datasets beside the clone, as the Rust tests read them.
DATA_FLAGS = (
    ["--data-dir", str(REPO.parent / "shared" / "datasets")]
    if (REPO.parent / "shared" / "datasets").is_dir()
    else []
)


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"{path} does not exist: run `cargo build` first (or set BBT_BIN_DIR)")
    return path


@pytest.fixture(scope="session")
def server() -> Iterator[bbt.LocalServer]:
    with bbt.LocalServer(*DATA_FLAGS, binary=binary("bbt-server")) as s:
        yield s


@pytest.fixture
def quota_server(tmp_path: Path) -> Iterator[bbt.LocalServer]:
    """A server whose one key, `k1`, may make 30 API calls."""
    keys = tmp_path / "keys.txt"
    keys.write_text("k1 30\n")
    with bbt.LocalServer("--api-keys", str(keys), *DATA_FLAGS, binary=binary("bbt-server")) as s:
        yield s
