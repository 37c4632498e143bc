"""A run's checkpoints and weights on disk.

checkpoints/step-NNNNNN/: everything an exact resume needs (the strategy's state: weights,
optimizer, RNG; trainer_state.json: step, best metric, the model config and objective it was
written for), each complete before it is renamed into place, the last `keep_checkpoints` kept,
and copied to the object store when the run's output is mirrored there (model/mirror.py).
best/ and final/: full weights as safetensors with model_config.json, gathered from every rank.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from model.config import ModelConfig
from model.parallel import full_state_dict


class Checkpoints:
    """step-NNNNNN/ directories, each complete before it is renamed into place."""

    def __init__(self, out: Path, strategy, keep: int):
        from model.mirror import mirror_url

        self.out = out
        self.dir = out / "checkpoints"
        self.strategy = strategy
        self.acc = strategy.acc
        self.keep = keep
        self.mirror = mirror_url(out)  # the object store the run's checkpoints are copied to (model/mirror.py)

    def latest(self) -> Path | None:
        done = sorted(p for p in self.dir.glob("step-*") if (p / "trainer_state.json").exists())
        if done or self.mirror is None:
            return done[-1] if done else None
        # none here: a run killed on another node may have left some on the object store
        if self.acc.is_local_main_process:
            from model.mirror import pull_latest

            self.dir.mkdir(parents=True, exist_ok=True)
            pull_latest(self.mirror, self.dir, self.out)
        self.acc.wait_for_everyone()
        done = sorted(p for p in self.dir.glob("step-*") if (p / "trainer_state.json").exists())
        return done[-1] if done else None

    def save(self, step: int, state: dict, optimizer) -> None:
        acc = self.acc
        final = self.dir / f"step-{step:06d}"
        tmp = self.dir / f".step-{step:06d}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        self.strategy.save_state(tmp, optimizer)
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps(state))
            os.replace(tmp, final)
            for old in sorted(p for p in self.dir.glob("step-*") if p.is_dir())[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            if self.mirror is not None:
                from model.mirror import push

                push(final, self.out / "metrics.jsonl", self.mirror, self.keep)
        acc.wait_for_everyone()

    def load(self, path: Path, optimizer, model_cfg: ModelConfig, signature: dict) -> dict:
        state = json.loads((path / "trainer_state.json").read_text())
        if state.get("model_config") != model_cfg.model_dump(mode="json"):
            raise ValueError(
                f"checkpoint {path} was written for another model config; "
                f"it has {state.get('model_config')}, this run has {model_cfg.model_dump(mode='json')}. "
                "Start a new run directory or restore the config."
            )
        if state.get("signature", {"objective": "lm"}) != signature:
            raise ValueError(f"checkpoint {path} was written for another objective: {state.get('signature')}, this run is {signature}")
        self.strategy.load_state(path, optimizer)
        return state


def save_weights(model, dest: Path, mc: ModelConfig, main: bool, extra: dict | None = None) -> None:
    """Full weights as safetensors (every rank takes part in gathering; rank 0 writes)."""
    from safetensors.torch import save_file

    weights = full_state_dict(model)
    if not main:
        return
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tied = {k for k in weights if k.endswith("lm_head.weight")} if mc.tie_embeddings else set()
    save_file({k: v.contiguous() for k, v in weights.items() if k not in tied}, str(tmp / "model.safetensors"))
    (tmp / "model_config.json").write_text(mc.model_dump_json(indent=2))
    if extra:
        (tmp / "info.json").write_text(json.dumps(extra, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
