"""Where the vendored data lives (ti_core/assets/): the CLIP tokenizer and the model configs
that let a single checkpoint file load offline. Plain paths: the GUI reads them too."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TOKENIZER_DIR = ASSETS / "tokenizer"
MODEL_CONFIGS_DIR = ASSETS / "models"
