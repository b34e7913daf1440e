"""The dataset doctor: counts as sd-scripts counts them, and every problem a user would hit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ti_core.data.dataset_toml import load_dataset_config
from ti_core.data.doctor import check_datasets
from ti_core.data.sources import datasets_from_args
from ti_core.models.demo_dataset import demo_dataset


def save_image(path: Path, shade: int = 0, size: tuple[int, int] = (64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, 90, 180)).save(path)
    return path


def codes(problems) -> set[str]:
    return {problem.code for problem in problems}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    demo_dataset(root)
    return root


def test_demo_dataset_is_clean_and_counted_like_sd_scripts(demo: Path):
    datasets = datasets_from_args(
        train_data_dir=str(demo), caption_extension=".txt", resolution=64, train_batch_size=4
    )
    report = check_datasets(datasets, "demotoy")
    assert report.ok and report.errors == [] and report.warnings == []
    [summary] = report.datasets
    [subset] = summary.subsets
    assert (subset.images, subset.num_repeats, subset.images_per_epoch) == (24, 10, 240)
    assert subset.steps_share == 60 and subset.captions == {"file": 24}
    assert (summary.steps_per_epoch, summary.steps_exact, summary.buckets) == (
        60,
        True,
        {"64x64": 240},
    )
    assert report.steps_per_epoch == 60
    assert json.loads(report.to_json())["datasets"][0]["steps_per_epoch"] == 60
    text = report.to_text()
    assert "folder 10_demotoy toy" in text and "steps per epoch: 60" in text
    assert "ready to train" in text


def test_every_problem_is_found_in_one_pass(tmp_path: Path):
    folder = tmp_path / "train" / "5_tok toy"
    for index in range(3):
        save_image(folder / f"good{index}.png", shade=index * 40)
        (folder / f"good{index}.txt").write_text(f"tok toy number {index}", encoding="utf-8")
    shutil.copy(folder / "good0.png", folder / "copy.png")  # duplicate bytes
    (folder / "copy.txt").write_text("tok toy again", encoding="utf-8")
    save_image(folder / "tiny.png", shade=200, size=(16, 16))
    (folder / "tiny.txt").write_text("a tok toy, tiny", encoding="utf-8")
    save_image(folder / "nottoken.png", shade=220)
    (folder / "nottoken.txt").write_text("just a toy", encoding="utf-8")  # no token
    (folder / "broken.png").write_bytes(b"this is not a png")
    good = (folder / "good2.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "latin.txt").write_bytes("tok toy café".encode("latin-1"))
    save_image(folder / "latin.png", shade=250)
    save_image(tmp_path / "train" / "cats" / "c.png")

    datasets = datasets_from_args(
        train_data_dir=str(tmp_path / "train"), caption_extension=".txt", resolution=64
    )
    report = check_datasets(datasets, "tok")
    assert not report.ok
    assert codes(report.errors) == {"unreadable_image", "not_utf8", "missing_token"}
    unreadable = sorted(Path(p.path).name for p in report.errors if p.code == "unreadable_image")
    assert unreadable == ["broken.png", "truncated.png"]
    assert codes(report.warnings) == {"duplicate_image", "too_small", "no_repeats_prefix"}
    by_code = {problem.code: problem for problem in report.warnings + report.errors}
    duplicate = by_code["duplicate_image"]
    assert (duplicate.path, duplicate.detail) == (
        str(folder / "copy.png"),
        f"same bytes as {folder / 'good0.png'}",
    )
    assert by_code["too_small"].detail == "16x16 < 64x64"
    assert Path(by_code["missing_token"].path).name == "nottoken.png"
    assert "add_missing_token" in by_code["missing_token"].hint
    # With add_missing_token the run fixes those captions itself: no longer an error.
    relaxed = check_datasets(datasets, "tok", add_missing_token=True)
    assert "missing_token" in codes(relaxed.warnings) and "missing_token" not in codes(
        relaxed.errors
    )
    text = report.to_text()
    for phrase in (
        "image cannot be read (2 files)",
        "caption file is not UTF-8",
        "16x16 < 64x64",
        'caption does not contain the token "tok"',
        "fix the errors before training",
    ):
        assert phrase in text  # fmt: skip


def test_no_caption_with_the_token_is_an_error_unless_training_on_templates(demo: Path):
    datasets = datasets_from_args(train_data_dir=str(demo), caption_extension=".txt", resolution=64)
    report = check_datasets(datasets, "othertoken")
    assert codes(report.errors) == {"no_token"} and report.warnings == []
    assert "24 captions" in report.errors[0].detail
    assert report.datasets[0].subsets[0].missing_token == 24
    with_templates = check_datasets(datasets, "othertoken", use_templates=True)
    assert with_templates.ok and with_templates.datasets[0].subsets[0].captions == {"template": 24}


def test_caption_prefix_counts_for_the_token(tmp_path: Path):
    save_image(tmp_path / "train" / "1_toy" / "a.png")
    datasets = datasets_from_args(
        train_data_dir=str(tmp_path / "train"), caption_prefix="tok", resolution=64
    )
    assert check_datasets(datasets, "tok").ok


def test_regularization_images_are_balanced_to_the_training_images(tmp_path: Path):
    for index in range(2):
        save_image(tmp_path / "train" / "5_tok toy" / f"t{index}.png", shade=index)
    for index in range(3):
        save_image(tmp_path / "reg" / "1_toy" / f"r{index}.png", shade=100 + index)
    datasets = datasets_from_args(
        train_data_dir=str(tmp_path / "train"), reg_data_dir=str(tmp_path / "reg"), resolution=64
    )
    report = check_datasets(datasets, "tok")
    assert report.ok, report.to_text()
    [summary] = report.datasets
    # sd-scripts repeats reg images, in turn, until they match the 10 training images per epoch
    assert (summary.train_images_per_epoch, summary.reg_images_per_epoch) == (10, 10)
    assert summary.steps_per_epoch == 20
    assert [s.images_per_epoch for s in summary.subsets] == [10, 10]
    assert "1_toy (reg)" in report.to_text()


def test_surplus_reg_images_go_unused_and_reg_captions_with_the_token_are_flagged(tmp_path: Path):
    save_image(tmp_path / "train" / "1_tok" / "t.png")
    for index in range(3):
        save_image(tmp_path / "reg" / "2_tok toy" / f"r{index}.png", shade=100 + index)
    datasets = datasets_from_args(
        train_data_dir=str(tmp_path / "train"), reg_data_dir=str(tmp_path / "reg"), resolution=64
    )
    report = check_datasets(datasets, "tok")
    # 1 training image: the first reg image (2 repeats) already covers it; the rest are unused
    assert report.datasets[0].reg_images_per_epoch == 2
    assert codes(report.warnings) == {"token_in_reg"} and len(report.warnings) == 3


def test_bucket_settings_sd_scripts_refuses_are_errors(demo: Path):
    datasets = datasets_from_args(
        train_data_dir=str(demo), caption_extension=".txt", resolution=64, enable_bucket=True,
        min_bucket_reso=128, max_bucket_reso=32, bucket_reso_steps=32,
    )  # fmt: skip
    report = check_datasets(datasets, "demotoy")
    messages = [problem.message for problem in report.errors if problem.code == "bucket_settings"]
    assert len(messages) == 3
    assert "bucket_reso_steps 32 is not a multiple of 64" in messages
    assert check_datasets(datasets, "demotoy", reso_steps_multiple=32).errors != report.errors


def test_bucket_hook_gives_the_histogram_and_exact_steps(demo: Path):
    datasets = datasets_from_args(
        train_data_dir=str(demo), caption_extension=".txt", resolution=64, train_batch_size=7,
        enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128,
    )  # fmt: skip
    without = check_datasets(datasets, "demotoy").datasets[0]
    assert (without.buckets, without.steps_exact, without.steps_per_epoch) == ({}, False, 35)
    seen = []

    def bucket_of(size, dataset):
        seen.append((size, dataset.resolution))
        return (64, 64) if len(seen) % 2 else (128, 64)

    report = check_datasets(datasets, "demotoy", bucket_of=bucket_of)
    summary = report.datasets[0]
    assert len(seen) == 24 and seen[0] == ((64, 64), (64, 64))  # once per image
    assert summary.buckets == {"128x64": 120, "64x64": 120} and summary.steps_exact
    assert summary.steps_per_epoch == 18 + 18  # each bucket rounds up on its own
    assert "not worked out" in check_datasets(datasets, "demotoy").to_text()


def test_no_upscale_image_smaller_than_the_steps_is_an_error(tmp_path: Path):
    save_image(tmp_path / "train" / "1_tok" / "tiny.png", size=(40, 200))
    datasets = datasets_from_args(
        train_data_dir=str(tmp_path / "train"), resolution=256, enable_bucket=True,
        bucket_no_upscale=True,
    )  # fmt: skip
    report = check_datasets(datasets, "tok")
    assert codes(report.errors) == {"too_small"} and report.errors[0].detail == "40x200"


def test_dataset_toml_with_a_missing_folder(tmp_path: Path, demo: Path):
    config = tmp_path / "dataset.toml"
    config.write_text(
        f"[general]\ncaption_extension = '.txt'\nresolution = 64\n[[datasets]]\n"
        f"[[datasets.subsets]]\nimage_dir = '{demo / '10_demotoy toy'}'\n"
        f"[[datasets.subsets]]\nimage_dir = '{tmp_path / 'gone'}'\nis_reg = true\n",
        encoding="utf-8",
    )
    report = check_datasets(load_dataset_config(config), "demotoy")
    assert codes(report.errors) == {"missing_folder"}
    assert report.errors[0].where == "dataset.toml: datasets[0].subsets[1]"
    assert str(tmp_path / "gone") in report.to_text()
