"""Every name in a run folder (ARCHITECTURE.md, "The run folder", "Events", "Control flags"):
its files and folders, the control flags, the event types and the done reasons. The writer,
the reader, the engine and the GUI all spell them from here. No imports, so the GUI can use it.
"""

from __future__ import annotations

# ---- files and folders ------------------------------------------------------------------------

CONFIG_FILE = "config.toml"  # the resolved config the run used
EVENTS_FILE = "events.jsonl"  # one JSON event per line, append-only
LOG_FILE = "train.log"  # the human log
CONSOLE_LOG = "console.log"  # a GUI-started run's stdout/stderr: errors before train.log exists
PID_FILE = "train.pid"  # {"pid": ..., "config": ...} of the training child a GUI started
PROMPTS_FILE = "sample_prompts.txt"  # the sample prompts typed in the GUI
SAMPLES_DIR = "samples"  # <step>-<prompt index>-<seed>.png
STATE_DIR, STATE_FILE = "state", "state.pt"  # resumable training state: state/state.pt

# ---- control flags: empty files the GUI creates and the run takes once per step ---------------

STOP, SAVE_NOW, SAMPLE_NOW = "STOP", "SAVE_NOW", "SAMPLE_NOW"
FLAGS = (STOP, SAVE_NOW, SAMPLE_NOW)

# ---- events -----------------------------------------------------------------------------------

STATUS, STEP, SAMPLE, CHECKPOINT = "status", "step", "sample", "checkpoint"
WARNING, ERROR, DONE = "warning", "error", "done"
# Whether the embedding is good: training/insight.py writes these at each measurement.
VALIDATION, VECTORS, HINT, SUGGESTION = "validation", "vectors", "hint", "suggestion"
SCORE = "score"  # CLIP-I and CLIP-T of a saved step (training/scores.py), when clip_model is set
EVENT_TYPES = (STATUS, STEP, SAMPLE, CHECKPOINT, WARNING, ERROR, DONE,
               VALIDATION, VECTORS, HINT, SUGGESTION, SCORE)  # fmt: skip

LOADING = "loading"  # the first phase of a run: in a folder trained again, a new run begins
PHASES = (LOADING, "caching", "preparing data", "training", "sampling", "validating", "saving")

FINISHED, STOPPED, FAILED = "finished", "stopped", "failed"
DONE_REASONS = (FINISHED, STOPPED, FAILED)
