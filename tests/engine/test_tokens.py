"""Placeholder tokens on the tiny demo models: ids, starting vectors, refusals, caption chunks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ti_core.embeddings.files import read_embedding
from ti_core.embeddings.tokens import add_placeholders, text_parts, token_strings, tokenize_captions
from ti_core.errors import ConfigError, TiError, TokenError
from ti_core.models.demo import demo_dir
from ti_core.models.loading import load_model
from ti_core.models.tokenizer import load_tokenizer

TOKEN = "mychar4"
FIRST_ID = 49408


@pytest.fixture(scope="module")
def sd1(demo_cache):
    return load_model("demo:sd1").pipeline


@pytest.fixture(scope="module")
def sdxl(demo_cache):
    return load_model("demo:sdxl").pipeline


def _fresh(pipeline) -> tuple[list, list]:
    """New tokenizers (adding tokens changes them) with the pipeline's text encoders."""
    _, encoders = text_parts(pipeline)
    tokenizers = (
        [load_tokenizer()] if len(encoders) == 1 else [load_tokenizer(), load_tokenizer("!")]
    )
    return tokenizers, encoders


def _table(encoder) -> torch.Tensor:
    return encoder.get_input_embeddings().weight.detach()


def _ids(tokenizer, word: str) -> list[int]:
    return tokenizer.encode(word, add_special_tokens=False)


def test_token_strings_follow_sd_scripts():
    assert token_strings(TOKEN, 4) == ["mychar4", "mychar41", "mychar42", "mychar43"]
    assert token_strings(TOKEN, 1) == ["mychar4"]


def test_sd1_gets_four_new_ids_and_the_init_word_vectors(sd1):
    tokenizers, encoders = _fresh(sd1)
    table_before = _table(encoders[0]).clone()
    placeholders = add_placeholders(tokenizers, encoders, TOKEN, init_word="girl", num_vectors=4)
    assert placeholders.token_strings == token_strings(TOKEN, 4)
    assert placeholders.placeholder_ids == [[49408, 49409, 49410, 49411]]
    ids = tokenizers[0]("a mychar4 mychar41 mychar42 mychar43 photo").input_ids
    assert ids[2:6] == [49408, 49409, 49410, 49411]
    (vectors,) = placeholders.initial_vectors
    girl = _ids(tokenizers[0], "girl")
    assert len(girl) == 1 and vectors.dtype == torch.float32 and vectors.shape == (4, 32)
    assert torch.equal(vectors, table_before[girl * 4])
    # The table is neither resized nor changed, and the vectors are copies, not views of it.
    vectors.add_(1.0)
    assert torch.equal(_table(encoders[0]), table_before)
    assert placeholders.expand("a mychar4s photo") == "a mychar4 mychar41 mychar42 mychar43s photo"


def test_sdxl_adds_the_same_token_to_both_tokenizers(sdxl):
    tokenizers, encoders = text_parts(sdxl)  # the pipeline's own; other tests take fresh ones
    placeholders = add_placeholders(tokenizers, encoders, TOKEN, init_word="dog", num_vectors=2)
    assert placeholders.placeholder_ids == [[FIRST_ID, FIRST_ID + 1]] * 2
    assert [len(tokenizer) for tokenizer in tokenizers] == [FIRST_ID + 2] * 2
    assert [tuple(v.shape) for v in placeholders.initial_vectors] == [(2, 32), (2, 64)]
    dog = _ids(tokenizers[0], "dog")
    for vectors, encoder in zip(placeholders.initial_vectors, encoders, strict=True):
        assert torch.equal(vectors, _table(encoder)[dog * 2])
    assert tokenizers[1]("mychar41", padding="max_length").input_ids[:4] == [49406, 49409, 49407, 0]


def test_init_word_tokens_fill_the_vectors_in_turn(sd1):
    tokenizers, encoders = _fresh(sd1)
    red_dog = _ids(tokenizers[0], "red dog")
    assert len(red_dog) == 2
    placeholders = add_placeholders(tokenizers, encoders, TOKEN, init_word="red dog", num_vectors=5)
    expected = _table(encoders[0])[[red_dog[i % 2] for i in range(5)]]
    assert torch.equal(placeholders.initial_vectors[0], expected)


