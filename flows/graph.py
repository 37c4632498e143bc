"""The pipeline's graph, declared once.

    data -> pretrain -> finetune (when enabled) -> evaluate

Each flow also runs alone (a deployment of its own). A flow run alone with its inputs left
empty asks `upstream(config, "<flow>")` for the results of the flows before it: they run as
subflows, each answered from the task cache when it has run with this config. The pipeline flow
is the whole chain (`upstream(config)`). What each flow passes on is read from the results here,
in one place, so no flow re-derives another's inputs.
"""

from __future__ import annotations

from flows.llmill_config import LlmillConfig

CHAIN = ("data", "pretrain", "finetune", "evaluate")


def _step(name: str, config: LlmillConfig, done: dict):
    from flows.data_flow import data_flow
    from flows.evaluate_flow import evaluate_flow, evaluation_inputs
    from flows.finetune_flow import finetune_flow
    from flows.pretrain_flow import pretrain_flow

    if name == "data":
        return data_flow(config)
    documents = done["data"]["documents"]
    if name == "pretrain":
        return pretrain_flow(config, documents)
    pre = done["pretrain"]
    if name == "finetune":
        return finetune_flow(config, documents, pre["tokenizer"], pre["run"]) if config.finetune.enabled else None
    return evaluate_flow(config, evaluation_inputs(done["data"], pre, done["finetune"]))


def upstream(config: LlmillConfig, of: str | None = None) -> dict:
    """{flow: its result} of every flow before `of` in the chain (of the whole chain when None)."""
    stop = CHAIN.index(of) if of else len(CHAIN)
    done: dict = {}
    for name in CHAIN[:stop]:
        done[name] = _step(name, config, done)
    return done
