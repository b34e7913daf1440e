"""sd-scripts' caption and image options, torch-free: wildcards, the secondary separator, the
caption tag warm-up, the face position in a file name, cache_info's metadata_cache.json,
caption_extention, dataset_repeats, and these keys in a dataset TOML and the run config."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import pytest
from PIL import Image

from ti_core.config.run_config import Config
from ti_core.config.toml_io import set_option
from ti_core.data.captions import process_caption
from ti_core.data.dataset_toml import load_dataset_config
from ti_core.data.info_cache import INFO_CACHE_FILE
from ti_core.data.run_data import check_data, dataset_specs
from ti_core.data.sources import datasets_from_args, discover_images, face_box
from ti_core.data.spec import SubsetSpec
from ti_core.errors import ConfigError, DatasetError

TAGS = "demotoy, orange, toy, blue background"


def caption(text: str, subset: SubsetSpec, seed: int = 0, **when) -> str:
    return process_caption(text, subset, 1, random.Random(seed), **when)


def folder_with(tmp_path: Path, captions: dict[str, str], size=(64, 48)) -> Path:
    folder = tmp_path / "train" / "1_demotoy toy"
    folder.mkdir(parents=True)
    for shade, (stem, text) in enumerate(captions.items()):
        Image.new("RGB", size, (shade * 40, 100, 200)).save(folder / f"{stem}.png")
        if text:
            (folder / f"{stem}.txt").write_text(text, encoding="utf-8")
    return folder


def test_wildcards_pick_one_option_each_time_and_keep_escaped_braces():
    subset = SubsetSpec(enable_wildcard=True)
    picks = [
        caption("demotoy {red|blue|green} toy, {{literal}}", subset, seed) for seed in range(60)
    ]
    assert {pick.split()[1] for pick in picks} == {"red", "blue", "green"}
    assert all(pick.endswith("toy, {literal}") for pick in picks)
    assert picks == [
        caption("demotoy {red|blue|green} toy, {{literal}}", subset, s) for s in range(60)
    ]
    # without enable_wildcard the braces are left as written
    assert caption("demotoy {red|blue}", SubsetSpec()) == "demotoy {red|blue}"


def test_a_caption_file_of_several_lines_gives_one_line_per_step_with_wildcards(tmp_path):
    folder = folder_with(tmp_path, {"img": "demotoy on a table\n\n  demotoy in a box  \n"})
    [dataset] = datasets_from_args(train_data_dir=str(folder.parent), caption_extension=".txt",
                                   enable_wildcard=True)  # fmt: skip
    [entry], problems = discover_images(dataset)
    assert entry.caption == "demotoy on a table\ndemotoy in a box" and problems == []
    picks = {caption(entry.caption, entry.subset, seed) for seed in range(20)}
    assert picks == {"demotoy on a table", "demotoy in a box"}
    # without wildcards: the first line, and a warning that the rest is unused
    [dataset] = datasets_from_args(train_data_dir=str(folder.parent), caption_extension=".txt")
    [entry], problems = discover_images(dataset)
    assert entry.caption == "demotoy on a table"
    assert [problem.code for problem in problems] == ["multiline_caption"]


def test_fine_tuning_tags_go_on_every_caption_line_with_wildcards(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "one.png")
    metadata = {"one": {"caption": "demotoy sits\ndemotoy stands", "tags": "orange,\ntoy"}}
    (tmp_path / "meta.json").write_text(json.dumps(metadata), encoding="utf-8")
    in_json = str(tmp_path / "meta.json")
    [dataset] = datasets_from_args(train_data_dir=str(tmp_path), in_json=in_json,
                                   enable_wildcard=True)  # fmt: skip
    [entry], _ = discover_images(dataset)
    assert entry.caption == "demotoy sits,orange,,toy\ndemotoy stands,orange,,toy"


def test_the_secondary_separator_keeps_a_tag_together_when_shuffling():
    subset = SubsetSpec(shuffle_caption=True, secondary_separator=";;;")
    picks = {caption("demotoy, red;;;shiny, toy", subset, seed) for seed in range(40)}
    assert len(picks) > 1  # shuffled
    for pick in picks:
        assert "red,shiny" in pick and ";;;" not in pick  # one tag, then the caption separator
        assert sorted(pick.split(", ")) == ["demotoy", "red,shiny", "toy"]


def test_tag_warm_up_trains_the_first_tags_only_then_more_each_step():
    subset = SubsetSpec(token_warmup_step=4)  # 1 tag at step 0 to all 4 at step 4
    counts = [len(caption(TAGS, subset, step=step).split(", ")) for step in range(6)]
    assert counts == [1, 1, 2, 3, 4, 4]  # sd-scripts: floor(step * (4 - 1) / 4) + 1
    assert caption(TAGS, subset, step=0) == "demotoy"
    assert caption(TAGS, subset) == TAGS  # no step (the validation loss): the whole caption
    # the kept tags stay; the count is of the others, taken before shuffling
    kept = SubsetSpec(token_warmup_step=10, keep_tokens=1, shuffle_caption=True)
    assert caption(TAGS, kept, step=0) == "demotoy, orange"
    # below 1: a share of all steps; token_warmup_min tags at step 0
    share = SubsetSpec(token_warmup_step=0.5, token_warmup_min=2)
    assert caption(TAGS, share, step=0, max_train_steps=8) == "demotoy, orange"
    assert caption(TAGS, share, step=4, max_train_steps=8) == TAGS


def test_face_position_is_read_from_the_file_name():
    assert face_box("shots/cat_12_30_40_44.png") == (12, 30, 40, 44)
    assert face_box("a_b_12_30_40_44.jpg") == (12, 30, 40, 44)
    assert face_box("12_30_40_44.png") is None  # sd-scripts wants a name before the four
    assert face_box("my_cat_photo_2023_01.png") is None  # words, not numbers
    assert face_box("x_0_30_40_44.png") is None  # no face centre: sd-scripts skips it too


def test_face_crop_says_when_it_cannot_act(tmp_path):
    folder = folder_with(tmp_path, {"img_32_24_20_20": "demotoy", "plain": "demotoy"})
    [dataset] = datasets_from_args(train_data_dir=str(folder.parent), caption_extension=".txt",
                                   face_crop_aug_range="2.0,4.0")  # fmt: skip
    _, problems = discover_images(dataset)
    [problem] = problems
    assert problem.code == "no_face_position" and "1 images" in problem.message
    dataset.enable_bucket = True
    _, problems = discover_images(dataset)
    assert [problem.code for problem in problems] == ["face_crop_with_buckets"]
    with pytest.raises(ConfigError, match=r"face_crop_aug_range = \"4,2\": expected two numbers"):
        datasets_from_args(train_data_dir=str(folder.parent), face_crop_aug_range="4,2")


def test_the_new_keys_are_read_from_a_dataset_toml_at_every_level(tmp_path):
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        "[general]\nenable_wildcard = true\nsecondary_separator = ';;;'\n"
        "[[datasets]]\nresize_interpolation = 'nearest'\ntoken_warmup_step = 0.25\n"
        "[[datasets.subsets]]\nimage_dir = '/x'\nface_crop_aug_range = [2, 4.5]\n"
        "cache_info = true\ntoken_warmup_min = 3\n",
        encoding="utf-8",
    )
    [dataset] = load_dataset_config(toml)
    [subset] = dataset.subsets
    assert (subset.enable_wildcard, subset.secondary_separator) == (True, ";;;")
    assert (subset.resize_interpolation, subset.token_warmup_step) == ("nearest", 0.25)
    assert (subset.face_crop_aug_range, subset.cache_info, subset.token_warmup_min) == (
        "2,4.5", True, 3,
    )  # fmt: skip
    toml.write_text(
        "[[datasets]]\n[[datasets.subsets]]\nmetadata_file = '/m.json'\ncache_info = true\n"
        "face_crop_aug_range = [4.0]\nresize_interpolation = 'sharp'\n",
        encoding="utf-8",
    )
    with pytest.raises(DatasetError) as caught:
        load_dataset_config(toml)
    message = str(caught.value)
    assert "subsets[0]: cache_info is only for DreamBooth (image_dir) subsets" in message
    assert "subsets[0]: face_crop_aug_range = [4.0]: expected two numbers" in message
    assert 'subsets[0]: resize_interpolation = "sharp": expected one of' in message


def test_caption_extention_is_sd_scripts_old_spelling_of_caption_extension(tmp_path):
    folder = folder_with(tmp_path, {"img": "demotoy"})
    config = Config()
    config.dataset.train_data_dir = str(folder.parent)
    config.dataset.caption_extention = "txt"
    [dataset] = dataset_specs(config)
    assert dataset.subsets[0].caption_extension == ".txt"
    [entry], _ = discover_images(dataset)
    assert (entry.caption, entry.caption_source) == ("demotoy", "file")
    config.dataset.caption_extension = ".tags"
    with pytest.raises(ConfigError, match='caption_extention = "txt" and caption_extension = '
                       '".tags" disagree'):  # fmt: skip
        dataset_specs(config)
    config.dataset.caption_extension = ".txt"  # the same, given both ways: fine
    assert dataset_specs(config)[0].subsets[0].caption_extension == ".txt"


def test_dataset_repeats_repeat_in_json_images_and_fill_a_toml_subset(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "one.png")
    (tmp_path / "meta.json").write_text('{"one": {"caption": "demotoy"}}', encoding="utf-8")
    config = Config()
    set_option(config, "dataset_repeats", 3)
    config.dataset.in_json, config.dataset.train_data_dir = str(tmp_path / "meta.json"), "."
    [dataset] = dataset_specs(config)
    assert dataset.subsets[0].num_repeats == 3
    toml = tmp_path / "dataset.toml"
    toml.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = '/a'\n"
                    "[[datasets.subsets]]\nimage_dir = '/b'\nnum_repeats = 5\n")  # fmt: skip
    config = Config()
    config.dataset.dataset_config, config.dataset.dataset_repeats = str(toml), 2
    assert [s.num_repeats for s in dataset_specs(config)[0].subsets] == [2, 5]


def test_cache_info_keeps_sizes_in_sd_scripts_file_and_trusts_it(tmp_path):
    folder = folder_with(tmp_path, {"a": "demotoy one", "b": ""})
    [dataset] = datasets_from_args(train_data_dir=str(folder.parent), caption_extension=".txt",
                                   cache_info=True)  # fmt: skip
    entries, _ = discover_images(dataset)
    assert [entry.size for entry in entries] == [(64, 48), (64, 48)]
    cache_file = folder / INFO_CACHE_FILE
    cached = json.loads(cache_file.read_text(encoding="utf-8"))
    assert cached[str(folder / "a.png")]["caption"] == "demotoy one"  # what sd-scripts reads
    assert cached[str(folder / "b.png")]["resolution"] == [64, 48]
    # the next scan takes sizes from the file (a size written there shows up) ...
    cached[str(folder / "a.png")]["resolution"] = [640, 480]
    cache_file.write_text(json.dumps(cached), encoding="utf-8")
    assert [entry.size for entry in discover_images(dataset)[0]] == [(640, 480), (64, 48)]
    # ... but not for an image changed since
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    assert [entry.size for entry in discover_images(dataset)[0]] == [(32, 32), (64, 48)]
    assert json.loads(cache_file.read_text())[str(folder / "a.png")]["resolution"] == [32, 32]


def test_with_cache_info_everywhere_the_check_does_not_open_the_images(tmp_path):
    folder = folder_with(tmp_path, {"a": "demotoy one", "b": "demotoy two"})
    config = Config()
    config.token.token_string = "demotoy"
    config.dataset.train_data_dir, config.dataset.caption_extension = str(folder.parent), ".txt"
    set_option(config, "cache_info", True)
    assert check_data(config)[1].ok  # the first check writes metadata_cache.json
    # break an image, keeping its size in bytes and its mtime: the cache still trusts it
    image = folder / "b.png"
    stat, data = image.stat(), bytearray(image.read_bytes())
    data[-30:] = bytes(30)
    image.write_bytes(bytes(data))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert check_data(config)[1].ok
    config.dataset.cache_info = False
    report = check_data(config)[1]
    assert [problem.code for problem in report.errors] == ["unreadable_image"]


def test_new_run_options_are_checked_like_the_others():
    config = Config()
    values = {"resize_interpolation": "bicubic", "token_warmup_step": 0.1,
              "persistent_data_loader_workers": True, "skip_cache_check": True,
              "tokenizer_cache_dir": "tokenizers", "enable_wildcard": True}  # fmt: skip
    for name, value in values.items():
        set_option(config, name, value)
    assert config.dataset.resize_interpolation == "bicubic"
    assert config.model.tokenizer_cache_dir == "tokenizers"
    with pytest.raises(ConfigError, match='resize_interpolation = "cubicle": expected one of'):
        set_option(config, "resize_interpolation", "cubicle")
    with pytest.raises(ConfigError, match="dataset_repeats = 0: expected at least 1"):
        set_option(config, "dataset_repeats", 0)


def test_the_tokenizer_cache_is_read_and_filled_as_sd_scripts_does(tmp_path, caplog):
    from ti_core.models.tokenizer import load_tokenizer, tokenizer_cache

    with tokenizer_cache(tmp_path):
        load_tokenizer()
        load_tokenizer("!")
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k",
        "openai_clip-vit-large-patch14",
        "stabilityai_stable-diffusion-2",
    ]
    # a tokenizer already there is the one used (here: a longer context, to tell it apart)
    settings = tmp_path / "openai_clip-vit-large-patch14" / "tokenizer_config.json"
    config = json.loads(settings.read_text(encoding="utf-8"))
    settings.write_text(json.dumps({**config, "model_max_length": 99}), encoding="utf-8")
    with tokenizer_cache(tmp_path):
        assert load_tokenizer().model_max_length == 99
        assert load_tokenizer("!").pad_token == "!"
    assert load_tokenizer().model_max_length == 77  # outside: the shipped one
    with caplog.at_level(logging.WARNING), tokenizer_cache(tmp_path):
        pass  # a model with its own tokenizer loads none
    assert "tokenizer_cache_dir" in caplog.text and "not used" in caplog.text
