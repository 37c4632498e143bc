"""The crawl's settings (the `crawl` section of a pipeline config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CrawlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seeds: list[str] = Field(default_factory=list, description="start URLs, or builtin:pydoc")
    allowed_domains: list[str] = Field(default_factory=list, description="empty: the seeds' hosts")
    max_pages: int = Field(1000, ge=1)
    max_depth: int = Field(5, ge=0)
    max_bytes: int = Field(5_000_000, ge=1024, description="larger bodies are cut off (WARC-Truncated)")
    requests_per_second_per_host: float = Field(2.0, gt=0)
    concurrency: int = Field(8, ge=1)
    per_host_concurrency: int = Field(2, ge=1)
    timeout_s: float = Field(20.0, gt=0, description="for each read of a response: connect, headers, each chunk")
    deadline_s: float = Field(60.0, gt=0, description="for a whole request, headers and body: a server that drips bytes ends here")
    max_redirects: int = Field(5, ge=0)
    max_retries: int = Field(3, ge=0)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    user_agent: str = "llmill/0.1 (+https://github.com/llmill/llmill)"
    allow_private_addresses: bool = Field(
        False, description="allow loopback, private and link-local addresses (cloud metadata too)"
    )
    warc_file_bytes: int = Field(64_000_000, ge=1_000_000)
    pydoc_port: int = Field(0, ge=0, le=65535, description="port builtin:pydoc listens on (its URLs never show it); 0 picks a free one")
