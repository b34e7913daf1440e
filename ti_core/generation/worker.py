"""The generation worker: JSON requests on stdin, one JSON reply per line on stdout.

The model and embeddings stay loaded between requests. Every failure, a malformed line
included, is a reply {"id", "ok": false, "error", "hint"}; the worker keeps running until
"quit" or the end of its input. Logs and library output go to stderr, never stdout.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from ti_core.errors import ConfigError, TiError, closest
from ti_core.generation.options import (
    GRID_OPTIONS,
    OPTIONS,
    RANDOM_SEED,
    GenerateOptions,
    options_from,
)

log = logging.getLogger(__name__)

OPS = ("ping", "load_model", "load_embeddings", "remove_embedding", "generate", "inspect")
OPS += ("list_checkpoints", "compare_grid", "convert", "quit")


class RequestError(TiError):
    """A request the worker cannot act on; `hint` says what to send instead."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class Worker:
    """Holds the Generator across requests and answers one request at a time."""

    def __init__(self) -> None:
        self.generator: Any = None

    def handle_line(self, line: str) -> dict[str, Any]:
        """The reply to one input line; never raises (except KeyboardInterrupt)."""
        request_id = None
        try:
            try:
                request = json.loads(line)
            except ValueError as error:
                raise RequestError(
                    f"not a JSON object: {error}",
                    'send one JSON object per line, e.g. {"id": 1, "op": "ping"}',
                ) from None
            if not isinstance(request, dict):
                raise RequestError("not a JSON object", 'e.g. {"id": 1, "op": "ping"}')
            request_id = request.get("id")
            op = request.get("op")
            if op not in OPS:
                raise RequestError(f"unknown op {op!r}", f"op is one of {', '.join(OPS)}")
            reply = getattr(self, "op_" + op)(request)
            return {"id": request_id, "ok": True, **reply}
        except RequestError as error:
            return _failure(request_id, str(error), error.hint)
        except TiError as error:
            return _failure(request_id, str(error), "fix the request and send it again")
        except Exception as error:  # noqa: BLE001 - the worker must outlive any one request
            log.exception("request failed")
            return _failure(request_id, f"{type(error).__name__}: {error}", "see the worker log")

    # -- operations -------------------------------------------------------------------------

    def op_ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True, **self._state()}

    def op_quit(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"bye": True}

    def op_load_model(self, request: dict[str, Any]) -> dict[str, Any]:
        """Load a base model; embeddings loaded before are loaded again where they fit."""
        from ti_core.generation.generator import Generator

        model = _field(request, "model", str)
        old = self.generator
        self.generator = None  # free the old model before loading the new one
        try:
            self.generator = Generator(
                model,
                v2=bool(request.get("v2", False)),
                v_parameterization=bool(request.get("v_parameterization", False)),
                vae=_field(request, "vae", str, ""),
                device=_field(request, "device", str, "") or None,
            )
        except Exception:
            self.generator = old
            raise
        warnings = []
        for loaded in old.embeddings.values() if old is not None else []:
            try:
                if loaded.path:
                    self.generator.add_embedding(loaded.path, loaded.trigger)
            except TiError as error:
                warnings.append(f"embedding {loaded.trigger!r} was dropped: {error}")
        return {**self._state(), "warnings": warnings}

    def op_load_embeddings(self, request: dict[str, Any]) -> dict[str, Any]:
        """All or nothing: a file that fails unloads the ones this request added."""
        generator = self._generator()
        paths = _field(request, "paths", list)
        triggers = _field(request, "triggers", list, [None] * len(paths))
        if len(triggers) != len(paths):
            raise RequestError("triggers must have one entry per path", "or leave triggers out")
        added = []
        try:
            for path, trigger in zip(paths, triggers, strict=True):
                added.append(generator.add_embedding(str(path), trigger or None).trigger)
        except Exception:
            for trigger in added:
                generator.remove_embedding(trigger)
            raise
        return {"loaded": added, **self._state()}

    def op_remove_embedding(self, request: dict[str, Any]) -> dict[str, Any]:
        self._generator().remove_embedding(_field(request, "trigger", str))
        return self._state()

    def op_generate(self, request: dict[str, Any]) -> dict[str, Any]:
        from ti_core.generation.generator import save_images

        generator = self._generator()
        outdir = _field(request, "outdir", str)
        if "prompt" not in request:
            raise RequestError("generate needs a prompt", _generate_hint())
        results = generator.generate(_options(request, OPTIONS, {"outdir"}, _generate_hint()))
        paths = save_images(results, outdir)
        images = [
            {"path": str(path), "settings": {k: v for k, v in s.items() if k != "warnings"}}
            for path, (_, s) in zip(paths, results, strict=True)
        ]
        return {"images": images, "warnings": results[0][1]["warnings"] if results else []}

    def op_inspect(self, request: dict[str, Any]) -> dict[str, Any]:
        from ti_core.embeddings.inspect import inspect_embedding, inspect_file

        path = _field(request, "path", str)
        model = _field(request, "model", str, "")
        if model or self.generator is None:
            return {"report": inspect_file(path, model)}
        generator = self.generator
        report = inspect_embedding(path, generator.vocabularies(), generator.loaded.describe())
        return {"report": report}

    def op_list_checkpoints(self, request: dict[str, Any]) -> dict[str, Any]:
        """A run's embedding files, its base model (load_model's fields) and trigger word;
        needs no model loaded. model is null when the run folder has no config.toml."""
        from ti_core.generation.grid import run_checkpoints, run_model, run_trigger

        run = _field(request, "run", str)
        checkpoints = [checkpoint.to_dict() for checkpoint in run_checkpoints(run)]
        try:
            model = run_model(run)
        except TiError:
            model = None
        return {"checkpoints": checkpoints, "model": model, "trigger": run_trigger(run)}

    def op_compare_grid(self, request: dict[str, Any]) -> dict[str, Any]:
        """One PNG grid: a row per checkpoint, a column per seed. width/height are the grid's
        pixel size; cell_width/cell_height one image's. Loaded embeddings stay loaded."""
        from ti_core.generation.grid import compare_grid, save_grid

        generator = self._generator()
        required = {"checkpoints": list, "seeds": list, "prompt": str, "trigger": str}
        values = {
            key: _field(request, key, kind) for key, kind in {**required, "outdir": str}.items()
        }
        options = _options(request, GRID_OPTIONS, set(values), _grid_hint())
        if not all(isinstance(path, str) for path in values["checkpoints"]):
            raise RequestError("checkpoints must be a list of file paths", _grid_hint())
        result = compare_grid(
            generator,
            values["checkpoints"],
            values["seeds"],
            options,
            prompt=values["prompt"],
            trigger=values["trigger"],
        )
        path = save_grid(result, values["outdir"])
        return {
            "grid": str(path),
            "rows": result.rows,
            "columns": result.columns,
            "width": result.image.width,
            "height": result.image.height,
            "cell_width": result.cell_width,
            "cell_height": result.cell_height,
            "warnings": result.warnings,
        }

    def op_convert(self, request: dict[str, Any]) -> dict[str, Any]:
        """Rewrite an embedding file as kohya, a1111 or diffusers (an SDXL diffusers pair is
        two files: path is the first, paths both)."""
        from ti_core.embeddings.writers import WRITE_FORMATS, convert_embedding

        path, to = _field(request, "path", str), _field(request, "to", str)
        if to not in WRITE_FORMATS:
            raise RequestError(f"to = {to!r}", f"to is one of {', '.join(WRITE_FORMATS)}")
        written = convert_embedding(path, to, _field(request, "out", str, "") or None)
        return {"path": str(written[0]), "paths": [str(p) for p in written]}

    # -- helpers ----------------------------------------------------------------------------

    def _generator(self) -> Any:
        if self.generator is None:
            raise RequestError(
                "no model is loaded", 'send {"op": "load_model", "model": ...} first'
            )
        return self.generator

    def _state(self) -> dict[str, Any]:
        if self.generator is None:
            return {"model": None, "embeddings": []}
        return {
            "model": self.generator.loaded.describe(),
            "family": self.generator.family,
            "embeddings": [e.describe() for e in self.generator.embeddings.values()],
        }


