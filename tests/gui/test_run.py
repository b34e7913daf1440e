"""Training from the GUI, through its API: the config goes in, a child process trains the demo
model, the run folder's events come back, Stop ends the run cleanly, a failed start says why."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w
from gradio_client import Client

from ti_core.config.toml_io import load_config

ROOT = Path(__file__).resolve().parents[2]


def demo_config(client: Client, output_dir: Path, **changes: dict) -> str:
    """The demo preset as the GUI serves it, with the run folder (and more) changed."""
    data = tomllib.loads(client.predict("demo", api_name="/read_preset"))
    data["saving"]["output_dir"] = str(output_dir)
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    return tomli_w.dumps(data)


def wait_for(client: Client, folder: str, done, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = client.predict(folder, api_name="/run_snapshot")
        if done(snapshot):
            return snapshot
        time.sleep(0.5)
    pytest.fail(f"timed out; last snapshot: {snapshot}")


def test_train_the_demo_then_stop_it(training_gui, tmp_path):
    client = Client(training_gui, verbose=False)
    config = demo_config(
        client,
        tmp_path / "run",
        training={"max_train_steps": 300},
        saving={"save_every_n_steps": 10},
        sampling={"sample_every_n_steps": 0},
    )
    status, command = client.predict(config, api_name="/check_config")
    assert status.startswith("**Valid.**") and "--max_train_steps 300" in command

    folder = client.predict(config, "", api_name="/start_run")
    assert Path(folder) == tmp_path / "run"
    saved = load_config(tmp_path / "run" / "config.toml")  # what the run trains with
    assert saved.training.max_train_steps == 300 and saved.saving.output_dir == folder
    with pytest.raises(Exception, match="already training"):
        client.predict(config, "", api_name="/start_run")  # one run at a time

    running = wait_for(client, folder, lambda s: s["step"] >= 12 and s["checkpoints"])
    assert running["live"] and running["total_steps"] == 300 and running["losses"] >= 12
    assert Path(running["checkpoints"][0]).is_file()

    assert "Stopping" in client.predict(api_name="/stop_run")
    ended = wait_for(client, folder, lambda s: s["done_reason"] is not None)
    assert ended["done_reason"] == "stopped" and ended["step"] < 300
    assert Path(ended["final_embedding"]).is_file()
    after_exit = wait_for(client, folder, lambda s: not s["live"], timeout=30)
    assert after_exit["exit_code"] == 0 and after_exit["headline"] == "Stopped"


def test_a_run_that_cannot_start_says_why(training_gui, tmp_path):
    client = Client(training_gui, verbose=False)
    config = demo_config(
        client, tmp_path / "bad", dataset={"train_data_dir": str(tmp_path / "none")}
    )
    folder = client.predict(config, "", api_name="/start_run")
    ended = wait_for(client, folder, lambda s: s["exit_code"] is not None)
    assert ended["exit_code"] == 2 and ended["done_reason"] is None
    assert "without finishing" in ended["headline"]
    assert str(tmp_path / "none") in ended["messages"]  # the engine's own message, not a traceback
    assert "Traceback" not in ended["messages"]


def test_resume_continues_a_stopped_run_from_its_saved_state(training_gui, tmp_path):
    client = Client(training_gui, verbose=False)
    config = demo_config(
        client,
        tmp_path / "resumable",
        training={"max_train_steps": 300},
        saving={"save_every_n_steps": 5, "save_state": True},
        sampling={"sample_every_n_steps": 0},
    )
    folder = client.predict(config, "", api_name="/start_run")
    wait_for(client, folder, lambda s: s["step"] >= 6)
    client.predict(api_name="/stop_run")
    stopped = wait_for(client, folder, lambda s: s["done_reason"] and not s["live"], timeout=60)
    assert (Path(folder) / "state" / "state.pt").is_file()

    assert client.predict(folder, api_name="/resume_run") == folder
    saved = load_config(Path(folder) / "config.toml")
    assert saved.saving.resume == str(Path(folder) / "state")
    resumed = wait_for(client, folder, lambda s: s["live"] and s["step"] > stopped["step"])
    assert resumed["total_steps"] == 300
    events = [json.loads(line) for line in (Path(folder) / "events.jsonl").open()]
    loads = [i for i, e in enumerate(events) if e.get("phase") == "loading"]
    first_after = next(e for e in events[loads[-1] :] if e["type"] == "step")
    assert first_after["step"] == stopped["step"] + 1  # picked up where the state was saved
    client.predict(api_name="/stop_run")
    wait_for(client, folder, lambda s: s["done_reason"] == "stopped" and not s["live"])


def test_resume_is_off_with_a_reason_without_saved_state(tmp_path):
    from ti_gui.run_view import resume_status
    from ti_gui.supervisor import RunState

    state = RunState(tmp_path)
    assert resume_status(state, live=False, another_running=False)[0] is False
    assert "save_state" in resume_status(state, live=False, another_running=False)[1]
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.pt").write_bytes(b"x")
    assert resume_status(state, live=False, another_running=False)[0] is True
    assert resume_status(state, live=False, another_running=True)[0] is False


@pytest.mark.parametrize(
    "losses", [[], [(1, 0.25)], [(1, float("nan")), (2, 0.5)], [(1, None), (2, 0.5)]]
)
def test_the_loss_chart_has_numeric_axes_whatever_the_first_frame_holds(losses):
    """gradio fixes a chart's axis types from the first frame it draws: an empty frame or an
    object column would make every step and loss value a tick label for the whole run."""
    from ti_gui import charts

    frame = charts.loss_frame(losses, {"validation": []})
    plotted = charts.loss_plot().postprocess(frame)
    assert plotted.datatypes == {"step": "quantitative", "loss": "quantitative", "line": "nominal"}
    # Every line is named from the first frame on (the page keeps the first frame's colours).
    assert {row[2] for row in plotted.data} == {"raw", "smoothed", "validation"}
    drawn = [row for row in plotted.data if row[1] is not None]
    assert len(drawn) == 2 * sum(loss is not None and loss == loss for _, loss in losses)


def test_the_loss_chart_layout_is_sent_only_when_it_changes():
    from ti_gui import charts

    first, layout = charts.loss_update([], 0)
    assert first["x_lim"] == [0, None] and first["colors_in_legend"] == ["raw", "smoothed"]
    same, _ = charts.loss_update([(1, 0.3)], 0, drawn=layout)
    assert set(same) == {"value", "__type__"}  # only the data: the page keeps its chart
    steps_known, layout = charts.loss_update([(1, 0.3)], 200, drawn=layout)
    assert steps_known["x_lim"] == [0, 200]
    validation, _ = charts.loss_update([(1, 0.3)], 200, {"validation": [(1, 0.2)]}, layout)
    assert validation["colors_in_legend"] == ["raw", "smoothed", "validation"]
    assert validation["color_map"]["validation"] != validation["color_map"]["smoothed"]


def test_the_run_bar_and_title_say_how_far_the_run_is(tmp_path):
    from ti_gui.run_bar import bar_markdown, page_title
    from ti_gui.supervisor import RunState

    (tmp_path / "events.jsonl").write_text(
        json.dumps({"type": "status", "phase": "training"})
        + "\n"
        + json.dumps(
            {"type": "step", "step": 42, "total_steps": 100, "loss": 0.1, "it_s": 3.5, "eta_s": 17}
        )
        + "\n"
    )
    state = RunState(tmp_path)
    state.refresh()
    bar = bar_markdown(state, live=True, exit_code=None)
    assert "step 42 / 100 (42%)" in bar and "3.50 it/s" in bar and "ETA 0:17" in bar
    assert "training" in bar
    assert page_title(state, live=True, exit_code=None, title="TI") == "[42%] TI"
    assert page_title(None, live=False, exit_code=None, title="TI") == "TI"
    assert bar_markdown(None, live=False, exit_code=None) == "No run yet"


def test_the_insight_line_and_health_charts_read_the_run_folder(tmp_path):
    from ti_core.run_folder.writer import RunFolder
    from ti_gui import charts, run_view
    from ti_gui.supervisor import RunState

    final = tmp_path / "toy.safetensors"
    final.write_bytes(b"x")
    with RunFolder(tmp_path) as run:
        run.status("loading")
        for step, norm in ((0, 0.1), (10, 0.9)):
            run.vectors(step=step, encoders={"text_encoder": [
                {"norm": norm, "drift": step / 100, "nearest": ["toy</w>"]}]},
                vocab_median_norm={"text_encoder": 0.2})  # fmt: skip
        run.validation(step=10, loss=0.5)
        run.hint(step=10, kind="norm_runaway", message="likely overtraining")
        run.suggestion(step=10, path=final, why="lowest validation loss")
    state = RunState(tmp_path)
    state.refresh()
    text = run_view.insight_markdown(state)
    assert "Norm running away" in text and "likely overtraining" in text
    assert "Suggested step to keep: 10" in text and "toy.safetensors" in text
    norms, drifts = charts.health_lines(state.latest.vectors)
    assert norms["norm (text_encoder)"] == [(0, 0.1), (10, 0.9)]
    assert norms["vocabulary median (text_encoder)"] == [(0, 0.2), (10, 0.2)]
    assert drifts["drift (text_encoder)"] == [(0, 0.0), (10, 0.1)]
    update, layout = charts.lines_update(norms, 20)
    assert update["value"]["step"].dtype == "float64" and layout[0] == 20


def test_saved_embeddings_lists_only_files_still_on_disk(tmp_path):
    from ti_core.run_folder.writer import RunFolder
    from ti_gui import run_view
    from ti_gui.supervisor import RunState

    kept, pruned = (
        tmp_path / "toy-step00000010.safetensors",
        tmp_path / "toy-step00000005.safetensors",
    )
    kept.write_bytes(b"x")
    with RunFolder(tmp_path) as run:
        run.checkpoint(step=5, path=pruned, format="kohya")  # deleted later by save_last_n_steps
        run.checkpoint(step=10, path=kept, format="kohya")
    state = RunState(tmp_path)
    state.refresh()
    text = run_view.checkpoints_markdown(state)
    assert kept.name in text and pruned.name not in text


def test_the_validation_line_waits_until_the_loss_spans_the_y_axis():
    from ti_gui import charts

    alone = charts.loss_frame([], {"validation": [(0, 1.1)]})
    assert alone["loss"].notna().sum() == 0  # a lone point would make a one-tick y-axis
    later = charts.loss_frame([(1, 1.0), (2, 1.2)], {"validation": [(0, 1.1)]})
    assert later[later["line"] == "validation"]["loss"].notna().sum() == 1