def test_no_init_word_draws_like_the_table_and_follows_the_seed(sd1):
    draws = []
    for seed in (7, 7, 8):
        tokenizers, encoders = _fresh(sd1)
        generator = torch.Generator().manual_seed(seed)
        draws.append(
            add_placeholders(tokenizers, encoders, TOKEN, num_vectors=300, generator=generator)
        )
    same, again, other = (d.initial_vectors[0] for d in draws)
    assert torch.equal(same, again) and not torch.equal(same, other)
    table = _table(sd1.text_encoder).float()
    assert same.shape == (300, 32)
    assert torch.all((same.mean(0) - table.mean(0)).abs() < 0.3 * table.std(0))
    assert torch.all((same.std(0) / table.std(0) - 1).abs() < 0.3)


@pytest.mark.parametrize(
    ("token_string", "message"),
    [
        ("cat", "already a token the tokenizer knows"),
        ("Cat", "already a token the tokenizer knows"),
        ("", "empty"),
        ("my char", "contains a space"),
        ("my\tchar", "contains a space"),
    ],
)
def test_unusable_token_strings_are_refused_and_change_nothing(sd1, token_string, message):
    tokenizers, encoders = _fresh(sd1)
    with pytest.raises(TokenError, match=message) as caught:
        add_placeholders(tokenizers, encoders, token_string, num_vectors=2)
    assert "made-up word" in str(caught.value)
    assert len(tokenizers[0]) == FIRST_ID


def test_adding_the_same_token_twice_is_refused(sd1):
    tokenizers, encoders = _fresh(sd1)
    add_placeholders(tokenizers, encoders, TOKEN, num_vectors=2)
    with pytest.raises(TokenError, match=r"'MYCHAR4' is already a token .* \(id 49408\)"):
        add_placeholders(tokenizers, encoders, "MYCHAR4", num_vectors=1)
    # mychar, mychar1, ... mychar4: the last is taken
    with pytest.raises(TokenError, match=r"'mychar4' is already in the tokenizer's vocabulary"):
        add_placeholders(tokenizers, encoders, "mychar", num_vectors=5)
    assert len(tokenizers[0]) == FIRST_ID + 2


def test_init_word_problems_are_explained(sd1):
    tokenizers, encoders = _fresh(sd1)
    with pytest.raises(TokenError, match=r"is 4 tokens .* num_vectors_per_token is 2"):
        add_placeholders(tokenizers, encoders, TOKEN, init_word="a big red dog", num_vectors=2)
    with pytest.raises(TokenError, match="has no tokens"):
        add_placeholders(tokenizers, encoders, TOKEN, init_word=" \n ", num_vectors=2)
    assert len(tokenizers[0]) == FIRST_ID


# --- starting from an embedding file, in every format we read ---------------------------------


def _vectors(count: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn((count, width), generator=torch.Generator().manual_seed(seed))


def _kohya_safetensors(path: Path, vectors: torch.Tensor) -> Path:
    save_file({"emb_params": vectors}, path / "kohya.safetensors", {"ss_title": "kohya"})
    return path / "kohya.safetensors"


def _kohya_pt(path: Path, vectors: torch.Tensor) -> Path:
    torch.save({"emb_params": vectors.half()}, path / "kohya.pt")  # --save_precision fp16
    return path / "kohya.pt"


def _a1111_pt(path: Path, vectors: torch.Tensor) -> Path:
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vectors},
        "name": "a1111",
        "step": 500,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "demo",
    }
    torch.save(data, path / "a1111.pt")
    return path / "a1111.pt"


def _original_ti_pt(path: Path, vectors: torch.Tensor) -> Path:
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(vectors.clone())})
    torch.save(
        {"string_to_token": {"*": torch.tensor(265)}, "string_to_param": params}, path / "ti.pt"
    )
    return path / "ti.pt"


def _a1111_safetensors(path: Path, vectors: torch.Tensor) -> Path:
    save_file({"*": vectors}, path / "a1111.safetensors")
    return path / "a1111.safetensors"


def _diffusers(path: Path, vectors: torch.Tensor) -> Path:
    save_file({"<my-toy>": vectors}, path / "learned_embeds.safetensors", {"format": "pt"})
    return path / "learned_embeds.safetensors"


def _diffusers_1d(path: Path, vectors: torch.Tensor) -> Path:
    torch.save({"<cat-toy>": vectors[0]}, path / "learned_embeds.bin")
    return path / "learned_embeds.bin"


