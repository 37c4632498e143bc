"""One config tree for every pipeline: YAML, `--set key=value` overrides and Prefect
parameters all become this pydantic model, and an unknown key or bad value fails at once."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.clean import CleanConfig
from tasks.crawl import CrawlConfig
from tasks.dedup import DedupConfig
from tasks.evaluate import EvaluateConfig
from tasks.examples import ExamplesConfig
from tasks.executor import ExecutorConfig
from tasks.extract import ExtractConfig
from tasks.finetune import FinetuneConfig
from tasks.ingest import IngestConfig
from tasks.paragraph_dedup import ParagraphDedupConfig
from tasks.pretrain import PretrainConfig
from tasks.token_encoding import TokenizeConfig
from tasks.train_tokenizer import TokenizerConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


class RefreshConfig(BaseModel):
    """The scheduled, incremental data refresh (the `data-refresh` deployment)."""

    model_config = ConfigDict(extra="forbid")
    cron: str = Field("0 3 * * *", description="when the refresh runs (cron); daily at 03:00 by default")
    timezone: str = "UTC"
    active: bool = Field(False, description="the schedule starts paused until a person enables it")
    continue_pretraining: bool = Field(False, description="continue pretraining from the latest run after a refresh")
    min_new_tokens: int = Field(100_000, ge=1, description="tokens a refresh must add to trigger continued pretraining")
    continue_steps: int = Field(0, ge=0, description="steps of continued pretraining; 0 = pretrain.train.steps")

    @field_validator("cron", "timezone")
    @classmethod
    def _schedule_is_valid(cls, value: str, info):
        """Prefect's own check of a cron string or time zone, at load time rather than at deploy."""
        from prefect.client.schemas.schedules import CronSchedule

        probe = {"cron": "* * * * *", "timezone": "UTC", info.field_name: value}
        try:
            CronSchedule(**probe)
        except ValidationError as e:
            raise ValueError("; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())) from None
        return value


class ExamplesSection(ExamplesConfig):
    """`finetune.examples`: the examples stage's config and the labelled file a person gives
    (the flow takes the file into the root as the `labelled` dataset, the examples' input)."""

    path: str = Field("", description="labelled file (CSV/JSONL/Parquet); empty = labels derived from the crawl's URLs")

    def stage_config(self) -> ExamplesConfig:
        return ExamplesConfig.model_validate(self.model_dump(exclude={"path"}))


class FinetuneSection(FinetuneConfig):
    """`finetune`: the finetune stage's config and its examples' section."""

    examples: ExamplesSection = ExamplesSection()

    def stage_config(self) -> FinetuneConfig:
        return FinetuneConfig.model_validate(self.model_dump(exclude={"examples"}))


class LlmillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "demo"
    overridable: list[str] = Field(default_factory=list, description="keys that reach files or the network (flows/locked.py) which a run started from a deployment may still change")
    root: str = Field("data", description="where every dataset is written: a local path, or an fsspec URL (s3://bucket/prefix; credentials from the environment)")
    executor: ExecutorConfig = ExecutorConfig()
    crawl: CrawlConfig = CrawlConfig()
    ingest: IngestConfig = IngestConfig()
    extract: ExtractConfig = ExtractConfig()
    clean: CleanConfig = CleanConfig()
    dedup: DedupConfig = DedupConfig()
    paragraph_dedup: ParagraphDedupConfig = ParagraphDedupConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneSection = FinetuneSection()
    evaluate: EvaluateConfig = EvaluateConfig()
    refresh: RefreshConfig = RefreshConfig()

    @property
    def data_root(self) -> str:
        """`root` as the stages use it: an absolute local path, or an object-store URL."""
        from formats.store import resolve_root

        return resolve_root(self.root)


class ConfigError(ValueError):
    pass


def apply_override(tree: dict, assignment: str) -> None:
    """`a.b.c=value`, the value read as YAML (numbers, booleans, lists)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value is not valid YAML: {e}") from None


def describe(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        key = ".".join(str(x) for x in e["loc"]) or "(root)"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        else:
            lines.append(f"config key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> LlmillConfig:
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    for assignment in overrides:
        apply_override(tree, assignment)
    try:
        return LlmillConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"{path}: {describe(e)}") from None
