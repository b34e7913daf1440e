"""A run's embeddings are a list after the config: two embeddings get their own token ids, their
own block of trainable rows, their own files, and the dataset doctor accepts either token.
(The options describe one today; this proves the list is honoured where it is taken.)"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ti_core.config.run_config import Config
from ti_core.data.doctor import check_datasets
from ti_core.data.spec import DatasetSpec, SubsetSpec
from ti_core.embeddings.files import read_embedding
from ti_core.embeddings.specs import EmbeddingSpec, embedding_specs
from ti_core.embeddings.tokens import add_embeddings, text_parts
from ti_core.models.loading import load_model
from ti_core.run_folder.writer import RunFolder
from ti_core.training.outputs import Outputs
from ti_core.training.setup import choose_precision, prepare_model


def test_the_current_options_describe_one_embedding():
    config = Config()
    config.token.token_string, config.token.num_vectors_per_token = "mychar4", 3
    config.saving.output_name = "my-char"
    (only,) = embedding_specs(config)
    assert (only.token_string, only.num_vectors, only.file_stem) == ("mychar4", 3, "my-char")
    config.token.num_vectors_per_token = 1  # "not set": a weights file may choose the count
    assert embedding_specs(config)[0].num_vectors is None


def test_two_embeddings_train_as_two_blocks_and_save_as_two_files(tmp_path):
    loaded = load_model("demo:sd1")
    tokenizers, encoders = text_parts(loaded.pipeline)
    embeddings = [
        EmbeddingSpec("firsttok", init_word="toy", num_vectors=2),
        EmbeddingSpec("secondtok", init_word="dog", num_vectors=3, output_name="second"),
    ]
    placeholders = add_embeddings(tokenizers, encoders, embeddings)
    assert [p.placeholder_ids[0] for p in placeholders] == [[49408, 49409], [49410, 49411, 49412]]

    config = Config()
    config.token.token_string = "firsttok"
    precision = choose_precision("no", torch.device("cpu"))
    model = prepare_model(loaded, embeddings, placeholders, tokenizers, encoders, config, precision)
    assert model.parameters[0].shape[0] == 5  # one block of rows per text encoder
    assert model.expand("a firsttok and a secondtok") == (
        "a firsttok firsttok1 and a secondtok secondtok1 secondtok2"
    )
    with torch.no_grad():
        model.parameters[0][model.rows(1)] += 1.0  # train only the second embedding's rows
    assert torch.equal(model.vectors(0)[0], placeholders[0].initial_vectors[0])
    assert torch.equal(model.vectors(1)[0], placeholders[1].initial_vectors[0] + 1.0)

    with RunFolder(tmp_path / "run") as run:
        outputs = Outputs(config, run, model, optimizer=None, lr_schedule=None, scaler=None)
        paths = outputs.save_embedding(step=7)
    assert [Path(path).name for path in paths] == ["firsttok.safetensors", "second.safetensors"]
    second = read_embedding(paths[1])
    assert second.num_vectors == 3
    assert torch.allclose(second.vectors[0], placeholders[1].initial_vectors[0] + 1.0)


def test_the_doctor_accepts_a_caption_with_any_of_the_tokens(tmp_path):
    folder = tmp_path / "10_things"
    folder.mkdir()
    for name, caption in (("a", "firsttok toy"), ("b", "secondtok dog"), ("c", "a cat")):
        Image.new("RGB", (64, 64)).save(folder / f"{name}.png")
        (folder / f"{name}.caption").write_text(caption)
    dataset = DatasetSpec(subsets=[SubsetSpec(image_dir=str(folder))], resolution=(64, 64))
    report = check_datasets([dataset], ["firsttok", "secondtok"])
    missing = [problem.path for problem in report.errors if problem.code == "missing_token"]
    assert [Path(path).name for path in missing] == ["c.png"]
    assert '"firsttok" or "secondtok"' in report.errors[0].message
