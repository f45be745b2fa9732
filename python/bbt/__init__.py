"""bbt from Python: black-box tuning of continuous prompts against a bbt-server.

The tuner, CMA-ES, retries, checkpoints and resume are bbt's Rust client, the same code as the
``bbt`` command line; this package gives it Python's idiom::

    import bbt

    client = bbt.Client("http://127.0.0.1:8080")
    result = client.tune(task="mr", preset="quick", out="runs/mr", seed=42)
    print(result.test_accuracy)

A run interrupted (Ctrl-C, a dead kernel) continues with ``client.resume("runs/mr")``. Bring
your own optimizer through a :class:`Session`::

    with client.session(task="mr", preset="quick", seed=42) as s:
        losses, accuracies = s.evaluate(np.zeros((4, s.intrinsic_dim)))
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from . import _native
from ._native import (
    BbtError,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    ServerError,
    ServerUnavailable,
    Unauthorized,
)

__all__ = [
    "Client",
    "LocalServer",
    "Session",
    "Result",
    "Score",
    "preset",
    "BbtError",
    "ServerError",
    "QuotaExceeded",
    "NotFound",
    "Unauthorized",
    "InvalidRequest",
    "ServerUnavailable",
    "ConnectionFailed",
]

PathLike = Union[str, "os.PathLike[str]"]


def preset(name: str, task: str) -> Dict[str, Any]:
    """The settings of preset ``name`` (``paper``, ``bbtv2``, ``quick`` or ``rgb``) for
    ``task``, as a dict with the keys ``Client.tune`` accepts."""
    return json.loads(_native.preset(name, task))


def _settings(task: str, preset_name: str, overrides: Dict[str, Any]) -> str:
    """The preset with ``overrides``, checked as ``bbt tune`` checks its flags."""
    config = preset(preset_name, task)
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise TypeError(
            f"unknown setting(s) {', '.join(unknown)}; the settings are: {', '.join(sorted(config))}"
        )
    config.update(overrides)
    text = json.dumps(config)
    _native.validate(text)
    return text


@dataclass
class Result:
    """``result.json`` of a finished run: the fields of every bbt run, the learning curve and
    the run's settings."""

    method: str
    task: str
    seed: int
    budget: int
    api_calls: int
    train_api_calls: int
    best_dev_accuracy: Optional[float]
    test_accuracy: Optional[float]
    test_f1: Optional[float]
    test_examples: Optional[int]
    wall_seconds: float
    bytes_up: int
    bytes_down: int
    best_train_loss: float
    zero_shot_test_accuracy: Optional[float]
    #: One point per generation: ``api_calls`` (training calls so far), ``train_loss`` (the
    #: generation's best) and ``dev_accuracy`` (where dev was checked, else ``None``).
    curve: List[Dict[str, Any]]
    #: The run's settings (the keys ``Client.tune`` accepts).
    config: Dict[str, Any]
    test_curve: List[Dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: Optional[float] = None
    trainable_params: Optional[int] = None
    notes: List[str] = field(default_factory=list)
    #: The run's folder, when read from one.
    out: Optional[Path] = None

    @classmethod
    def from_dict(cls, data: Dict[str, Any], out: Optional[PathLike] = None) -> "Result":
        """A result from ``result.json``'s fields (unknown ones are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["out"] = Path(out) if out is not None else None
        return cls(**values)

    @classmethod
    def load(cls, out: PathLike) -> "Result":
        """The result of the finished run in folder ``out``."""
        path = Path(out) / "result.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path} does not exist: {out} holds no finished run (resume it with Client.resume)"
            ) from None
        return cls.from_dict(data, out)

    @property
    def best_prompt(self) -> Path:
        """``best_prompt.json`` of the run (``z`` and the session settings), for
        :meth:`Client.evaluate`."""
        if self.out is None:
            raise ValueError("this result was not read from a run folder")
        return self.out / "best_prompt.json"


@dataclass
class Score:
    """A prompt scored on one split."""

    task: str
    split: str
    examples: int
    accuracy: float
    f1: Optional[float]
    loss: float


class _Progress:
    """Draws a run's events: a tqdm bar where tqdm is installed (notebooks and terminals)."""

    def __init__(self, budget: int, done: int = 0):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=budget, initial=done, unit="call", desc="tuning")

    def __call__(self, line: str) -> None:
        event = json.loads(line)
        kind = event.get("event")
        if kind == "generation":
            self.bar.n = event["api_calls"]
            dev = event.get("best_dev_accuracy")
            dev = "-" if dev is None else f"{100 * dev:.1f}%"
            self.bar.set_postfix_str(f"loss {event['best_train_loss']:.4f}  dev {dev}")
        elif kind == "test":
            self.bar.set_postfix_str(f"test {100 * event['test_accuracy']:.1f}%")

    def close(self) -> None:
        self.bar.close()


