"""ARCHITECTURE.md borders: the GUI never loads the heavy stack, the engine never loads gradio."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

HEAVY = ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes")


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_gui_process_does_not_import_torch_or_diffusers():
    loaded = _modules_after("import gui; from ti_gui.app import build_app; build_app()")
    assert "gradio" in loaded  # the check would be empty otherwise
    assert not [name for name in HEAVY if name in loaded]


def test_engine_does_not_import_gradio():
    loaded = _modules_after(
        "import ti_core.__main__, ti_core.models, ti_core.config_io, ti_core.demo"
    )
    assert "ti_core.models" in loaded
    assert "gradio" not in loaded
