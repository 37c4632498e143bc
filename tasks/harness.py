"""lm-evaluation-harness on the exported model, fully offline, on a task defined here from local
files: a multiple-choice cloze built from held-out (val) sentences — the last word of each
sentence against words that end other held-out sentences. Point the same harness at its
standard tasks (`--tasks hellaswag,...`) where their data is at hand.

lm-eval runs through `python -m tasks.harness`, which takes lm-eval's own run arguments: its CLI
always indexes every task it ships (about 14,000 YAML files, 5.7 s of the 11 s a run took here)
before it looks at `--include_path`; this entry indexes the shipped tasks only when a task it is
asked for is not in the include path.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

TASK = "llmill_cloze"
SENTENCE = re.compile(r"[A-Z][^.!?\n]{30,200}[.]")


def cloze_items(docs: list[str], items: int, choices: int, seed: int = 0, train_ngrams=None) -> list[dict]:
    """Items from the sentences of `docs`; with `train_ngrams` (tasks/contamination.py's index of
    the training text), only from sentences none of whose 13-grams occur in training text."""
    candidates = [c for c in cloze_candidates(docs) if train_ngrams is None or not contaminated(c, train_ngrams)]
    rng = random.Random(seed)
    rng.shuffle(candidates)
    vocabulary = sorted({w for _, w in candidates})
    if len(candidates) < items or len(vocabulary) < choices:
        raise ValueError(f"lm-eval: the val split holds {len(candidates)} usable sentences; need {items} (lower lm_eval.items)")
    out = []
    for context, answer in candidates[:items]:
        options = [answer] + rng.sample([w for w in vocabulary if w != answer], choices - 1)
        rng.shuffle(options)
        out.append({"context": context, "choices": options, "label": options.index(answer)})
    return out


def cloze_candidates(docs: list[str]) -> list[tuple[str, str]]:
    """(context, last word) of every usable held-out sentence."""
    candidates = []
    for doc in docs:
        for s in SENTENCE.findall(doc):
            words = s[:-1].split()
            if 6 <= len(words) <= 40 and re.fullmatch(r"[A-Za-z]{3,}", words[-1]):
                candidates.append((" ".join(words[:-1]), words[-1]))
    return candidates


def contaminated(candidate: tuple[str, str], train_ngrams) -> bool:
    from tasks.contamination import found, ngram_hashes

    return bool(found(ngram_hashes(" ".join(candidate)), train_ngrams).any())


def write_task(folder: Path, data_file: Path) -> None:
    spec = {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
    }
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def lm_eval_command(hf_dir: Path, out: Path, cfg) -> list[str]:
    # lm-eval splits --model_args on "," and "=" with no quoting: a comma in a path would add
    # arguments of the path's choosing (trust_remote_code=...)
    if any(c in str(hf_dir) for c in ",="):
        raise ValueError(f"lm-eval cannot be given a model path with ',' or '=' in it: {hf_dir}")
    return [sys.executable, "-m", "tasks.harness", "--model", "hf", "--model_args", f"pretrained={hf_dir},dtype=float32",
            "--tasks", TASK, "--include_path", str(out), "--batch_size", str(cfg.batch_size), "--device", "cpu",
            "--output_path", str(out / "results"), "--seed", "0"]


def lm_eval_env(base) -> dict:
    """The environment lm-eval runs in: this one without the credentials of the Prefect API and
    of object stores, which a third-party harness loading model code has no use for."""
    secret = ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
    return {k: v for k, v in base.items() if k not in secret}


def run_lm_eval(hf_dir: Path, shards: str, sp, cfg, out: Path) -> dict:
    from formats.token_shards import split_docs
    from tasks.contamination import ngram_index

    out.mkdir(parents=True, exist_ok=True)
    val_docs = split_docs(shards, "val", sp)
    train_ngrams = ngram_index(split_docs(shards, "train", sp))
    candidates = cloze_candidates(val_docs)
    before = sum(contaminated(c, train_ngrams) for c in candidates)
    items = cloze_items(val_docs, cfg.items, cfg.choices, train_ngrams=train_ngrams)
    after = sum(contaminated((i["context"], i["choices"][i["label"]]), train_ngrams) for i in items)
    data = out / "cloze.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    write_task(out, Path(out.name) / data.name)  # relative to the dataset, as the command is
    with tempfile.TemporaryDirectory(prefix="llmill-hf-home-") as hf_home:  # the datasets cache stays out of the report
        env = {**lm_eval_env(os.environ), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HOME": hf_home, "TOKENIZERS_PARALLELISM": "false"}
        # run where the record says: in the evaluate dataset's directory, its files by relative paths,
        # so the recorded command works once the dataset is committed (this directory is renamed then)
        proc = subprocess.run(lm_eval_command(hf_dir, Path(out.name), cfg), cwd=out.parent, env=env, capture_output=True, text=True,
                              timeout=1800)
    cmd = ["python", *lm_eval_command(hf_dir, Path(out.name), cfg)[1:]]
    if proc.returncode != 0:
        raise RuntimeError(f"lm-eval failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    results = sorted((out / "results").rglob("results_*.json"))
    if not results:
        raise RuntimeError(f"lm-eval wrote no results under {out / 'results'}:\n{proc.stdout[-2000:]}")
    task = json.loads(results[-1].read_text())["results"][TASK]
    return {"task": TASK, "items": len(items), "choices": cfg.choices, "chance": 1 / cfg.choices,
            "acc": task["acc,none"], "acc_norm": task.get("acc_norm,none"), "command": shlex.join(cmd),
            "command_cwd": "the evaluate dataset's directory (where eval.json is)",
            # sentences sharing a 13-gram with the training text: among all usable val sentences, and among the items drawn
            "contamination": {"candidate_sentences": len(candidates), "contaminated_candidates": before,
                              "rate_before": round(before / len(candidates), 4) if candidates else 0.0,
                              "rate_after": round(after / len(items), 4) if items else 0.0}}


def main(argv: list[str] | None = None) -> int:
    """`lm_eval run` for the arguments lm_eval_command passes, writing the same results files."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m tasks.harness", description="lm-eval's run on tasks from --include_path")
    p.add_argument("--model", default="hf")
    p.add_argument("--model_args", required=True)
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--include_path", required=True)
    p.add_argument("--batch_size", default="1")
    p.add_argument("--device", default=None)
    p.add_argument("--output_path", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    tasks = [t for t in args.tasks.split(",") if t]
    local = TaskManager(include_path=args.include_path, include_defaults=False)
    shipped = any(t not in local.all_tasks for t in tasks)
    manager = TaskManager(include_path=args.include_path) if shipped else local
    batch_size = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    tracker = EvaluationTracker(output_path=args.output_path)
    results = simple_evaluate(model=args.model, model_args=args.model_args, tasks=tasks, batch_size=batch_size, device=args.device,
                              task_manager=manager, evaluation_tracker=tracker, random_seed=args.seed, numpy_random_seed=args.seed,
                              torch_random_seed=args.seed, fewshot_random_seed=args.seed)
    if results is None:  # a rank other than 0 under a distributed launch
        return 0
    tracker.save_results_aggregated(results=results, samples=None)
    print(make_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
