"""Reading datasets as sd-scripts does: dataset TOML (strict), N_name folders, fine-tune JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from PIL import Image

from ti_core.data.dataset_toml import load_dataset_config
from ti_core.data.sources import datasets_from_args, discover_images, parse_folder_name
from ti_core.data.spec import SubsetSpec
from ti_core.errors import DatasetError
from ti_core.models.demo_dataset import demo_dataset


def save_image(path: Path, shade: int = 0, size: tuple[int, int] = (64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, 100, 200)).save(path)
    return path


def codes(problems) -> set[str]:
    return {problem.code for problem in problems}


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """The demo data set: <tmp>/train/10_demotoy toy/000.png ... with .txt captions."""
    demo_dataset(tmp_path / "train")
    return tmp_path / "train"


def test_demo_folder_is_one_subset_with_repeats_and_class_tokens(demo: Path):
    [dataset] = datasets_from_args(train_data_dir=str(demo), caption_extension=".txt")
    [subset] = dataset.subsets
    assert (subset.num_repeats, subset.class_tokens, subset.is_reg) == (10, "demotoy toy", False)
    entries, problems = discover_images(dataset)
    assert problems == []
    assert [entry.path.name for entry in entries] == [f"{i:03d}.png" for i in range(24)]
    assert all(entry.caption_source == "file" and "demotoy" in entry.caption for entry in entries)
    assert entries[0].caption == "a photo of demotoy toy on a blue background"  # no newline


def test_without_caption_files_the_folder_name_is_the_caption(demo: Path):
    [dataset] = datasets_from_args(train_data_dir=str(demo))  # sd-scripts' default: .caption
    entries, problems = discover_images(dataset)
    assert {(entry.caption, entry.caption_source) for entry in entries} == {
        ("demotoy toy", "class_tokens")
    }
    [problem] = problems  # the .txt files are pointed out, not silently unused
    assert problem.code == "caption_extension" and 'caption_extension = ".txt"' in problem.hint


def test_folder_rules_collect_every_problem(tmp_path: Path):
    train = tmp_path / "train"
    save_image(train / "5_dog" / "a.png")
    save_image(train / "cats" / "b.png")  # no N_ prefix: ignored with a warning
    save_image(train / "0_none" / "c.png")  # 0 repeats: ignored
    (train / "3_empty").mkdir()
    save_image(train / "loose.png")
    (train / ".cache").mkdir()  # hidden: not a subset, not a warning
    [dataset] = datasets_from_args(train_data_dir=str(train), reg_data_dir=str(tmp_path / "nope"))
    assert [subset.where for subset in dataset.subsets] == ["folder 3_empty", "folder 5_dog"]
    entries, problems = discover_images(dataset)
    assert [entry.path.name for entry in entries] == ["a.png"]
    assert [(p.code, Path(p.path).name) for p in problems if p.code == "no_repeats_prefix"] == [
        ("no_repeats_prefix", "0_none"),
        ("no_repeats_prefix", "cats"),
    ]
    assert codes(problems) == {
        "no_repeats_prefix",
        "loose_images",
        "empty_folder",
        "missing_folder",
    }
    missing = next(p for p in problems if p.code == "missing_folder")
    assert missing.severity == "error" and missing.path == str(tmp_path / "nope")


def test_missing_train_dir_is_an_error(tmp_path: Path):
    [dataset] = datasets_from_args(train_data_dir=str(tmp_path / "absent"))
    _, problems = discover_images(dataset)
    assert codes(problems) == {"missing_folder", "no_images"}
    assert all(problem.severity == "error" for problem in problems)


def test_images_directly_in_train_dir_say_where_they_belong(tmp_path: Path):
    save_image(tmp_path / "a.png")
    [dataset] = datasets_from_args(train_data_dir=str(tmp_path))
    _, problems = discover_images(dataset)
    assert codes(problems) == {"loose_images", "no_subfolders", "no_images"}
    assert "10_mytoken toy" in next(p for p in problems if p.code == "no_subfolders").hint


def test_folder_name_rule_matches_sd_scripts():
    assert parse_folder_name("10_demotoy toy") == (10, "demotoy toy")
    assert parse_folder_name("3_my_cat") == (3, "my_cat")  # only the first _ splits
    assert parse_folder_name("7") == (7, "")
    assert parse_folder_name("cats") is None


def test_image_extensions_any_case_hidden_files_skipped_subfolders_not_searched(tmp_path: Path):
    folder = tmp_path / "train" / "1_x"
    for index, name in enumerate(["a.PNG", "b.Jpg", "c.webp", ".hidden.png", "sub/d.png"]):
        save_image(folder / name, shade=index)
    (folder / "e.gif").write_bytes(b"GIF89a")
    [dataset] = datasets_from_args(train_data_dir=str(tmp_path / "train"))
    entries, _ = discover_images(dataset)
    assert [entry.path.name for entry in entries] == ["a.PNG", "b.Jpg", "c.webp"]


def test_caption_files_latin1_empty_multiline_and_face_crop_names(tmp_path: Path):
    folder = tmp_path / "train" / "2_tok"
    for index, stem in enumerate(["latin", "empty", "blank", "multi", "face_1_2_3_4", "bom"]):
        save_image(folder / f"{stem}.png", shade=index)
    (folder / "latin.txt").write_bytes("tok au café".encode("latin-1"))
    (folder / "empty.txt").write_bytes(b"")
    (folder / "blank.txt").write_text("\n", encoding="utf-8")
    (folder / "multi.txt").write_text("tok first line\nsecond line\n", encoding="utf-8")
    (folder / "face.txt").write_text("tok from the face-crop name", encoding="utf-8")
    (folder / "bom.txt").write_bytes("\ufefftok with a BOM".encode())
    [dataset] = datasets_from_args(train_data_dir=str(tmp_path / "train"), caption_extension="txt")
    entries, problems = discover_images(dataset)
    captions = {entry.path.stem: entry.caption for entry in entries}
    assert captions["multi"] == "tok first line"
    assert captions["face_1_2_3_4"] == "tok from the face-crop name"
    assert captions["blank"] == ""  # one empty line: sd-scripts trains on an empty caption
    assert captions["bom"] == "tok with a BOM"
    by_code = {problem.code: problem for problem in problems}
    assert set(by_code) == {"not_utf8", "empty_caption_file", "multiline_caption"}
    assert by_code["not_utf8"].path.endswith("latin.txt")
    assert "0xe9" in by_code["not_utf8"].detail and by_code["not_utf8"].severity == "error"
    assert by_code["empty_caption_file"].severity == "error"
    assert by_code["multiline_caption"].severity == "warning"


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_inheritance_general_dataset_subset(demo: Path, tmp_path: Path):
    reg = tmp_path / "reg"
    save_image(reg / "r.png")
    config = write_toml(
        tmp_path / "dataset.toml",
        f"""
