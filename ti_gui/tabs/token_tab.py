"""Token tab: the placeholder token and where its vectors start, with a live preview of how a
caption tokenizes (new ids highlighted, token budget used) as you type."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from ti_core.embeddings.token_preview import TOKEN_BUDGETS, preview
from ti_gui.fields import Form
from ti_gui.path_picker import add_path_field, add_rest

DEFAULT_CAPTION = "a photo of {token}, close-up"


@dataclass
class TokenTab:
    caption: gr.Textbox
    preview: gr.HTML


def render_preview(caption: str, token_string: str, num_vectors, max_token_length) -> str:
    """HTML: each token as a chip, the new placeholder ids highlighted, and the budget used."""
    token_string = (token_string or "").strip()
    caption = (caption or DEFAULT_CAPTION).replace("{token}", token_string or "mychar4")
    try:
        vectors = max(1, int(num_vectors or 1))
        budget = int(max_token_length or 75)
        if budget not in TOKEN_BUDGETS:
            budget = 75
        result = preview(caption, token_string, vectors, budget)
    except (ValueError, TypeError) as error:
        return f"<p>Cannot preview: {html.escape(str(error))}</p>"
    chips = []
    new = set(result.placeholder_positions)
    for index, (token_id, text) in enumerate(zip(result.ids, result.texts, strict=True)):
        kind = "ti-new" if index in new else "ti-piece"
        title = html.escape(f"id {token_id}: {result.pieces[index]}")
        chips.append(
            f'<span class="{kind}" title="{title}">{html.escape(text)} <sub>{token_id}</sub></span>'
        )
    over = " — <b>too long: the rest is cut off in training</b>" if result.overflows else ""
    parts = [
        f'<div class="ti-tokens">{"".join(chips)}</div>',
        f'<p id="token-budget">{result.tokens_used} / {result.budget} tokens used; '
        f"{len(new)} new placeholder token(s){over}</p>",
    ]
    if result.problem:
        parts.insert(0, f'<p class="ti-problem">{html.escape(result.problem)}</p>')
    return "\n".join(parts)


def build(form: Form) -> TokenTab:
    with gr.Row():
        form.add("token_string")
        form.add("init_word")
        form.add("num_vectors_per_token")
    add_path_field(form, "weights")
    add_rest(form, "token")
    caption = gr.Textbox(
        DEFAULT_CAPTION,
        label="Sample caption",
        info="A caption to preview; {token} stands for the token string.",
    )
    token = form.initial.token
    start = render_preview(
        DEFAULT_CAPTION,
        token.token_string,
        token.num_vectors_per_token,
        form.initial.model.max_token_length,
    )
    return TokenTab(caption, gr.HTML(start, label="Token preview", elem_id="token-preview"))


def wire(tab: TokenTab, form: Form) -> None:
    sources = [
        tab.caption,
        form["token_string"],
        form["num_vectors_per_token"],
        form["max_token_length"],
    ]
    gr.on(
        [source.change for source in sources],
        render_preview,
        inputs=sources,
        outputs=tab.preview,
        api_name="token_preview",
        show_progress="hidden",
        trigger_mode="always_last",
    )
