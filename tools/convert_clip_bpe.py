"""Build the vendored CLIP tokenizer (ti_core/assets/tokenizer) from OpenAI's BPE merges file.

The source is the MIT-licensed `bpe_simple_vocab_16e6.txt.gz` shipped inside the
`open-clip-torch` wheel on PyPI. Run once by a maintainer; the output is committed:

    pip download --no-deps open-clip-torch==3.3.0 -d /tmp/oc
    python tools/convert_clip_bpe.py /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl

The id layout is OpenAI's (and Hugging Face's `openai/clip-vit-large-patch14`):
256 byte symbols, the same 256 with an end-of-word mark, 48,894 merges, then
<|startoftext|> = 49406 and <|endoftext|> = 49407: 49,408 entries.
"""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "ti_core" / "assets" / "tokenizer"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable character map (avoids whitespace/control chars)."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    byte_values, chars = printable[:], printable[:]
    extra = 0
    for b in range(256):
        if b not in byte_values:
            byte_values.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, (chr(c) for c in chars), strict=True))


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        merges_text = gzip.decompress(zf.read(BPE_MEMBER)).decode("utf-8")
        license_text = next(
            zf.read(name).decode("utf-8") for name in zf.namelist() if name.endswith("LICENSE")
        )
    merges = merges_text.split("\n")[1 : NUM_MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(vocab_list)}
    assert len(vocab) == 49408, len(vocab)

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (OUT / "LICENSE").write_text(
        "vocab.json and merges.txt are converted by tools/convert_clip_bpe.py from\n"
        "bpe_simple_vocab_16e6.txt.gz (OpenAI CLIP, as shipped in open-clip-torch),\n"
        "under the following licence:\n\n" + license_text,
        encoding="utf-8",
    )
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    config = {
        **special,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer",
    }
    (OUT / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
