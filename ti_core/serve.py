"""The generation worker: JSON requests on stdin, one JSON reply per line on stdout.

The model and embeddings stay loaded between requests. Every failure, a malformed line
included, is a reply {"id", "ok": false, "error", "hint"}; the worker keeps running until
"quit" or the end of its input. Logs and library output go to stderr, never stdout.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from ti_core.errors import TiError

log = logging.getLogger(__name__)

OPS = ("ping", "load_model", "load_embeddings", "remove_embedding", "generate", "inspect", "quit")
GENERATE_FIELDS: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "negative_prompt": (str,),
    "width": (int,),
    "height": (int,),
    "steps": (int,),
    "scale": (int, float),
    "seed": (int, type(None)),
    "batch_count": (int,),
    "batch_size": (int,),
    "sampler": (str,),
    "clip_skip": (int,),
    "max_token_length": (int,),
}


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
        from ti_core.generate import Generator

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
        from ti_core.generate import save_images

        generator = self._generator()
        outdir = _field(request, "outdir", str)
        options = {key: request[key] for key in GENERATE_FIELDS if key in request}
        for key, value in options.items():
            if not isinstance(value, GENERATE_FIELDS[key]) or isinstance(value, bool):
                raise RequestError(f"{key} = {value!r} has the wrong type", _generate_hint())
        unknown = set(request) - set(GENERATE_FIELDS) - {"id", "op", "outdir"}
        if unknown:
            raise RequestError(f"unknown field(s) {', '.join(sorted(unknown))}", _generate_hint())
        if "prompt" not in options:
            raise RequestError("generate needs a prompt", _generate_hint())
        results = generator.generate(**options)
        paths = save_images(results, outdir)
        images = [
            {"path": str(path), "settings": {k: v for k, v in s.items() if k != "warnings"}}
            for path, (_, s) in zip(paths, results, strict=True)
        ]
        return {"images": images, "warnings": results[0][1]["warnings"] if results else []}

    def op_inspect(self, request: dict[str, Any]) -> dict[str, Any]:
        from ti_core.inspect_embedding import inspect_embedding, inspect_file

        path = _field(request, "path", str)
        model = _field(request, "model", str, "")
        if model or self.generator is None:
            return {"report": inspect_file(path, model)}
        generator = self.generator
        report = inspect_embedding(path, generator.vocabularies(), generator.loaded.describe())
        return {"report": report}

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
            raise RequestError(f"{request.get('op')} needs the field {key!r}", _hint(key))
        return default
    value = request[key]
    if not isinstance(value, kind):
        raise RequestError(f"{key} must be a {kind.__name__}, got {value!r}", _hint(key))
    return value


def _hint(key: str) -> str:
    examples = {
        "model": '{"op": "load_model", "model": "demo:sd1"}',
        "paths": '{"op": "load_embeddings", "paths": ["a.safetensors"]}',
        "trigger": '{"op": "remove_embedding", "trigger": "mychar"}',
        "outdir": '{"op": "generate", "prompt": "...", "outdir": "out"}',
        "path": '{"op": "inspect", "path": "a.safetensors"}',
    }
    return f"e.g. {examples[key]}" if key in examples else f"check the field {key!r}"


def _generate_hint() -> str:
    return f"generate takes outdir and {', '.join(GENERATE_FIELDS)}"


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
