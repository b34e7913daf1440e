"""The embeddings a run trains, as a list: each with its token string, init word, vector count,
starting file and file name. Today's options ([token], output_name) describe one; everything
after the config (placeholders, trainable rows, file names, checks) takes the list, so a run
that trains several later is a config change, not a rewrite. Torch-free: the checks use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ti_core.config.run_config import Config


@dataclass(frozen=True)
class EmbeddingSpec:
    token_string: str
    init_word: str = ""
    num_vectors: int | None = None  # as the user set it; None: 1, or the weights file's count
    weights: str = ""
    output_name: str = ""  # the file name, which is the trigger word; token_string when empty

    @property
    def file_stem(self) -> str:
        return self.output_name or self.token_string


def embedding_specs(config: Config) -> list[EmbeddingSpec]:
    """The run's embeddings (one, from [token] and output_name)."""
    token = config.token
    count = token.num_vectors_per_token
    return [
        EmbeddingSpec(
            token_string=token.token_string,
            init_word=token.init_word,
            # left at 1 means "not set", so a --weights file can set the count (sd-scripts)
            num_vectors=None if count == 1 else count,
            weights=token.weights,
            output_name=config.saving.output_name,
        )
    ]
