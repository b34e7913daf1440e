"""The Dataset tab's gallery without a browser: what a page shows (thumbnails, captions with the
token marked, sizes, buckets, repeats), paging through a large folder, and a caption edited,
saved with its original backed up, and undone back to the original bytes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from ti_core.config.run_config import Config
from ti_gui import dataset_gallery as gallery

TOKEN = "mytok"


def make_dataset(root: Path, count: int, folder: str = "10_mytok thing") -> Path:
    """`count` 8-px images in root/folder, each captioned "a photo of mytok number N"."""
    images = root / folder
    images.mkdir(parents=True)
    for number in range(count):
        Image.new("RGB", (8, 8), (number % 256, 90, 30)).save(images / f"{number:04d}.png")
        (images / f"{number:04d}.txt").write_text(f"a photo of {TOKEN} number {number}\n")
    return images


def config_for(train_data_dir: Path, **dataset) -> Config:
    config = Config()
    config.dataset.train_data_dir = str(train_data_dir)
    config.dataset.caption_extension = ".txt"
    config.dataset.resolution = "64"
    for name, value in dataset.items():
        setattr(config.dataset, name, value)
    config.token.token_string = TOKEN
    return config


def cards(page_html: str) -> list[str]:
    return re.findall(r'<button class="ti-card" data-index="(\d+)"', page_html)


def test_a_hundred_images_page_48_at_a_time(tmp_path):
    make_dataset(tmp_path / "data", 100)
    listing = gallery.list_images(config_for(tmp_path / "data"))
    assert not listing.error and len(listing.entries) == 100
    thumbnails = tmp_path / "thumbnails"

    first = gallery.page_of(100, 0)
    assert first.label == "images 1-48 of 100" and first.count == 3
    html = gallery.page_html(listing, first, thumbnails)
    assert cards(html) == [str(index) for index in range(48)]
    assert html.count('src="data:image/jpeg;base64,') == 48
    assert len(list(thumbnails.glob("*.jpg"))) == 48  # made for this page only

    last = gallery.page_of(100, 2)
    assert last.label == "images 97-100 of 100"
    assert cards(gallery.page_html(listing, last, thumbnails)) == ["96", "97", "98", "99"]
    assert gallery.page_of(100, 7) == last  # past the end: the last page
    assert gallery.page_of(0, 0).label == "no images"

    summary = gallery.summary_markdown(listing)
    assert "folder 10_mytok thing (training): 100 images x 10 repeats = 1000 per epoch" in summary


def test_thumbnails_are_small_and_cached(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGBA", (1200, 600), (200, 10, 10, 0)).save(big)  # transparent: white, as trained
    data = gallery.thumbnail(big, tmp_path / "cache")
    cached = list((tmp_path / "cache").glob("*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == data
    with Image.open(cached[0]) as small:
        assert small.size == (gallery.THUMBNAIL_PX, gallery.THUMBNAIL_PX // 2)
        assert small.getpixel((10, 10)) > (250, 250, 250)


def test_each_card_shows_size_bucket_repeats_and_the_caption_with_the_token(tmp_path):
    images = make_dataset(tmp_path / "data", 1)
    Image.new("RGB", (96, 64)).save(images / "wide.png")
    (images / "wide.txt").write_text("a red <toy> & a cup\n")  # no token, and HTML characters
    Image.new("RGB", (64, 64)).save(images / "bare.png")  # no caption file
    listing = gallery.list_images(config_for(tmp_path / "data"))
    by_name = {entry.path.name: index for index, entry in enumerate(listing.entries)}
    html = gallery.page_html(listing, gallery.page_of(3, 0), tmp_path / "thumbnails")
    assert len(cards(html)) == 3

    marked = gallery.caption_html(listing, listing.entries[by_name["0000.png"]])
    assert marked == f'a photo of <span class="ti-new">{TOKEN}</span> number 0'
    lacking = gallery.caption_html(listing, listing.entries[by_name["wide.png"]])
    assert "a red &lt;toy&gt; &amp; a cup" in lacking and "no token" in lacking
    missing = gallery.caption_html(listing, listing.entries[by_name["bare.png"]])
    assert "no caption file" in missing
    assert f'class tokens: <span class="ti-new">{TOKEN}</span> thing' in missing

    # bucketing off: every image is scaled and cropped to the resolution
    assert gallery.facts_text(listing, by_name["wide.png"]) == "96x64 -> 64x64 · x10"


def test_the_bucket_is_the_one_sd_scripts_picks(tmp_path):
    images = make_dataset(tmp_path / "data", 0, "2_mytok thing")
    Image.new("RGB", (768, 512)).save(images / "wide.png")
    config = config_for(tmp_path / "data", resolution="512", enable_bucket=True)
    listing = gallery.list_images(config)
    # 512x512 area, 64-px steps: the nearest aspect to 1.5 is 640x384 (1.67), not 576x448 (1.29)
    assert gallery.facts_text(listing, 0) == "768x512 -> 640x384 · x2"


def test_reg_images_are_marked_and_need_no_token(tmp_path):
    make_dataset(tmp_path / "data", 1)
    reg = make_dataset(tmp_path / "reg", 0, "1_thing")
    Image.new("RGB", (8, 8)).save(reg / "r.png")
    (reg / "r.txt").write_text("a photo of a thing\n")
    listing = gallery.list_images(config_for(tmp_path / "data", reg_data_dir=str(tmp_path / "reg")))
    assert [entry.subset.is_reg for entry in listing.entries] == [False, True]
    assert gallery.facts_text(listing, 1).endswith("· x1 · reg")
    assert "no token" not in gallery.caption_html(listing, listing.entries[1])
    assert "(regularization): 1 images x 1 repeats" in gallery.summary_markdown(listing)


def test_save_backs_up_the_original_and_undo_restores_its_bytes(tmp_path):
    images = make_dataset(tmp_path / "data", 2)
    caption_path = images / "0001.txt"
    original = b"\xef\xbb\xbfmytok, red\r\nsecond line\r\n"  # BOM and Windows line ends
    caption_path.write_bytes(original)
    listing = gallery.list_images(config_for(tmp_path / "data"))
    entry = listing.entries[1]
    opened = gallery.caption_file(entry)
    assert opened.path == str(caption_path) and opened.text == "mytok, red\r\nsecond line\r\n"

    saved, message = gallery.save_caption(entry, opened.text, "mytok, blue, smiling")
    assert saved and "**Saved**" in message
    assert caption_path.read_bytes() == b"mytok, blue, smiling\r\n"
    backups = list((tmp_path / "data" / ".ti-caption-backup").iterdir())
    assert len(backups) == 1
    assert (backups[0] / "10_mytok thing" / "0001.txt").read_bytes() == original
    page = gallery.page_html(listing, gallery.page_of(2, 0), tmp_path / "thumbnails")
    assert "blue, smiling" in page  # the card shows the new caption

    message = gallery.undo_caption(entry)
    assert message.startswith("**Undone:**")
    assert caption_path.read_bytes() == original
    assert gallery.undo_caption(entry) == "Nothing to undo for this caption."
    assert (images / "0000.txt").read_text() == f"a photo of {TOKEN} number 0\n"  # untouched


def test_a_missing_caption_file_is_written_by_save_and_deleted_by_undo(tmp_path):
    images = make_dataset(tmp_path / "data", 0)
    Image.new("RGB", (8, 8)).save(images / "bare.png")
    listing = gallery.list_images(config_for(tmp_path / "data"))
    entry = listing.entries[0]
    opened = gallery.caption_file(entry)
    assert opened.text is None and opened.path == str(images / "bare.txt")
    assert "No caption file yet" in gallery.details_markdown(listing, 0)

    saved, _ = gallery.save_caption(entry, None, "mytok on a shelf")
    assert saved and (images / "bare.txt").read_text() == "mytok on a shelf\n"
    gallery.undo_caption(entry)
    assert not (images / "bare.txt").exists()


@pytest.mark.parametrize(
    ("text", "says"), [("   ", "empty caption file stops training"), ("a", "changed on disk")]
)
def test_save_refuses_an_empty_caption_and_a_file_changed_since_it_was_opened(tmp_path, text, says):
    images = make_dataset(tmp_path / "data", 1)
    listing = gallery.list_images(config_for(tmp_path / "data"))
    before = gallery.caption_file(listing.entries[0]).text
    (images / "0000.txt").write_text("edited elsewhere\n")
    saved, message = gallery.save_caption(listing.entries[0], before, text)
    assert not saved and says in message
    assert (images / "0000.txt").read_text() == "edited elsewhere\n"


def test_a_folder_that_is_not_there_is_said_plainly(tmp_path):
    listing = gallery.list_images(config_for(tmp_path / "nowhere"))
    summary = gallery.summary_markdown(listing)
    assert "train_data_dir folder not found" in summary and not listing.entries
    assert gallery.page_html(listing, gallery.page_of(0, 0)) == "<p>No images to show.</p>"


def test_a_dataset_toml_and_fine_tuning_metadata_are_read_as_training_reads_them(tmp_path):
    images = make_dataset(tmp_path / "data", 2, "photos")
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{images}'\nnum_repeats = 3\n"
        "caption_extension = '.txt'\n"
    )
    listing = gallery.list_images(config_for(tmp_path / "unused", dataset_config=str(toml)))
    assert len(listing.entries) == 2 and "2 images x 3 repeats" in gallery.summary_markdown(listing)

    metadata = tmp_path / "meta.json"
    metadata.write_text('{"0000": {"caption": "mytok from the metadata"}}')
    listing = gallery.list_images(config_for(images, in_json=str(metadata)))
    entry = listing.entries[0]
    assert entry.caption == "mytok from the metadata"
    saved, message = gallery.save_caption(entry, None, "something else")
    assert not saved and f"its caption is in {metadata}" in message