WRITERS = [
    (_kohya_safetensors, "kohya", 3),
    (_kohya_pt, "kohya", 2),
    (_a1111_pt, "a1111", 3),
    (_original_ti_pt, "a1111", 2),
    (_a1111_safetensors, "a1111", 1),
    (_diffusers, "diffusers", 2),
    (_diffusers_1d, "diffusers-1d", 1),
]


@pytest.mark.parametrize(("write", "file_format", "count"), WRITERS)
def test_weights_in_every_format_start_the_vectors(sd1, tmp_path, write, file_format, count):
    vectors = _vectors(count, 32)
    if write is _kohya_pt:
        vectors = vectors.half().float()
    path = write(tmp_path, vectors)
    embedding = read_embedding(path)
    assert (embedding.format, embedding.name, embedding.num_vectors) == (
        file_format,
        path.stem,
        count,
    )
    tokenizers, encoders = _fresh(sd1)
    placeholders = add_placeholders(tokenizers, encoders, TOKEN, init_word="dog", weights=path)
    assert placeholders.num_vectors == count  # the file sets N
    assert placeholders.initial_vectors[0].dtype == torch.float32
    assert torch.equal(placeholders.initial_vectors[0], vectors)


def test_file_details_are_kept(tmp_path):
    a1111 = read_embedding(_a1111_pt(tmp_path, _vectors(1, 32)))
    assert a1111.metadata["step"] == "500" and a1111.metadata["sd_checkpoint"] == "0123456789"
    assert read_embedding(_diffusers(tmp_path, _vectors(2, 32))).token == "<my-toy>"
    assert read_embedding(_kohya_safetensors(tmp_path, _vectors(1, 32))).metadata == {
        "ss_title": "kohya"
    }


def test_sdxl_weights_start_both_encoders(sdxl, tmp_path):
    clip_l, clip_g = _vectors(3, 32, 1), _vectors(3, 64, 2)
    save_file({"clip_g": clip_g, "clip_l": clip_l}, tmp_path / "xl.safetensors")
    assert read_embedding(tmp_path / "xl.safetensors").format == "kohya-sdxl"
    tokenizers, encoders = _fresh(sdxl)
    placeholders = add_placeholders(
        tokenizers, encoders, TOKEN, weights=tmp_path / "xl.safetensors"
    )
    assert placeholders.placeholder_ids == [[49408, 49409, 49410]] * 2
    assert torch.equal(placeholders.initial_vectors[0], clip_l)
    assert torch.equal(placeholders.initial_vectors[1], clip_g)


def test_weights_that_do_not_fit_the_model_are_refused(sd1, sdxl, tmp_path):
    sd1_parts, sdxl_parts = _fresh(sd1), _fresh(sdxl)
    three = _kohya_safetensors(tmp_path, _vectors(3, 32))
    with pytest.raises(TokenError, match=r"holds 3 vectors, but num_vectors_per_token is 4"):
        add_placeholders(*sd1_parts, TOKEN, num_vectors=4, weights=three)
    assert add_placeholders(*sd1_parts, TOKEN, num_vectors=3, weights=three).num_vectors == 3
    wide = tmp_path / "wide.safetensors"
    save_file({"emb_params": _vectors(1, 64)}, wide)
    with pytest.raises(TokenError, match=r"vectors are 64 wide, but .* encoder is 32 wide"):
        add_placeholders(*_fresh(sd1), TOKEN, weights=wide)
    with pytest.raises(TokenError, match="an SD 1.x/2.x embedding, but the model is an SDXL"):
        add_placeholders(*sdxl_parts, TOKEN, weights=three)
    xl = tmp_path / "xl.safetensors"
    save_file({"clip_l": _vectors(1, 32), "clip_g": _vectors(1, 32)}, xl)
    with pytest.raises(TokenError, match="an SDXL embedding .* the model is an SD 1.x/2.x"):
        add_placeholders(*_fresh(sd1), TOKEN, weights=xl)
    with pytest.raises(TokenError, match="clip_g vectors are 32 wide, but .* is 64 wide"):
        add_placeholders(*sdxl_parts, TOKEN, weights=xl)
    assert [len(tokenizer) for tokenizer in sdxl_parts[0]] == [FIRST_ID] * 2


