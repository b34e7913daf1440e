"""What the Generate tab shows and sends, without widgets: the newest run's defaults, the
worker requests (load model, embeddings, generate) with their replies as Markdown, gallery
captions, and the token preview with every loaded trigger."""

from __future__ import annotations

import html
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ti_core.config.options import FieldInfo
from ti_core.embeddings.token_preview import TOKEN_BUDGETS
from ti_core.generation.options import OPTIONS
from ti_core.run_folder.reader import read_run_folder
from ti_gui.generation_client import GenerationClient
from ti_gui.supervisor import list_runs
from ti_gui.tabs import token_tab


@dataclass
class RunDefaults:
    """What a run folder trained: the tab starts from the newest run's, a sample grid cell
    from its own run's."""

    folder: str = ""
    model: str = ""
    v2: bool = False
    v_parameterization: bool = False
    vae: str = ""
    clip_skip: int = 1
    max_token_length: int = 75
    embedding: str = ""  # its final embedding file (or latest checkpoint)
    token_string: str = ""  # the word its sample prompts use for the embedding


# ---- what the tab starts with ---------------------------------------------------------------


def run_defaults(runs_root: str | Path, fallback_model: str = "") -> RunDefaults:
    """The newest run folder's model (its config.toml) and final embedding (its events)."""
    runs = list_runs(runs_root)
    if not runs:
        return RunDefaults(model=fallback_model)
    return folder_defaults(runs[0], fallback_model)