def _field(request: dict[str, Any], key: str, kind: type, default: Any = ...) -> Any:
    if key not in request:
        if default is ...:
            raise RequestError(
                f"{request.get('op')} needs the field {key!r}", _hint(key, request.get("op"))
            )
        return default
    value = request[key]
    if not isinstance(value, kind):
        raise RequestError(
            f"{key} must be a {kind.__name__}, got {value!r}", _hint(key, request.get("op"))
        )
    return value


def _options(
    request: dict[str, Any], names: Iterable[str], other: set[str], hint: str
) -> GenerateOptions:
    """The request's generation options (GenerateOptions' fields among `names`), checked as
    declared; a field the op does not know is refused, naming it."""
    names = set(names)
    unknown = set(request) - names - other - {"id", "op"}
    if unknown:
        near = closest(sorted(unknown)[0], names | other)
        also = f" (did you mean {near!r}?)" if near else ""
        raise RequestError(f"unknown field(s) {', '.join(sorted(unknown))}{also}", hint)
    values = {key: request[key] for key in names if key in request}
    if "seed" in values and values["seed"] is None:  # the GUI's "random", as sent so far
        values["seed"] = RANDOM_SEED
    try:
        return options_from(values)
    except ConfigError as error:
        raise RequestError(str(error), hint) from None


def _hint(key: str, op: Any = None) -> str:
    examples = {
        "model": '{"op": "load_model", "model": "demo:sd1"}',
        "paths": '{"op": "load_embeddings", "paths": ["a.safetensors"]}',
        "trigger": '{"op": "remove_embedding", "trigger": "mychar"}',
        "outdir": '{"op": "generate", "prompt": "...", "outdir": "out"}',
        "path": '{"op": "inspect", "path": "a.safetensors"}',
        "run": '{"op": "list_checkpoints", "run": "runs/demo"}',
        "to": '{"op": "convert", "path": "a.safetensors", "to": "a1111"}',
    }
    if op == "compare_grid":
        return _grid_hint()
    return f"e.g. {examples[key]}" if key in examples else f"check the field {key!r}"


def _generate_hint() -> str:
    return f"generate takes outdir and {', '.join(OPTIONS)}"


def _grid_hint() -> str:
    return (
        'e.g. {"op": "compare_grid", "checkpoints": ["a.safetensors"], "seeds": [1, 2], '
        '"prompt": "a photo of NAME", "trigger": "NAME", "outdir": "out"}; optional: '
        + ", ".join(GRID_OPTIONS)
    )


def _failure(request_id: Any, error: str, hint: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": error, "hint": hint}


def serve(stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Answer requests until "quit" or end of input. Anything that would print to stdout
    (libraries, progress bars) is sent to stderr, so stdout holds replies only."""
    stdin = stdin or sys.stdin
    original = sys.stdout
    replies = stdout or original
    sys.stdout = sys.stderr
    worker = Worker()
    try:
        for line in stdin:
            if not line.strip():
                continue
            reply = worker.handle_line(line)
            replies.write(json.dumps(reply, default=str) + "\n")
            replies.flush()
            if reply.get("ok") and reply.get("bye"):
                break
    finally:
        sys.stdout = original
    return 0