[general]
caption_extension = ".txt"
shuffle_caption = true
keep_tokens = 1
resolution = [512, 768]

[[datasets]]
resolution = 256
batch_size = 4
num_repeats = 3

  [[datasets.subsets]]
  image_dir = '{demo / "10_demotoy toy"}'

  [[datasets.subsets]]
  image_dir = '{reg}'
  is_reg = true
  class_tokens = "toy"
  num_repeats = 1
  caption_extension = "caption"

[[datasets]]
enable_bucket = true

  [[datasets.subsets]]
  image_dir = '{demo / "10_demotoy toy"}'
  keep_tokens = 2
""",
    )
    first, second = load_dataset_config(config)
    assert (first.resolution, first.batch_size, first.enable_bucket) == ((256, 256), 4, False)
    assert (second.resolution, second.batch_size, second.enable_bucket) == ((512, 768), 1, True)
    train, reg_subset = first.subsets
    assert (train.num_repeats, train.caption_extension, train.keep_tokens) == (3, ".txt", 1)
    assert train.shuffle_caption and not train.is_reg
    assert (reg_subset.is_reg, reg_subset.num_repeats, reg_subset.class_tokens) == (True, 1, "toy")
    assert reg_subset.caption_extension == ".caption"  # sd-scripts adds the missing dot
    assert second.subsets[0].keep_tokens == 2 and second.subsets[0].num_repeats == 1
    assert train.where == "dataset.toml: datasets[0].subsets[0]"

    entries, problems = discover_images(first)
    assert problems == []
    assert [e.caption for e in entries if e.subset.is_reg] == ["toy"]


def test_run_options_fill_what_the_toml_leaves_out(demo: Path, tmp_path: Path):
    config = write_toml(
        tmp_path / "d.toml",
        f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{demo}'\nnum_repeats = 2\n",
    )
    [dataset] = load_dataset_config(
        config, defaults={"resolution": "384,256", "caption_extension": ".txt", "num_repeats": 9}
    )
    assert dataset.resolution == (384, 256)
    assert (dataset.subsets[0].caption_extension, dataset.subsets[0].num_repeats) == (".txt", 2)


def test_toml_mistakes_are_all_reported_with_file_table_key_and_value(tmp_path: Path):
    config = write_toml(
        tmp_path / "typos.toml",
        """
[general]
image_dir = "/somewhere"
shuffle_caption = "yes"

[[datasets]]
resolution = "512"
train_batch_size = 2

  [[datasets.subsets]]
  image_dir = "/a"

  [[datasets.subsets]]
  image_dir = "/b"
  num_repeat = 10
  batch_size = 2
  caption_dropout_rate = 1.5
  keep_tokens = 1.0
