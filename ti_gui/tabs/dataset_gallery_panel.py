"""The Dataset tab's gallery: Show the images, page through them, click one to see it and edit
its caption, Save or Undo. What a page shows and how a caption is saved: dataset_gallery.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ti_core.config.run_config import FIELDS
from ti_core.errors import TiError
from ti_gui import dataset_gallery as gallery
from ti_gui.fields import Form, collect_values

# A click on a card tells the server which image (its index in the whole listing).
CLICK_JS = """element.addEventListener('click', (event) => {
    const card = event.target.closest('[data-index]');
    if (card) trigger('click', {index: Number(card.dataset.index)});
});"""


@dataclass
class GalleryPanel:
    show: gr.Button
    previous: gr.Button
    page_label: gr.Markdown  # "images 1-48 of 5000"
    next: gr.Button
    summary: gr.Markdown  # each folder's images and repeats, reading problems
    cards: gr.HTML
    image: gr.Image  # the clicked image, in the editor
    details: gr.Markdown
    caption: gr.Textbox
    save: gr.Button
    undo: gr.Button
    status: gr.Markdown
    listing: gr.State  # dataset_gallery.Listing of the form's datasets, or None
    page: gr.State  # the page shown, from 0
    opened: gr.State  # {"index": in the listing, "before": caption file text or None}


def build() -> GalleryPanel:
    gr.Markdown("### Images and captions")
    with gr.Row(equal_height=True):
        show = gr.Button("Show the images", elem_id="gallery-show", scale=0, min_width=200)
        step = {"interactive": False, "scale": 0, "min_width": 110}
        previous = gr.Button("Previous", elem_id="gallery-previous", **step)
        next_page = gr.Button("Next", elem_id="gallery-next", **step)
        page_label = gr.Markdown(elem_id="gallery-page")
    summary = gr.Markdown(elem_id="gallery-summary")
    with gr.Row():
        with gr.Column(scale=3):
            cards = gr.HTML(elem_id="dataset-gallery", js_on_load=CLICK_JS)
        with gr.Column(scale=1, elem_id="gallery-editor"):
            image = gr.Image(
                type="filepath", interactive=False, show_label=False, height=240,
                elem_id="gallery-image", buttons=["fullscreen"],
            )  # fmt: skip
            details = gr.Markdown("Click an image to see it and edit its caption.")
            caption = gr.Textbox(
                label="Caption", lines=3, interactive=False, elem_id="gallery-caption"
            )
            with gr.Row():
                save = gr.Button("Save caption", interactive=False, elem_id="gallery-save",
                                 variant="primary", min_width=60)  # fmt: skip
                undo = gr.Button("Undo", interactive=False, elem_id="gallery-undo", min_width=60)
            status = gr.Markdown(elem_id="gallery-status")
    states = gr.State(None), gr.State(0), gr.State(None)
    return GalleryPanel(show, previous, page_label, next_page, summary, cards, image, details,
                        caption, save, undo, status, *states)  # fmt: skip


def wire(panel: GalleryPanel, form: Form) -> None:
    names = form.names_by_component()

    def listing_of(data: dict, again: bool) -> gallery.Listing | str:
        """The form's datasets listed (again when asked, or when the form changed since)."""
        values = {names[id(c)]: v for c, v in data.items() if id(c) in names}
        wanted = {n: v for n, v in values.items() if FIELDS[n].section in gallery.SECTIONS}
        result = collect_values(wanted)  # other tabs' mistakes do not hide the images
        if result.config is None:
            return "**Fix the dataset settings first.**\n\n" + result.message()
        listing = data[panel.listing]
        if again or listing is None or listing.key != gallery.settings_key(result.config):
            return gallery.list_images(result.config)
        return listing

    def shown(listing: gallery.Listing | str, number: int) -> dict[Any, Any]:
        if isinstance(listing, str):
            listing = gallery.Listing("", error=listing)
        page = gallery.page_of(len(listing.entries), number)
        return {
            panel.summary: gallery.summary_markdown(listing),
            panel.page_label: page.label,
            panel.cards: gallery.page_html(listing, page),
            panel.previous: gr.update(interactive=page.number > 0),
            panel.next: gr.update(interactive=page.number < page.count - 1),
            panel.listing: listing,
            panel.page: page.number,
        }

    def show_images(data: dict) -> dict[Any, Any]:
        return shown(listing_of(data, again=True), 0)

    def turn(step: int):
        def turn_page(data: dict) -> dict[Any, Any]:
            listing = listing_of(data, again=False)
            return shown(listing, data[panel.page] + step if listing is data[panel.listing] else 0)

        turn_page.__name__ = "next_page" if step > 0 else "previous_page"
        return turn_page

    editor = [panel.image, panel.details, panel.caption, panel.save, panel.undo, panel.status]

    def open_image(listing: gallery.Listing | None, event: gr.EventData) -> dict[Any, Any]:
        index = getattr(event, "index", None)
        if listing is None or not isinstance(index, int) or not 0 <= index < len(listing.entries):
            return {}
        entry = listing.entries[index]
        file = gallery.caption_file(entry)
        editable = not file.why_not_editable
        text = entry.caption if file.text is None else file.text
        return {
            panel.image: str(entry.path),
            panel.details: gallery.details_markdown(listing, index),
            panel.caption: gr.update(value=text, interactive=editable),
            panel.save: gr.update(interactive=editable),
            panel.undo: gr.update(interactive=editable),
            panel.status: "",
            panel.opened: {"index": index, "before": file.text},
        }

    def after_change(listing, number: int, opened: dict, message: str) -> dict[Any, Any]:
        """The page drawn again and the editor on the caption file as it now is."""
        entry = listing.entries[opened["index"]]
        file = gallery.caption_file(entry)
        page = gallery.page_of(len(listing.entries), number)
        return {panel.cards: gallery.page_html(listing, page), panel.status: message,
                panel.caption: entry.caption if file.text is None else file.text,
                panel.details: gallery.details_markdown(listing, opened["index"]),
                panel.opened: {**opened, "before": file.text}}  # fmt: skip

    def save_caption(listing, number: int, opened: dict | None, text: str) -> dict[Any, Any]:
        if listing is None or not opened:
            return {panel.status: "Click an image first."}
        try:
            saved, message = gallery.save_caption(
                listing.entries[opened["index"]], opened["before"], text
            )
        except (OSError, TiError) as error:
            saved, message = False, f"**Could not save:** {error}"
        return after_change(listing, number, opened, message) if saved else {panel.status: message}

    def undo_caption(listing, number: int, opened: dict | None) -> dict[Any, Any]:
        if listing is None or not opened:
            return {panel.status: "Click an image first."}
        try:
            message = gallery.undo_caption(listing.entries[opened["index"]])
        except (OSError, TiError, ValueError) as error:
            message = f"**Could not undo:** {error}"
        return after_change(listing, number, opened, message)

    page_outputs = [panel.summary, panel.page_label, panel.cards, panel.previous, panel.next,
                    panel.listing, panel.page]  # fmt: skip
    inputs = form.inputs() | {panel.listing, panel.page}
    private = {"api_visibility": "private"}
    panel.show.click(show_images, inputs=inputs, outputs=page_outputs, **private)
    panel.previous.click(turn(-1), inputs=inputs, outputs=page_outputs, **private)
    panel.next.click(turn(1), inputs=inputs, outputs=page_outputs, **private)
    state = [panel.listing, panel.page, panel.opened]
    panel.cards.click(open_image, inputs=panel.listing, outputs=[*editor, panel.opened], **private)
    changed = [panel.cards, panel.status, panel.caption, panel.details, panel.opened]
    panel.save.click(save_caption, inputs=[*state, panel.caption], outputs=changed, **private)
    panel.undo.click(undo_caption, inputs=state, outputs=changed, **private)
