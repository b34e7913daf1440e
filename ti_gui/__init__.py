"""The Gradio app. Never imports torch/diffusers/transformers (see tests/unit/test_borders.py)."""
