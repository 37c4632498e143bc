"""The deployment surface: which config keys a run started from a deployment may change
(flows/locked.py). tests/integration/test_serve.py posts such a run to a served deployment."""

import re

from flows.llmill_config import LlmillConfig
from flows.locked import LOCKED, changed_locked_keys

# names of keys that reach the file system or the network outside the run's own data
REACHES_OUT = re.compile(r"^(root|overridable|pydoc_port|base_url|address|bias_probe)$|path|_dir$|_file$|word_vectors|private")


def leaves(model, prefix=""):
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if hasattr(type(value), "model_fields"):
            yield from leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_every_key_that_reaches_outside_the_run_is_locked_and_every_locked_key_exists():
    keys = set(leaves(LlmillConfig()))
    outward = {k for k in keys if REACHES_OUT.search(k.rsplit(".", 1)[-1])}
    assert outward <= set(LOCKED), outward - set(LOCKED)
    assert set(LOCKED) <= keys, set(LOCKED) - keys


def test_a_run_may_change_anything_else_but_not_the_locked_keys_unless_overridable():
    deployed = LlmillConfig(root="/srv/data").model_dump(mode="json")
    same_but_bigger = LlmillConfig(root="/srv/data", crawl={"max_pages": 10}, pretrain={"train": {"steps": 5}}).model_dump(mode="json")
    assert changed_locked_keys(deployed, same_but_bigger) == []
    hostile = LlmillConfig(root="/etc", crawl={"allow_private_addresses": True}, ingest={"paths": ["http://169.254.169.254/x.warc"]},
                           overridable=["root"]).model_dump(mode="json")
    assert changed_locked_keys(deployed, hostile) == ["root", "overridable", "crawl.allow_private_addresses", "ingest.paths"]
    operator = LlmillConfig(root="/srv/data", overridable=["ingest.paths"]).model_dump(mode="json")
    assert changed_locked_keys(operator, {**operator, "ingest": {**operator["ingest"], "paths": ["/srv/warcs/a.warc.gz"]}}) == []
