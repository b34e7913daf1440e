"""One-click caption fixes on real files: the token goes in front of exactly the captions that
lack it (sd-scripts style), missing caption files are written, originals are backed up and
Undo puts every byte back; afterwards the dataset doctor finds nothing left to fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from ti_core.config.run_config import Config
from ti_core.config.toml_io import config_to_toml
from ti_core.data.caption_fix import (
    ADD_TOKEN,
    BACKUP_DIR,
    NEW_FILE,
    FixPlan,
    apply_fixes,
    latest_backup,
    plan_fixes,
    undo_fixes,
)
from ti_core.data.doctor import check_datasets
from ti_core.data.sources import datasets_from_args

ROOT = Path(__file__).resolve().parents[2]


def image(path: Path, caption: str | bytes | None = None, extension: str = ".txt") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (200, 90, 30)).save(path)
    if caption is not None:
        data = caption if isinstance(caption, bytes) else caption.encode("utf-8")
        path.with_suffix(extension).write_bytes(data)
    return path


def specs(train: Path, **options):
    return datasets_from_args(
        train_data_dir=str(train), caption_extension=".txt", resolution=64, **options
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` but the backups, by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and BACKUP_DIR not in path.parts
    }


def test_the_token_goes_in_front_of_exactly_the_captions_without_it(tmp_path):
    train = tmp_path / "train"
    folder = train / "10_tok toy"
    image(folder / "a.png", "tok, red toy on a table\n")
    image(folder / "b.png", "1girl, smiling\nsecond line kept\n")
    image(folder / "c.png", "a photo of a toy")
    image(folder / "d.png", b"\xef\xbb\xbfblue toy")  # a BOM
    reg = tmp_path / "reg"
    image(reg / "1_toy" / "r.png", "a toy")
    before = snapshot(train)

    plan = plan_fixes(specs(train, reg_data_dir=str(reg)), "tok")
    assert {Path(c.caption_path).name for c in plan.changes} == {"b.txt", "c.txt", "d.txt"}
    assert all(change.kind == ADD_TOKEN for change in plan.changes)
    assert plan.root == str(train.resolve())

    backup = apply_fixes(plan)
    assert backup is not None and backup.parent == train.resolve() / BACKUP_DIR
    assert (folder / "b.txt").read_text() == "tok, 1girl, smiling\nsecond line kept\n"
    assert (folder / "c.txt").read_text() == "tok, a photo of a toy"
    assert (folder / "d.txt").read_text() == "tok, blue toy"
    assert (folder / "a.txt").read_bytes() == before["10_tok toy/a.txt"]  # had the token
    assert (reg / "1_toy" / "r.txt").read_text() == "a toy"  # reg captions name the class
    assert (backup / "10_tok toy" / "b.txt").read_bytes() == before["10_tok toy/b.txt"]
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temp files

    report = check_datasets(specs(train), "tok")
    assert report.ok and report.datasets[0].subsets[0].missing_token == 0
    assert plan_fixes(specs(train), "tok").changes == []

    assert latest_backup(train) == backup
    assert undo_fixes(backup) == []
    assert snapshot(train) == before  # every byte back, BOM included
    assert latest_backup(train) is None


def test_images_without_caption_files_get_one_with_the_token(tmp_path):
    train = tmp_path / "train"
    image(train / "5_toy" / "a.png")  # caption would be the class tokens "toy"
    image(train / "5_toy" / "b.png", "tok toy")
    plan = plan_fixes(specs(train), "tok")
    [change] = plan.changes
    assert change.kind == NEW_FILE and change.before is None
    assert change.caption_path == str(train / "5_toy" / "a.txt")

    backup = apply_fixes(plan, kinds=[NEW_FILE])
    assert (train / "5_toy" / "a.txt").read_text() == "tok, toy\n"
    assert check_datasets(specs(train), "tok").ok
    undo_fixes(backup)
    assert not (train / "5_toy" / "a.txt").exists()


def test_separator_keep_tokens_and_prefix_are_respected(tmp_path):
    train = tmp_path / "train"
    image(train / "3_x" / "a.png", "red; shiny")
    image(train / "3_x" / "b.png", "green")
    plan = plan_fixes(specs(train, caption_separator=";", keep_tokens=1), "tok")
    assert {c.after for c in plan.changes} == {"tok; red; shiny", "tok; green"}
    assert "keep_tokens = 1" in plan.notes[0] and "keep_tokens = 2" in plan.notes[0]
    with_prefix = plan_fixes(specs(train, caption_prefix="tok"), "tok")
    assert with_prefix.changes == []  # the prefix puts the token in already


def test_a_caption_edited_after_the_check_is_left_alone(tmp_path):
    train = tmp_path / "train"
    image(train / "2_x" / "a.png", "red")
    image(train / "2_x" / "b.png", "blue")
    plan = FixPlan.from_dict(json.loads(json.dumps(plan_fixes(specs(train), "tok").to_dict())))
    (train / "2_x" / "a.txt").write_text("tok red, edited by hand")
    backup = apply_fixes(plan)
    assert (train / "2_x" / "a.txt").read_text() == "tok red, edited by hand"
    assert (train / "2_x" / "b.txt").read_text() == "tok, blue"
    (train / "2_x" / "b.txt").write_text("tok, blue, edited again")
    left = undo_fixes(backup)
    assert len(left) == 1 and "b.txt" in left[0]
    assert (train / "2_x" / "b.txt").read_text() == "tok, blue, edited again"


def test_a_non_utf8_caption_is_explained_not_touched(tmp_path):
    train = tmp_path / "train"
    image(train / "2_x" / "a.png", b"caf\xe9")
    plan = plan_fixes(specs(train), "tok")
    assert plan.changes == [] and "not UTF-8" in plan.skipped[0]
    assert apply_fixes(plan) is None and not (train / BACKUP_DIR).exists()


def test_the_plan_for_a_config_comes_as_json_from_a_child(tmp_path):
    train = tmp_path / "train"
    image(train / "2_x" / "a.png", "red")
    config = Config()
    config.dataset.train_data_dir = str(train)
    config.dataset.caption_extension = ".txt"
    config.token.token_string = "tok"
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(config))
    done = subprocess.run(
        [sys.executable, "-m", "ti_core.cli.caption_fix", "--config", str(path)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    plan = FixPlan.from_dict(json.loads(done.stdout))
    assert [c.after for c in plan.changes] == ["tok, red"]
