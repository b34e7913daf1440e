"""Embedding files we write: diffusers' own loader puts the saved vectors in the text encoder,
A1111's safe-unpickler rules accept our pickles, our reader gets the same vectors back, and
converting between formats keeps them."""

from __future__ import annotations

import io
import pickle
import re
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ti_core.embeddings.files import read_embedding
from ti_core.embeddings.writers import (
    convert_embedding,
    read_with_second_encoder,
    run_model_spec,
    save_embedding,
    torch_2_1_layout,
)
from ti_core.errors import TiError
from ti_core.models.loading import load_model

# AUTOMATIC1111 v1.10, modules/safe.py: the zip entries and pickle globals its loader allows.
A1111_ZIP_NAMES = re.compile(
    r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$"
)
A1111_DATA_PKL = re.compile(r"^([^/]+)/data\.pkl$")
A1111_GLOBALS = {("collections", "OrderedDict"), ("__builtin__", "set")}
A1111_GLOBALS |= {
    ("torch._utils", name)
    for name in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_device_tensor_from_numpy")
}
A1111_GLOBALS |= {
    ("torch", name)
    for name in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage")
    + ("ByteStorage", "float32", "BFloat16Storage")
}
A1111_GLOBALS |= {("torch.nn.modules.container", "ParameterDict")}


class A1111Unpickler(pickle.Unpickler):
    """A1111's RestrictedUnpickler: storages stay empty, any other global is refused."""

    def persistent_load(self, saved_id):
        assert saved_id[0] == "storage"
        return torch.storage.TypedStorage(_internal=True)

    def find_class(self, module, name):
        if (module, name) in A1111_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}/{name}' is forbidden")


