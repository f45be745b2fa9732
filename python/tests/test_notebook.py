"""examples/quickstart.ipynb runs from top to bottom against a local server (with a small
budget), so it cannot rot."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from conftest import REPO


def test_the_quickstart_notebook_runs_end_to_end(server, tmp_path: Path, monkeypatch):
    notebook = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    out = tmp_path / "run"
    monkeypatch.setenv("BBT_SERVER", server.url)
    monkeypatch.setenv("BBT_NOTEBOOK_BUDGET", "20")
    monkeypatch.setenv("BBT_NOTEBOOK_OUT", str(out))
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(
        o.get("text", "")
        for cell in notebook.cells if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )
    assert "tuned: " in printed and "zero-shot manual prompt: " in printed, printed
    assert "sst2 dev: " in printed, printed
    assert "PROMPT_TUNING: 5 virtual tokens" in printed, printed
    assert (out / "peft" / "adapter_model.safetensors").exists()
    figures = [o for cell in notebook.cells for o in cell.get("outputs", [])
               if "image/png" in o.get("data", {})]
    assert len(figures) == 1
    assert (out / "result.json").exists()
    # Run again: the finished run is loaded, not tuned anew.
    again = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    NotebookClient(again, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (out / "log.jsonl").read_text().count('"event":"start"') == 1
