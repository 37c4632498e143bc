"""Where Prefect keeps the task cache's results, and a shared place for them.

Every stage is a cached task with persisted results; a cache hit needs the result record its
first run wrote. Prefect's default is a local directory ($PREFECT_HOME/storage), which only
that machine's processes read: a worker on another machine recomputes (or, with a shared data
root, re-checks) every stage. A saved remote storage block named by
PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK (or the server's default result storage) is read and
written by every process that points at it, so a stage cached by one worker is `Cached` for all.
"""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_BLOCK_NAME = "llmill-results"
SETTING = "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"


def describe_results_storage() -> str:
    """One line: the results storage this process's tasks use, and who else can read it."""
    from prefect.filesystems import LocalFileSystem
    from prefect.results import get_default_result_storage
    from prefect.settings import get_current_settings

    block = get_current_settings().results.default_storage_block
    storage = get_default_result_storage(_sync=True)
    where = getattr(storage, "basepath", None) or type(storage).__name__
    if isinstance(storage, LocalFileSystem):
        return (f"results storage: local {where} (this machine only; share the task cache between machines with "
                f"{SETTING} naming a remote storage block: `llmill results-storage s3://bucket/prefix`)")
    source = f"block {block}" if block else "the server's default result storage"
    return f"results storage: {where} ({source}, shared by every process that uses it)"


def save_results_block(url: str, name: str = DEFAULT_BLOCK_NAME, overwrite: bool = False) -> str:
    """Save a RemoteFileSystem block at `url` (any fsspec URL: s3://, gs://, az://, ...) on the
    Prefect server and return its slug for PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK. No credentials
    go into the block: s3fs and its peers read them (and AWS_ENDPOINT_URL) from the environment
    or the usual files of each process that uses it."""
    from prefect.filesystems import RemoteFileSystem

    scheme = urlsplit(url).scheme
    if scheme in ("", "file") or not urlsplit(url).netloc:
        raise ValueError(f"results storage must be a remote fsspec URL such as s3://bucket/prefix, not {url!r}")
    block = RemoteFileSystem(basepath=url.rstrip("/") + "/")
    try:
        block.save(name, overwrite=overwrite)
    except ValueError as e:
        if "already in use" not in str(e):
            raise
        raise ValueError(f"a remote-file-system block named {name!r} already exists; pass --overwrite to replace it") from None
    return f"remote-file-system/{name}"