def a1111_check_pt(path: Path) -> None:
    """What A1111's check_pt does before it loads a .pt embedding; raises where A1111 would."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not A1111_ZIP_NAMES.match(name):
                raise ValueError(f"bad file inside {path}: {name}")
        (data_pkl,) = [name for name in archive.namelist() if A1111_DATA_PKL.match(name)]
        with archive.open(data_pkl) as file:
            A1111Unpickler(file).load()


@pytest.fixture(scope="module")
def sd1(demo_cache):
    return load_model("demo:sd1").pipeline


@pytest.fixture(scope="module")
def sdxl(demo_cache):
    return load_model("demo:sdxl").pipeline


def _vectors(*widths: int, count: int = 3, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(count, width, generator=generator) * 0.02 for width in widths]


def _landed(pipeline_tokenizer, encoder, token: str, count: int) -> torch.Tensor:
    """The rows diffusers put in the table for token, token_1, ... (its multi-vector names)."""
    names = [token] + [f"{token}_{index}" for index in range(1, count)]
    ids = pipeline_tokenizer.convert_tokens_to_ids(names)
    return encoder.get_input_embeddings().weight.detach()[ids]


SD1_CASES = [
    ("kohya", "safetensors", ".safetensors"),
    ("kohya", "pt", ".pt"),
    ("a1111", "safetensors", ".pt"),  # A1111's format is a .pt whatever the container asked
    ("diffusers", "safetensors", ".safetensors"),
    ("diffusers", "pt", ".pt"),
]


@pytest.mark.parametrize(("file_format", "container", "suffix"), SD1_CASES)
def test_sd1_file_loads_in_diffusers_and_reads_back(sd1, tmp_path, file_format, container, suffix):
    (vectors,) = _vectors(32)
    token = f"sdone{file_format}{container}"
    (path,) = save_embedding(
        tmp_path / "mychar", [vectors], token_string=token, format=file_format,
        save_model_as=container, step=12,
    )  # fmt: skip
    assert path == tmp_path / f"mychar{suffix}"
    sd1.load_textual_inversion(str(path), token=token)
    assert torch.equal(_landed(sd1.tokenizer, sd1.text_encoder, token, 3), vectors)
    back = read_embedding(path)
    assert back.name == "mychar" and len(back.vectors) == 1
    assert torch.equal(back.vectors[0], vectors)
    if suffix == ".pt":
        a1111_check_pt(path)
        assert torch.load(path, weights_only=True)  # what diffusers and sd-scripts call
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


@pytest.mark.parametrize("file_format", ["kohya", "a1111", "diffusers"])
def test_sdxl_file_loads_per_encoder_in_diffusers_and_reads_back(sdxl, tmp_path, file_format):
    clip_l, clip_g = _vectors(32, 64, count=2, seed=1)
    token = f"sdxl{file_format}"
    paths = save_embedding(tmp_path / "mychar", [clip_l, clip_g], token_string=token,
                           format=file_format)  # fmt: skip
    encoders = [(sdxl.tokenizer, sdxl.text_encoder), (sdxl.tokenizer_2, sdxl.text_encoder_2)]
    if file_format == "diffusers":
        assert paths == [tmp_path / "mychar.safetensors", tmp_path / "mychar_2.safetensors"]
        sources = [str(path) for path in paths]
        back, read_from = read_with_second_encoder(paths[1])
        assert read_from == paths and back.name == "mychar" and back.token == token
    else:
        assert paths == [tmp_path / "mychar.safetensors"]
        state = load_file(paths[0])
        assert set(state) == {"clip_l", "clip_g"}
        sources = [state["clip_l"], state["clip_g"]]  # FORMATS.md item 6: once per encoder
        back = read_embedding(paths[0])
    for source, (tokenizer, encoder), saved in zip(
        sources, encoders, [clip_l, clip_g], strict=True
    ):
        sdxl.load_textual_inversion(source, token=token, tokenizer=tokenizer, text_encoder=encoder)
        assert torch.equal(_landed(tokenizer, encoder, token, 2), saved)
    assert back.is_sdxl and torch.equal(back.vectors[0], clip_l)
    assert torch.equal(back.vectors[1], clip_g)


def test_a1111_pt_has_a1111s_fields_and_passes_its_safe_unpickler(tmp_path):
    (vectors,) = _vectors(768, count=2)
    (path,) = save_embedding(
        tmp_path / "mychar-500", [vectors], token_string="mychar", format="a1111",
        save_precision="fp16", step=500, base_model_name="v1-5-pruned",
        base_model_hash="6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    )  # fmt: skip
    a1111_check_pt(path)
    data = torch.load(path, weights_only=True)
    assert data["string_to_token"] == {"*": 265}
    assert data["string_to_param"]["*"].dtype == torch.float32  # as A1111 writes, whatever asked
    assert torch.equal(data["string_to_param"]["*"], vectors.half().float())
    assert (data["name"], data["step"]) == ("mychar-500", 500)
    assert (data["sd_checkpoint"], data["sd_checkpoint_name"]) == ("6ce0161689", "v1-5-pruned")


def test_a1111_check_refuses_what_torch_saves_by_itself(tmp_path):
    """The check above can fail: a plain torch.save file of this torch is what A1111 refuses."""
    buffer = io.BytesIO()
    torch.save({"emb_params": torch.zeros(1, 4)}, buffer)
    names = zipfile.ZipFile(buffer).namelist()
    if all(A1111_ZIP_NAMES.match(name) for name in names):
        pytest.skip(f"torch {torch.__version__} writes only records A1111 allows")
    plain = tmp_path / "plain.pt"
    plain.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="bad file inside"):
        a1111_check_pt(plain)


def test_torch_2_1_layout_keeps_records_order_and_alignment():
    buffer = io.BytesIO()
    torch.save({"a": torch.arange(10.0), "b": torch.ones(3, 5).half(), "name": "x"}, buffer)
    original = zipfile.ZipFile(buffer)
    rewritten_bytes = torch_2_1_layout(buffer.getvalue())
    rewritten = zipfile.ZipFile(io.BytesIO(rewritten_bytes))
    kept = [n for n in original.namelist() if not n.endswith((".format_version", "_alignment"))]
    assert rewritten.namelist() == kept
    for info in rewritten.infolist():
        assert rewritten.read(info) == original.read(info.filename)
        name_length, extra_length = struct.unpack_from(
            "<HH", rewritten_bytes, info.header_offset + 26
        )
        assert (info.header_offset + 30 + name_length + extra_length) % 64 == 0
    loaded = torch.load(io.BytesIO(rewritten_bytes), weights_only=True)
    assert torch.equal(loaded["a"], torch.arange(10.0)) and loaded["b"].dtype == torch.float16


def test_safetensors_header_carries_model_spec_and_our_keys(tmp_path):
    (path,) = save_embedding(
        tmp_path / "mychar", _vectors(64), token_string="mychar", step=300, family="sd2",
        v_parameterization=True, base_model_name="demo:sd2", base_model_hash="abc123",
        metadata={"ti_trainer.init_word": "girl", "modelspec.title": "My char"},
    )  # fmt: skip
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    assert header["modelspec.architecture"] == "stable-diffusion-v2-768-v/textual-inversion"
    assert header["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert (header["modelspec.resolution"], header["modelspec.prediction_type"]) == ("768x768", "v")
    assert header["modelspec.sai_model_spec"] and re.match(
        r"\d{4}-\d\d-\d\dT", header["modelspec.date"]
    )
    assert header["modelspec.title"] == "My char"  # the caller's metadata wins
    assert header["ti_trainer.token_string"] == "mychar" and header["ti_trainer.step"] == "300"
    assert header["ti_trainer.num_vectors_per_token"] == "3"
    assert (
        header["ti_trainer.base_model"] == "demo:sd2" and header["ti_trainer.init_word"] == "girl"
    )
    (xl,) = save_embedding(tmp_path / "xl", _vectors(768, 1280), token_string="xl")
    with safe_open(str(xl), framework="pt") as handle:
        header = handle.metadata()
    assert header["modelspec.architecture"] == "stable-diffusion-xl-v1-base/textual-inversion"
    assert header["modelspec.resolution"] == "1024x1024"


def test_run_model_spec_takes_the_metadata_options_as_sd_scripts_does(tmp_path):
    from ti_core.config.run_config import Config

    config = Config()
    thumbnail = tmp_path / "thumb.png"
    thumbnail.write_bytes(b"\x89PNG-not-really")
    saving = config.saving
    saving.metadata_title, saving.metadata_thumbnail = "My char", str(thumbnail)
    saving.metadata_is_negative_embedding, config.model.clip_skip = "true", 2
    (path,) = save_embedding(
        tmp_path / "mychar-step00000010", _vectors(768), token_string="mychar",
        metadata=run_model_spec(config, "mychar"),
    )  # fmt: skip
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    assert header["modelspec.title"] == "My char"
    assert header["modelspec.trigger_phrase"] == "mychar-step00000010"  # the file's trigger word
    assert header["modelspec.thumbnail"] == "data:image/png;base64,iVBORy1ub3QtcmVhbGx5"
    assert header["modelspec.is_negative_embedding"] == "true"
    assert header["modelspec.encoder_layer"] == "2"
    assert header["modelspec.resolution"] == "512x512"  # the default resolution: the family's
    assert "modelspec.author" not in header  # unset options are left out
    saving.metadata_thumbnail = str(tmp_path / "missing.png")
    assert "modelspec.thumbnail" not in run_model_spec(config, "mychar")


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_precision_and_one_vector_stays_two_dimensional(tmp_path, precision, dtype):
    vector = torch.randn(768)  # one vector given 1-D is still saved (1, D)
    (path,) = save_embedding(
        tmp_path / "one", [vector], token_string="one", save_precision=precision
    )
    tensor = load_file(path)["emb_params"]
    assert tensor.dtype == dtype and tensor.shape == (1, 768)
    assert torch.equal(tensor[0], vector.to(dtype))
    (pickled,) = save_embedding(tmp_path / "one.pt", [vector], token_string="one",
                                save_precision=precision)  # fmt: skip
    a1111_check_pt(pickled)  # A1111 v1.10 allows HalfStorage and BFloat16Storage
    assert torch.equal(torch.load(pickled, weights_only=True)["emb_params"], tensor)


def test_saving_rows_of_the_table_does_not_save_the_table(tmp_path):
    table = torch.randn(49408, 32)
    (path,) = save_embedding(tmp_path / "rows", [table[49400:49403]], token_string="rows",
                             save_model_as="pt")  # fmt: skip
    assert path.stat().st_size < 4096  # the whole table would be 6 MB


def test_convert_round_trip_keeps_vectors_name_and_fields(tmp_path):
    (vectors,) = _vectors(768)
    (kohya,) = save_embedding(
        tmp_path / "mychar", [vectors], token_string="mychar", step=40, base_model_name="base",
        base_model_hash="0123456789abcdef",
    )  # fmt: skip
    (a1111,) = convert_embedding(kohya, "a1111")
    assert a1111 == tmp_path / "mychar.pt"
    data = torch.load(a1111, weights_only=True)
    assert (data["step"], data["sd_checkpoint"], data["sd_checkpoint_name"]) == (
        40,
        "0123456789",
        "base",
    )
    (diffusers,) = convert_embedding(a1111, "diffusers", tmp_path / "out")
    assert diffusers == tmp_path / "out.safetensors"
    assert list(load_file(diffusers)) == ["mychar"]  # the trigger name becomes the token
    (again,) = convert_embedding(diffusers, "kohya", tmp_path / "final" / "mychar.safetensors")
    back = read_embedding(again)
    assert back.format == "kohya" and back.name == "mychar"
    assert torch.equal(back.vectors[0], vectors) and back.metadata["ti_trainer.step"] == "40"


def test_convert_sdxl_to_diffusers_pair_and_back(tmp_path):
    clip_l, clip_g = _vectors(768, 1280, count=2)
    (kohya,) = save_embedding(tmp_path / "xl", [clip_l, clip_g], token_string="xl",
                              save_precision="fp16")  # fmt: skip
    pair = convert_embedding(kohya, "diffusers", f"{tmp_path}/diffusers/")
    assert pair == [
        tmp_path / "diffusers" / name for name in ("xl.safetensors", "xl_2.safetensors")
    ]
    (back,) = convert_embedding(pair[0], "kohya", tmp_path / "kohya.pt")
    data = torch.load(back, weights_only=True)
    assert torch.equal(data["clip_l"], clip_l.half()) and torch.equal(data["clip_g"], clip_g.half())


def test_refusals_are_user_errors(tmp_path):
    (kohya,) = save_embedding(tmp_path / "mychar", _vectors(768), token_string="mychar")
    with pytest.raises(TiError, match="overwrite the input"):
        convert_embedding(kohya, "diffusers")
    with pytest.raises(TiError, match="unknown embedding format"):
        save_embedding(tmp_path / "x", _vectors(768), token_string="x", format="comfy")
    with pytest.raises(TiError, match="CLIP-L but"):
        save_embedding(
            tmp_path / "x", [torch.zeros(2, 768), torch.zeros(3, 1280)], token_string="x"
        )
    with pytest.raises(TiError, match="cannot save a"):
        save_embedding(tmp_path / "x", [torch.zeros(1, 2, 768)], token_string="x")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mychar.safetensors"]
