"""The tokenizer dataset: one sentencepiece model file, `tokenizer.model`, whose first four ids
are fixed (train_tokenizer sets them): every token shard, example file and exported model
relies on these ids, so they are defined here once.
"""

from __future__ import annotations

from pathlib import Path

from formats.manifest import load_manifest

PAD, UNK, BOS, EOS = 0, 1, 2, 3
MODEL_FILE = "tokenizer.model"


def tokenizer_path(dataset: str | Path) -> Path:
    return Path(dataset) / MODEL_FILE


def load_tokenizer(dataset: str | Path):
    """The sentencepiece processor of a (local) tokenizer dataset; a clear error for another dataset."""
    import sentencepiece as spm

    if load_manifest(dataset).stage != "train_tokenizer":
        raise ValueError(f"{dataset} is not a tokenizer dataset")
    return spm.SentencePieceProcessor(model_file=str(tokenizer_path(dataset)))