def test_files_that_are_not_embeddings_are_named(demo_cache, tmp_path):
    lora = tmp_path / "style_lora.safetensors"
    lora_keys = ["lora_unet_down_blocks_0.lora_down.weight", "lora_unet_down_blocks_0.alpha"]
    save_file({key: torch.zeros(2) for key in lora_keys}, lora)
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file at all")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    torch.save({"emb_params": _vectors(1, 4).int()}, tmp_path / "ints.pt")
    save_file({"clip_l": _vectors(1, 32)}, tmp_path / "half_xl.safetensors")
    cases = {
        lora: "this is a LoRA",
        demo_dir("sd1") / "model.safetensors": "this is a full model checkpoint",
        tmp_path / "garbage.pt": "not a readable embedding file",
        tmp_path / "garbage.safetensors": "not a readable .safetensors file",
        tmp_path / "missing.pt": "not found",
        tmp_path / "ints.pt": "not an embedding",
        tmp_path / "half_xl.safetensors": "needs both clip_l and clip_g",
    }
    for path, message in cases.items():
        with pytest.raises(TiError, match=message) as caught:
            read_embedding(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


# --- captions into 77-token chunks, as sd-scripts makes them -----------------------------------


def _sd_scripts_input_ids(tokenizer, text: str, max_length: int) -> torch.Tensor:
    """sd-scripts' TokenizeStrategy._get_input_ids (library/strategy_base.py), unweighted."""
    input_ids = tokenizer(
        text, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    ).input_ids
    if max_length > tokenizer.model_max_length:
        input_ids = input_ids.squeeze(0)
        chunks = []
        for i in range(
            1, max_length - tokenizer.model_max_length + 2, tokenizer.model_max_length - 2
        ):
            chunk = torch.cat(
                (
                    input_ids[0].unsqueeze(0),
                    input_ids[i : i + tokenizer.model_max_length - 2],
                    input_ids[-1].unsqueeze(0),
                )
            )
            if tokenizer.pad_token_id != tokenizer.eos_token_id:
                if chunk[-2] != tokenizer.eos_token_id and chunk[-2] != tokenizer.pad_token_id:
                    chunk[-1] = tokenizer.eos_token_id
                if chunk[1] == tokenizer.pad_token_id:
                    chunk[1] = tokenizer.eos_token_id
            chunks.append(chunk)
        input_ids = torch.stack(chunks)
    return input_ids


CAPTIONS = [
    "",
    "a photo of mychar4",
    "photo, " + "red " * 73,  # 75 tokens: fits
    "photo, " + "red " * 74,  # 76: cut at 75
    "wow! " * 37 + "end",  # 75, with "!", which is SD2's pad id
    "a cat, " * 40,  # 120
    "a cat " * 75,  # 150: at 225 the second chunk ends in text, so its pad becomes EOS
    "a cat " * 74 + "! !",  # 150, but ending in "!" (the pad id): that chunk gets no EOS
    "long " * 300,
]
LENGTHS = [0, 6, 75, 76, 75, 120, 150, 150, 300]


@pytest.mark.parametrize("max_token_length", [75, 150, 225])
@pytest.mark.parametrize("pad", [None, "!"])
def test_captions_are_chunked_like_sd_scripts(max_token_length, pad):
    tokenizer = load_tokenizer(pad)
    result = tokenize_captions(tokenizer, CAPTIONS, max_token_length)
    expected = torch.stack(
        [_sd_scripts_input_ids(tokenizer, text, max_token_length + 2) for text in CAPTIONS]
    )
    chunks = max_token_length // 75
    assert result.input_ids.shape == (len(CAPTIONS), chunks, 77)
    assert result.input_ids.dtype == torch.long
    assert torch.equal(result.input_ids, expected.reshape(len(CAPTIONS), chunks, 77))
    assert [len(_ids(tokenizer, text)) for text in CAPTIONS] == LENGTHS
    assert result.num_truncated == sum(length > max_token_length for length in LENGTHS)


def test_placeholders_tokenize_in_captions(sd1):
    tokenizers, encoders = _fresh(sd1)
    placeholders = add_placeholders(tokenizers, encoders, TOKEN, num_vectors=3)
    caption = placeholders.expand("a photo of mychar4, smiling")
    ids = tokenize_captions(tokenizers[0], [caption], 150).input_ids
    assert ids[0, 0, :8].tolist() == [49406, 320, 1125, 539, 49408, 49409, 49410, 267]
    assert ids[0, 1, :2].tolist() == [49406, 49407]


def test_unknown_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="max_token_length = 100"):
        tokenize_captions(load_tokenizer(), ["a cat"], 100)