def _has_tqdm() -> bool:
    try:
        import tqdm.auto  # noqa: F401
    except ImportError:
        return False
    return True


class Client:
    """A connection to one bbt-server.

    ``api_key`` defaults to ``$BBT_API_KEY``; ``attempts`` is the number of tries per request
    on 5xx answers and on connection errors once the server has answered.
    """

    def __init__(self, url: str, api_key: Optional[str] = None, attempts: int = 8):
        self.url = url
        key = api_key if api_key is not None else os.environ.get("BBT_API_KEY")
        self._native = _native.NativeClient(url, key, attempts)

    def models(self) -> List[Dict[str, Any]]:
        """The server's model cards (name, hidden size, layers, ...)."""
        return json.loads(self._native.models())["data"]

    def tune(
        self,
        task: str,
        out: PathLike,
        preset: str = "paper",
        progress: bool = True,
        on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
        **settings: Any,
    ) -> Result:
        """Tunes a prompt for ``task`` (a task the server knows, or a local ``.toml``/``.json``
        spec) and returns the result; everything is written to folder ``out`` as by
        ``bbt tune``. ``preset`` gives the starting settings and ``settings`` override single
        ones (``seed``, ``budget``, ``prompt_length``, ``intrinsic_dim``, ``popsize``,
        ``sigma``, ...; see :func:`preset`). ``on_event`` gets each logged event as a dict.

        Ctrl-C stops the run after its next checkpoint and raises ``KeyboardInterrupt``;
        :meth:`resume` continues it exactly.
        """
        config = _settings(task, preset, settings)
        return self._run(config, out, progress, on_event, budget=json.loads(config)["budget"])

    def resume(
        self,
        out: PathLike,
        progress: bool = True,
        on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
    ) -> Result:
        """Continues the run checkpointed in ``out`` (stopped or killed) to its end."""
        checkpoint = Path(out) / "checkpoint.json"
        try:
            state = json.loads(checkpoint.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{checkpoint} does not exist: {out} holds no run to resume") from None
        budget = state["config"]["budget"]
        return self._run(None, out, progress, on_event, budget, done=state.get("train_calls", 0))

    def _run(
        self,
        config: Optional[str],
        out: PathLike,
        progress: bool,
        on_event: Optional[Callable[[Dict[str, Any]], None]],
        budget: int,
        done: int = 0,
    ) -> Result:
        bar = _Progress(budget, done) if progress and _has_tqdm() else None

        def deliver(line: str) -> None:
            if bar is not None:
                bar(line)
            if on_event is not None:
                on_event(json.loads(line))

        try:
            text = self._native.tune(
                config,
                os.fspath(out),
                on_event=deliver,
                progress_bar=progress and bar is None,
            )
        finally:
            if bar is not None:
                bar.close()
        return Result.from_dict(json.loads(text), out)

    def evaluate(
        self,
        prompt: Union[Result, PathLike],
        task: Optional[str] = None,
        split: str = "test",
        k: int = 16,
        seed: int = 42,
    ) -> Score:
        """Scores a tuned prompt (a :class:`Result`, a run folder or its ``best_prompt.json``)
        on ``split`` of its own task, or of ``task`` (few-shot sample of ``k`` per class drawn
        with ``seed``), as ``bbt eval`` does."""
        if isinstance(prompt, Result):
            path = prompt.best_prompt
        else:
            path = Path(prompt)
            if path.is_dir():
                path = path / "best_prompt.json"
        text = self._native.score_prompt(os.fspath(path), split, task, k, seed)
        return Score(**json.loads(text))

    def session(self, task: str, preset: str = "paper", **settings: Any) -> "Session":
        """A session for your own optimizer: the task, projection and prompt a run with these
        settings would tune, scored through :meth:`Session.evaluate`."""
        config = _settings(task, preset, settings)
        info = json.loads(self._native.create_session(config))
        return Session(self._native, info)


class Session:
    """A server session: candidates ``z`` (rows of ``intrinsic_dim`` numbers) in, losses and
    accuracies out. Each candidate scored is one API call. Close it (or use ``with``) to free
    it on the server."""

    def __init__(self, native: "_native.NativeClient", info: Dict[str, Any]):
        self._native = native
        #: The server's description: ``id``, ``task``, ``classes``, split sizes, ``api_calls``.
        self.info = info
        self.id: str = info["id"]
        self.intrinsic_dim: int = info["intrinsic_dim"]

    def evaluate(
        self, zs: "np.typing.ArrayLike", split: str = "train", layer: Optional[int] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Scores each row of ``zs`` (one candidate, or an ``[n, intrinsic_dim]`` array) on
        ``split`` (``train``, ``dev`` or ``test``); returns ``(losses, accuracies)``, one entry
        per candidate. ``layer`` names a deep session's layer the candidates are for."""
        z = np.ascontiguousarray(np.atleast_2d(np.asarray(zs, dtype="<f4")))
        if z.ndim != 2:
            raise ValueError(f"zs must be one candidate or a 2-D array of them, not {z.ndim}-D")
        answer = json.loads(
            self._native.evaluate(self.id, z.tobytes(), z.shape[0], split, layer)
        )
        self.info["api_calls"] = answer["api_calls"]
        results = answer["results"]
        losses = np.array([r["loss"] for r in results], dtype=np.float64)
        accuracies = np.array([r["accuracy"] for r in results], dtype=np.float64)
        return losses, accuracies

    @property
    def api_calls(self) -> int:
        """API calls the session has been charged so far."""
        return int(self.info["api_calls"])

    def close(self) -> None:
        """Deletes the session on the server."""
        self._native.delete_session(self.id)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        except BbtError:
            if exc[0] is None:
                raise


class LocalServer:
    """A ``bbt-server`` started on this machine as a child process, on a free loopback port;
    stopped by :meth:`stop`, at the end of a ``with`` block, or when Python exits.

    ``binary`` defaults to ``$BBT_SERVER_BIN``, else ``bbt-server`` on ``PATH``; ``flags`` are
    its command-line flags (``"--model", "gemma3-1b"``, ``"--api-keys", "keys.txt"``, ...).
    The default model is fetched on first use, which can take a minute.
    """

    def __init__(self, *flags: str, binary: Optional[PathLike] = None):
        program = binary or os.environ.get("BBT_SERVER_BIN") or shutil.which("bbt-server")
        if program is None:
            raise FileNotFoundError(
                "no bbt-server: install it (cargo install --path server) or give binary=..."
            )
        self.process = subprocess.Popen(
            [os.fspath(program), "--bind", "127.0.0.1:0", *flags],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        #: The server's log lines so far.
        self.log: List[str] = []
        assert self.process.stderr is not None
        url = None
        for line in self.process.stderr:
            self.log.append(line)
            if "listening on " in line:
                url = line.split("listening on ", 1)[1].strip()
                break
        if url is None:
            self.process.wait()
            raise BbtError("bbt-server exited before listening:\n" + "".join(self.log))
        #: The server's base URL, for :class:`Client`.
        self.url: str = url
        # Read on, so the server never blocks on a full pipe.
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def stop(self) -> None:
        """Stops the server."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        self.stop()