def folder_defaults(folder: str | Path, fallback_model: str = "") -> RunDefaults:
    """One run folder's model, token string (its config.toml) and final embedding (events)."""
    folder = Path(folder)
    defaults = RunDefaults(folder=str(folder), model=fallback_model)
    try:
        config = tomllib.loads((folder / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    model = config.get("model", {}) if isinstance(config.get("model"), dict) else {}
    defaults.model = str(model.get("pretrained_model_name_or_path") or fallback_model)
    defaults.v2 = bool(model.get("v2", False))
    defaults.v_parameterization = bool(model.get("v_parameterization", False))
    defaults.vae = str(model.get("vae") or "")
    defaults.clip_skip = _whole(model.get("clip_skip"), 1)
    budget = _whole(model.get("max_token_length"), 75)
    defaults.max_token_length = budget if budget in TOKEN_BUDGETS else 75
    token = config.get("token", {}) if isinstance(config.get("token"), dict) else {}
    defaults.token_string = str(token.get("token_string") or "")
    defaults.embedding = final_embedding(folder)
    return defaults


def _whole(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def final_embedding(folder: str | Path) -> str:
    """The `done` event's file, else the last checkpoint that still exists ("" if none)."""
    history = read_run_folder(folder)
    path = history.final_file() or next(reversed(history.checkpoint_files()), None)
    return str(path or "")


def generated_folder(runs_root: str | Path) -> Path:
    return Path(runs_root or ".").expanduser().resolve() / "generated"


# ---- talking to the worker ------------------------------------------------------------------


def reply_markdown(reply: dict[str, Any]) -> str:
    """A worker reply's error, warnings and notices as plain lines, never a traceback."""
    lines = [f"ℹ️ {notice}" for notice in reply.get("notices", [])]
    if not reply.get("ok"):
        lines.append(f"**Error:** {reply.get('error', 'unknown error')}")
        hint = str(reply.get("hint") or "")
        if "\n" in hint:  # a log tail
            first, _, rest = hint.partition("\n")
            lines.append(f"{first}\n\n```\n{rest}\n```")
        elif hint:
            lines.append(f"*What to do:* {hint}")
    lines += [f"⚠️ {warning}" for warning in reply.get("warnings", [])]
    return "\n\n".join(lines)


def model_markdown(reply: dict[str, Any]) -> str:
    model = reply.get("model")
    if not model:
        return "No model loaded yet: press **Load model** (or **Generate**, which loads it)."
    return f"**Loaded:** {model} · family `{reply.get('family', '?')}`"


def embedding_rows(embeddings: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [e.get("trigger", ""), e.get("num_vectors", 1), e.get("format", ""), e.get("path", "")]
        for e in embeddings
    ]


def load_model(
    client: GenerationClient,
    model: str,
    v2: bool = False,
    v_parameterization: bool = False,
    vae: str = "",
    first_embedding: str = "",
) -> tuple[dict[str, Any], str]:
    """Load the base model; with no embedding loaded yet, also `first_embedding` (the last
    run's file). Returns the worker's state and the messages to show."""
    model = (model or "").strip()
    if not model:
        reply = {"ok": False, "error": "no base model given.", "hint": "e.g. demo:sd1"}
        return {}, reply_markdown(reply)
    reply = client.request(
        "load_model", model=model, v2=bool(v2), v_parameterization=bool(v_parameterization),
        vae=vae or "",
    )  # fmt: skip
    messages = [reply_markdown(reply)]
    if reply.get("ok") and not reply.get("embeddings") and (first_embedding or "").strip():
        state, added = add_embedding(client, first_embedding)
        messages.append(added)
        reply = {**reply, **state} if state else reply
    return (reply if reply.get("ok") else {}), "\n\n".join(m for m in messages if m)


def add_embedding(
    client: GenerationClient, path: str, trigger: str = ""
) -> tuple[dict[str, Any], str]:
    """Load one embedding file (any trainer's format) under its own or the given trigger."""
    path = (path or "").strip()
    if not path:
        return {}, reply_markdown(failure_reply("no embedding file given.", "paste its path"))
    if not Path(path).expanduser().is_file():
        return {}, reply_markdown(
            failure_reply(f"{path}: no such file.", "check the path (a .safetensors/.pt/.bin)")
        )
    path = str(Path(path).expanduser().resolve())
    reply = client.request("load_embeddings", paths=[path], triggers=[(trigger or "").strip()])
    if not reply.get("ok"):
        return {}, reply_markdown(reply)
    note = f"Loaded `{path}` as **{', '.join(reply.get('loaded', []))}**."
    return reply, "\n\n".join(m for m in (reply_markdown(reply), note) if m)


def remove_embedding(client: GenerationClient, trigger: str) -> tuple[dict[str, Any], str]:
    if not trigger:
        return {}, "Pick the embedding to remove."
    reply = client.request("remove_embedding", trigger=trigger)
    if not reply.get("ok"):
        return {}, reply_markdown(reply)
    return reply, f"Removed **{trigger}**."


def failure_reply(error: str, hint: str) -> dict[str, Any]:
    return {"ok": False, "error": error, "hint": hint}


def image_caption(settings: dict[str, Any], path: str) -> str:
    """What made this image, shown under it in the gallery."""
    return (
        f"seed {settings.get('seed')} · {settings.get('steps')} steps · "
        f"CFG {settings.get('scale')} · {settings.get('sampler')} · "
        f"{settings.get('width')}x{settings.get('height')} · {path}"
    )


def generate(
    client: GenerationClient, outdir: str | Path, **options: Any
) -> tuple[list[tuple[str, str]], str]:
    """One Generate click: (path, caption) per image, and the messages to show."""
    if not str(options.get("prompt") or "").strip():
        reply = failure_reply("the prompt is empty.", "describe the image, e.g. 'a photo of NAME'")
        return [], reply_markdown(reply)
    reply = client.request("generate", outdir=str(outdir), **options)
    items = [(image["path"], image_caption(image["settings"], image["path"]))
             for image in reply.get("images", [])]  # fmt: skip
    return items, reply_markdown(reply)


def generate_options(values: dict[str, Any]) -> dict[str, Any]:
    """The widgets' values, by GenerateOptions field name, as the worker's fields: a number box
    gives the field's type, an empty box the field's default (an empty seed: a random one).
    A value that cannot be converted is sent as it is: the worker names it in its reply."""
    return {name: _option_value(OPTIONS[name], value) for name, value in values.items()}


def _option_value(info: FieldInfo, value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip() and info.type is not str):
        return info.default
    if info.type in (int, float) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return value
        return int(number) if info.type is int and number.is_integer() else number
    return value


def gallery_images(shown: list[tuple[str, str]]) -> list[tuple[Image.Image, str]]:
    """Opened here: the output folder may lie outside the folders Gradio serves."""
    images = []
    for path, caption in shown:
        try:
            with Image.open(path) as image:
                images.append((image.copy(), caption))
        except OSError:
            continue
    return images


# ---- token preview --------------------------------------------------------------------------


def render_prompt_preview(prompt: str, embeddings: list[dict[str, Any]], budget: Any) -> str:
    """The Token tab's preview of `prompt`, each loaded trigger counting as its vectors."""
    if not (prompt or "").strip():
        return "<p>Type a prompt to see how it tokenizes.</p>"
    budget = int(budget) if str(budget).isdigit() and int(budget) in TOKEN_BUDGETS else 75
    used = [e for e in embeddings if e.get("trigger") and e["trigger"] in prompt]
    if len(used) <= 1:
        trigger = used[0]["trigger"] if used else ""
        vectors = used[0].get("num_vectors", 1) if used else 1
        return token_tab.render_preview(prompt, trigger, vectors, budget)
    return _many_triggers_preview(prompt, used, budget)


def _many_triggers_preview(prompt: str, used: list[dict[str, Any]], budget: int) -> str:
    # The token_preview tokenizer with every loaded token word added (as the worker's
    # tokenizer has them), and triggers expanded as the worker expands them.
    from ti_core.embeddings.token_preview import _base_vocab, _readable, _tokenizer

    words = {e["trigger"]: e.get("tokens") or [e["trigger"]] for e in used}
    multi = sorted((t for t, w in words.items() if len(w) > 1), key=len, reverse=True)
    if multi:
        pattern = re.compile("|".join(re.escape(t) for t in multi))
        prompt = pattern.sub(lambda m: " ".join(words[m.group(0)]), prompt)
    tokenizer = _tokenizer(tuple(word for w in words.values() for word in w))
    encoding = tokenizer.encode(prompt)
    first_new = len(_base_vocab())
    chips = []
    for token_id, piece in zip(encoding.ids, encoding.tokens, strict=True):
        new = token_id >= first_new
        text = piece if new else _readable(piece)
        chips.append(
            f'<span class="{"ti-new" if new else "ti-piece"}" title="id {token_id}">'
            f"{html.escape(text)} <sub>{token_id}</sub></span>"
        )
    count = len(encoding.ids) - 2
    over = " — <b>too long: the rest is cut off</b>" if count > budget else ""
    new_count = sum(token_id >= first_new for token_id in encoding.ids)
    return (
        f'<div class="ti-tokens">{"".join(chips)}</div>\n<p id="token-budget">{count} / {budget}'
        f" tokens used; {new_count} embedding token(s){over}</p>"
    )
