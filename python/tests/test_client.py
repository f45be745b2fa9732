"""The Python package against a real bbt-server on the real default model: the same numbers as
the `bbt` command line, Ctrl-C and resume, errors as exceptions, and a session driven by
pycma."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import cma
import numpy as np
import pytest

import bbt

from conftest import binary

# Small runs: one or a few CMA-ES generations of the quick preset on MR, 16 test examples.
SMALL = dict(task="mr", preset="quick", dev_every=20, test_limit=16, progress=False)


def curve_losses(result: bbt.Result) -> list:
    return [p["train_loss"] for p in result.curve]


def test_a_run_from_python_equals_the_command_lines(server, tmp_path: Path):
    client = bbt.Client(server.url)
    ours = client.tune(out=tmp_path / "py", seed=7, budget=20, **SMALL)
    subprocess.run(
        [
            str(binary("bbt")), "tune", "--server", server.url, "--task", "mr",
            "--preset", "quick", "--seed", "7", "--budget", "20", "--dev-every", "20",
            "--test-limit", "16", "--out", str(tmp_path / "cli"), "--quiet",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    cli = json.loads((tmp_path / "cli" / "result.json").read_text())
    for key in ["best_train_loss", "test_accuracy", "best_dev_accuracy",
                "zero_shot_test_accuracy", "api_calls", "train_api_calls", "config"]:
        assert getattr(ours, key) == cli[key], key
    assert curve_losses(ours) == [p["train_loss"] for p in cli["curve"]]
    assert ours.train_api_calls == 20
    # The folder holds the same result, and its prompt scores as the run scored it.
    assert bbt.Result.load(tmp_path / "py") == ours
    score = client.evaluate(ours)
    assert (score.task, score.split, score.examples) == ("mr", "test", 16)
    assert score.accuracy == ours.test_accuracy


def test_ctrl_c_stops_at_a_checkpoint_and_resume_ends_like_an_uninterrupted_run(
    server, tmp_path: Path
):
    client = bbt.Client(server.url)
    settings = dict(SMALL, seed=3, budget=40, popsize=10)
    whole = client.tune(out=tmp_path / "whole", **settings)

    generations = []

    def interrupt_after_the_first_generation(event: dict) -> None:
        if event["event"] == "generation":
            generations.append(event)
            if len(generations) == 1:
                # As a terminal's Ctrl-C: SIGINT to this process, from another thread.
                threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT)).start()

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        client.tune(out=cut, on_event=interrupt_after_the_first_generation, **settings)
    assert (cut / "checkpoint.json").exists()
    assert not (cut / "result.json").exists()
    stopped_at = json.loads((cut / "checkpoint.json").read_text())["train_calls"]
    assert 10 <= stopped_at < 40

    resumed = client.resume(cut, progress=False)
    assert curve_losses(resumed) == curve_losses(whole)
    assert resumed.best_train_loss == whole.best_train_loss
    assert resumed.test_accuracy == whole.test_accuracy
    assert resumed.train_api_calls == 40


def test_errors_are_exceptions_of_their_kind(server, quota_server, tmp_path: Path):
    with pytest.raises(bbt.ConnectionFailed):
        bbt.Client("http://127.0.0.1:9", attempts=1).models()
    client = bbt.Client(server.url)
    with pytest.raises(TypeError, match="unknown setting"):
        client.tune(out=tmp_path / "x", sigmaa=1.0, **SMALL)
    with pytest.raises(ValueError, match="sigma"):
        client.tune(out=tmp_path / "x", sigma=-1.0, **SMALL)
    assert not (tmp_path / "x").exists()

    session = client.session(task="mr", preset="quick", seed=1)
    with pytest.raises(bbt.InvalidRequest) as wrong_length:
        session.evaluate(np.zeros(session.intrinsic_dim + 1))
    assert wrong_length.value.args[1:] == ("invalid", 422)
    session.close()
    with pytest.raises(bbt.NotFound):
        session.evaluate(np.zeros(session.intrinsic_dim))

    with pytest.raises(bbt.Unauthorized):
        bbt.Client(quota_server.url, api_key="not-a-key").session(task="mr", preset="quick")
    limited = bbt.Client(quota_server.url, api_key="k1")
    with pytest.raises(bbt.QuotaExceeded) as spent:
        limited.tune(out=tmp_path / "spent", seed=1, budget=60, **SMALL)
    assert spent.value.args[1:] == ("quota_exceeded", 429)
    # Every exception is a bbt.BbtError.
    assert issubclass(bbt.QuotaExceeded, bbt.ServerError)
    assert issubclass(bbt.ConnectionFailed, bbt.BbtError)


def test_pycma_through_a_session_lowers_the_training_loss(server):
    client = bbt.Client(server.url)
    with client.session(task="mr", preset="quick", seed=5) as session:
        d = session.intrinsic_dim
        start, _ = session.evaluate(np.zeros(d))
        es = cma.CMAEvolutionStrategy(np.zeros(d), 1.0, {"popsize": 8, "seed": 5, "verbose": -9})
        for _ in range(3):
            candidates = es.ask()
            losses, accuracies = session.evaluate(np.array(candidates))
            assert losses.shape == accuracies.shape == (8,)
            es.tell(candidates, losses.tolist())
        assert es.result.fbest < start[0]
        assert session.api_calls == 1 + 3 * 8