""",
    )
    with pytest.raises(DatasetError) as caught:
        load_dataset_config(config)
    message = str(caught.value)
    assert str(config) in message and "8 problems" in message
    assert "datasets[0].subsets[1]: num_repeat = 10: unknown key (did you mean num_repeats?)" in (
        message
    )
    assert 'general: image_dir = "/somewhere": image_dir belongs in a [[datasets.subsets]]' in (
        message
    )
    assert 'general: shuffle_caption = "yes": expected true or false' in message
    assert 'datasets[0]: resolution = "512"' in message
    assert "train_batch_size = 2: unknown key; in a dataset TOML it is batch_size" in message
    assert "subsets[1]: batch_size = 2: batch_size is a dataset setting" in message
    assert "caption_dropout_rate = 1.5: expected at most 1.0" in message
    assert "keep_tokens = 1.0: expected a whole number" in message


def test_unsupported_sd_scripts_keys_are_refused_unless_off(tmp_path: Path):
    base = "[[datasets]]\n[[datasets.subsets]]\nimage_dir = '/x'\n"
    off = write_toml(tmp_path / "off.toml", base + "network_multiplier = 1.0\n")
    assert len(load_dataset_config(off)) == 1  # "off" changes nothing: accepted
    on = write_toml(
        tmp_path / "on.toml", base + "network_multiplier = 0.5\ncustom_attributes = {a = 1}\n"
    )
    with pytest.raises(DatasetError, match="network_multiplier = 0.5: sd-scripts' "
                       "network_multiplier is not supported") as caught:  # fmt: skip
        load_dataset_config(on)
    assert "custom_attributes" in str(caught.value)


def test_toml_structure_errors(tmp_path: Path):
    broken = write_toml(tmp_path / "broken.toml", "[[datasets]\n")
    with pytest.raises(DatasetError, match="cannot be read"):
        load_dataset_config(broken)
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset_config(tmp_path / "absent.toml")
    mixed = write_toml(
        tmp_path / "mixed.toml",
        "[[datasets]]\n[[datasets.subsets]]\nimage_dir = '/a'\n"
        "[[datasets.subsets]]\nmetadata_file = '/m.json'\nclass_tokens = 'x'\n"
        "[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 1\n[dataset]\n",
    )
    with pytest.raises(DatasetError) as caught:
        load_dataset_config(mixed)
    message = str(caught.value)
    assert "cannot share a dataset" in message
    assert "datasets[0].subsets[1]: class_tokens is only for DreamBooth" in message
    assert "datasets[1].subsets[0]: image_dir is missing" in message
    assert "unknown table or key dataset (did you mean [datasets]?)" in message


def test_fine_tuning_metadata_captions_and_tags(tmp_path: Path):
    images = tmp_path / "images"
    save_image(images / "one.png", 1)
    save_image(images / "two.jpg", 2)
    absolute = save_image(tmp_path / "elsewhere" / "three.png", 3)
    metadata = {
        "one": {"caption": "a demotoy", "tags": "orange, toy"},
        "two": {"tags": "demotoy, small"},
        str(absolute): {"caption": "demotoy three"},
        "missing": {"caption": "demotoy"},
    }
    in_json = tmp_path / "meta.json"
    in_json.write_text(json.dumps(metadata), encoding="utf-8")
    [dataset] = datasets_from_args(
        train_data_dir=str(images), in_json=str(in_json), dataset_repeats=3
    )
    assert dataset.subsets[0].num_repeats == 3
    entries, problems = discover_images(dataset)
    assert [(e.path.name, e.caption, e.caption_source) for e in entries] == [
        ("one.png", "a demotoy,orange, toy", "metadata"),
        ("two.jpg", "demotoy, small", "metadata"),
        ("three.png", "demotoy three", "metadata"),
    ]
    [problem] = problems
    assert (problem.code, problem.detail, problem.severity) == ("bad_metadata", "missing", "error")


def test_reg_data_dir_subsets_are_regularization(tmp_path: Path):
    save_image(tmp_path / "train" / "4_tok toy" / "a.png")
    save_image(tmp_path / "reg" / "1_toy" / "r.png")
    [dataset] = datasets_from_args(
        train_data_dir=str(tmp_path / "train"), reg_data_dir=str(tmp_path / "reg")
    )
    assert [(s.where, s.is_reg, s.class_tokens) for s in dataset.subsets] == [
        ("folder 4_tok toy", False, "tok toy"),
        ("reg folder 1_toy", True, "toy"),
    ]


def test_no_source_at_all_is_refused():
    with pytest.raises(DatasetError, match="train_data_dir"):
        datasets_from_args()


def test_num_repeats_below_one_and_repeated_folders_are_skipped_like_sd_scripts(tmp_path: Path):
    folder = save_image(tmp_path / "imgs" / "a.png").parent
    from ti_core.data.spec import DatasetSpec

    dataset = DatasetSpec(
        subsets=[
            SubsetSpec(image_dir=str(folder), where="s0"),
            SubsetSpec(image_dir=str(folder), num_repeats=5, where="s1"),
            SubsetSpec(image_dir=str(folder), num_repeats=0, where="s2"),
        ]
    )
    entries, problems = discover_images(dataset)
    assert len(entries) == 1 and entries[0].subset.where == "s0"
    assert [(p.code, p.where) for p in problems] == [
        ("duplicate_subset", "s1"),
        ("no_repeats", "s2"),
    ]


def test_data_modules_do_not_import_torch():
    code = (
        "import sys, ti_core.data.sources, ti_core.data.captions, ti_core.data.doctor; "
        "print(' '.join(sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(result.stdout.split())
    assert "ti_core.data.doctor" in loaded
    assert not loaded & {"torch", "diffusers", "transformers", "gradio"}
