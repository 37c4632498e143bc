"""train_tokenizer: a sentencepiece model (BPE by default) trained on a bounded,
deterministic sample of the deduplicated documents.

Same documents and config -> the same tokenizer file: the sample is chosen by a hash of each
document id, written in that order, and sentencepiece trains single-threaded without
shuffling.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from formats.documents import doc_files
from formats.tokenizer import BOS, EOS, MODEL_FILE, PAD, UNK
from tasks.orchestration import stage_task
from tasks.stage import DocumentsInput, Progress, as_list, no_progress

VERSION = 1


class TokenizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_type: Literal["bpe", "unigram"] = "bpe"
    vocab_size: int = Field(4096, ge=64, le=1_000_000)
    sample_chars: int = Field(20_000_000, ge=1000, description="bound on the training sample")
    max_sentence_length: int = Field(16384, ge=256)
    character_coverage: float = Field(0.9995, gt=0, le=1)
    byte_fallback: bool = True
    split_digits: bool = True
    seed: int = 0


def sample_order(doc_id: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{doc_id}".encode()).hexdigest()


def write_sample(files: list[Path], cfg: TokenizerConfig, dest: Path) -> tuple[int, int]:
    """Documents in hash order, until sample_chars is reached; newlines kept as a symbol."""
    ids_texts = []
    for f in files:
        t = pq.read_table(f, columns=["id", "text"])
        ids_texts += zip(t.column("id").to_pylist(), t.column("text").to_pylist())
    ids_texts.sort(key=lambda x: sample_order(x[0], cfg.seed))
    chars = docs = 0
    with open(dest, "w", encoding="utf-8") as out:
        for _, text in ids_texts:
            if chars >= cfg.sample_chars:
                break
            for line in text.split("\n"):
                if line.strip():
                    out.write(line[: cfg.max_sentence_length] + "\n")
                    chars += len(line)
            docs += 1
    return docs, chars


def train_tokenizer(inputs: DocumentsInput, cfg: TokenizerConfig, out: Path, progress: Progress = no_progress) -> dict:
    import sentencepiece as spm

    files = [f for ds in as_list(inputs["documents"]) for f in doc_files(ds)]
    sample = out / ".sample.txt"
    docs, chars = write_sample(files, cfg, sample)
    if chars == 0:
        raise ValueError("train_tokenizer: the corpus is empty; no text to train a tokenizer on")
    progress(0, 1)
    model = io.BytesIO()  # no paths in the model file: same inputs, same bytes
    try:
        with open(sample, encoding="utf-8") as lines:
            spm.SentencePieceTrainer.train(
                sentence_iterator=(line.rstrip("\n") for line in lines),
                model_writer=model,
                model_type=cfg.model_type,
                vocab_size=cfg.vocab_size,
                character_coverage=cfg.character_coverage,
                byte_fallback=cfg.byte_fallback,
                split_digits=cfg.split_digits,
                max_sentence_length=cfg.max_sentence_length,
                pad_id=PAD,
                unk_id=UNK,
                bos_id=BOS,
                eos_id=EOS,
                pad_piece="<pad>",
                unk_piece="<unk>",
                bos_piece="<s>",
                eos_piece="</s>",
                num_threads=1,  # determinism
                shuffle_input_sentence=False,
                input_sentence_size=0,
                minloglevel=2,
                # exact round trip: decode(encode(text)) == text for the cleaned documents
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                user_defined_symbols=["\n"],
            )
    except RuntimeError as e:
        if "Vocabulary size" in str(e) or "vocab_size" in str(e):
            raise ValueError(
                f"train_tokenizer: vocab_size {cfg.vocab_size} is larger than the text supports "
                f"({chars} characters); lower tokenizer.vocab_size. sentencepiece said: {e}"
            ) from None
        raise
    finally:
        sample.unlink(missing_ok=True)
    (out / MODEL_FILE).write_bytes(model.getvalue())
    progress(1, 1)
    sp = spm.SentencePieceProcessor(model_file=str(out / MODEL_FILE))
    return {
        "documents_sampled": docs,
        "characters_sampled": chars,
        "vocab_size": sp.get_piece_size(),
        "model_type": cfg.model_type,
    }


train_tokenizer_task = stage_task(train_tokenizer)
