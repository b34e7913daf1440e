"""What an embedding file holds: format, trigger, vectors per text encoder and their norms; with a
model, how those norms compare with the vocabulary's and which real tokens each vector is near.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TOP_TOKENS = 5
ENCODER_NAMES = {1: ["text_encoder"], 2: ["clip_l", "clip_g"]}
TRAINED_ON_KEYS = {
    "architecture": "modelspec.architecture",
    "base_model": "ti_trainer.base_model",
    "base_model_hash": "ti_trainer.base_model_hash",
    "a1111_checkpoint_name": "sd_checkpoint_name",
    "a1111_checkpoint_hash": "sd_checkpoint",
    "step": "ti_trainer.step",
}
MODEL_SPEC_PREFIX = "modelspec."
LONG_VALUE = 120  # a thumbnail's data URL is shown by its size, not printed


def model_spec(metadata: dict[str, str]) -> dict[str, str]:
    """The file's SAI model-spec keys (title, architecture, trigger phrase, ...), prefix off."""
    spec = {}
    for key, value in metadata.items():
        if key.startswith(MODEL_SPEC_PREFIX) and value not in ("", "None"):
            shown = value if len(value) <= LONG_VALUE else f"({len(value)} characters)"
            spec[key.removeprefix(MODEL_SPEC_PREFIX)] = shown
    return spec


def inspect_embedding(
    path: str | Path, vocabularies: list[tuple[Any, Any]] | None = None, model: str = ""
) -> dict[str, Any]:
    """A report (plain JSON types) on one embedding file. `vocabularies` is one (tokenizer,
    vocabulary table tensor) pair per text encoder of a model to compare with."""
    import torch

    from ti_core.embeddings.writers import read_with_second_encoder

    embedding, _ = read_with_second_encoder(path)
    names = ENCODER_NAMES.get(len(embedding.vectors), ["text_encoder"])
    trained_on = {
        key: embedding.metadata[field]
        for key, field in TRAINED_ON_KEYS.items()
        if embedding.metadata.get(field) not in (None, "", "None")
    }
    report: dict[str, Any] = {
        "path": str(path),
        "format": embedding.format,
        "trigger": embedding.name,
        "file_token": embedding.token,
        "num_vectors": embedding.num_vectors,
        "trained_on": trained_on,
        "model_spec": model_spec(embedding.metadata),
        "encoders": [
            {
                "name": name,
                "vectors": int(vectors.shape[0]),
                "dims": int(vectors.shape[1]),
                "dtype": str(vectors.dtype).removeprefix("torch."),
                "norms": [round(float(n), 4) for n in vectors.float().norm(dim=1)],
            }
            for name, vectors in zip(names, embedding.vectors, strict=False)
        ],
    }
    if vocabularies is None:
        return report
    report["model"] = model
    widths = [int(table.shape[1]) for _, table in vocabularies]
    if widths != embedding.widths:
        report["fits_model"] = False
        report["model_problem"] = (
            f"the file's vectors are {' + '.join(map(str, embedding.widths))} wide, the model's "
            f"text encoders take {' + '.join(map(str, widths))}: they do not fit this model."
        )
        return report
    report["fits_model"] = True
    for entry, vectors, (tokenizer, table) in zip(
        report["encoders"], embedding.vectors, vocabularies, strict=True
    ):
        table = table.detach().float()
        entry["vocabulary_median_norm"] = round(float(table.norm(dim=1).median()), 4)
        similarity = torch.nn.functional.normalize(vectors.float(), dim=1) @ (
            torch.nn.functional.normalize(table, dim=1).T
        )
        top = similarity.topk(min(TOP_TOKENS, table.shape[0]), dim=1)
        entry["nearest_tokens"] = [
            [
                {"token": _readable(tokenizer, int(i)), "id": int(i), "cosine": round(float(c), 4)}
                for c, i in zip(scores, ids, strict=True)
            ]
            for scores, ids in zip(top.values, top.indices, strict=True)
        ]
    return report


def inspect_file(path: str | Path, model: str = "") -> dict[str, Any]:
    """inspect_embedding, loading `model` (folder, file or demo:FAMILY) when one is named."""
    if not model:
        return inspect_embedding(path)
    from ti_core.embeddings.text_encoding import TrainableTokens
    from ti_core.embeddings.tokens import text_parts
    from ti_core.models.loading import load_model

    loaded = load_model(model)
    tokenizers, encoders = text_parts(loaded.pipeline)
    tables = []
    for encoder in encoders:
        lookup = encoder.get_input_embeddings()
        tables.append((lookup.table if isinstance(lookup, TrainableTokens) else lookup).weight)
    return inspect_embedding(path, list(zip(tokenizers, tables, strict=True)), loaded.describe())


def _readable(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id]).strip() or tokenizer.convert_ids_to_tokens(token_id)


def format_report(report: dict[str, Any]) -> str:
    """The report as lines for a terminal."""
    lines = [
        f"{report['path']}: {report['format']} embedding, trigger word {report['trigger']!r}"
        + (f" (the file names the token {report['file_token']!r})" if report["file_token"] else ""),
        f"  {report['num_vectors']} vector(s) per text encoder",
    ]
    if report["trained_on"]:
        trained = ", ".join(f"{key} {value}" for key, value in report["trained_on"].items())
        lines.append(f"  trained on: {trained}")
    else:
        lines.append("  trained on: the file does not say")
    if report.get("model_spec"):
        lines.append("  model spec:")
        lines += [f"    {key}: {value}" for key, value in report["model_spec"].items()]
    if "model" in report:
        lines.append(f"  compared with {report['model']}")
        if not report["fits_model"]:
            lines.append(f"  does not fit: {report['model_problem']}")
    for entry in report["encoders"]:
        typical = entry.get("vocabulary_median_norm")
        lines.append(
            f"  {entry['name']}: {entry['vectors']} x {entry['dims']} ({entry['dtype']})"
            + (f"; vocabulary median norm {typical}" if typical is not None else "")
        )
        for index, norm in enumerate(entry["norms"]):
            line = f"    vector {index}: norm {norm}"
            if "nearest_tokens" in entry:
                near = ", ".join(
                    f"{t['token']!r} {t['cosine']:.2f}" for t in entry["nearest_tokens"][index]
                )
                line += f"; nearest: {near}"
            lines.append(line)
    return "\n".join(lines)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False)
