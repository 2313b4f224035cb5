"""Actions: a network's pipelines run one after another, each as its own job.

A run (by a network's schedule or by hand) becomes a chain: the `oai-run` job works out which
actions apply and submits the first pipeline with the rest of the chain in its params; each job's
last step (`hand_over`) submits the next. So the order holds even when an index job waits for its
lane, every job keeps its own history, a failed job stops the chain (later actions would work on
stale data), and a full queue refuses the hand-over loudly (retried a few times, then the job
fails saying so) instead of dropping work.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ...context import StepContext
from ...errors import QueueFull, ShelfworkError
from ...pipeline import Pipeline, Retry, step
from .config import oai_config
from .snapshots import Networks

#: a hand-over waits this long in all for room in a full queue before its job fails
HAND_OVER_RETRY = Retry(attempts=6, delay=5.0, factor=2.0, max_delay=60.0, on=(QueueFull,))


class Link(BaseModel):
    """One job of a chain still to come."""

    model_config = ConfigDict(extra="forbid")

    action: str
    pipeline: str
    params: dict[str, Any] = Field(default_factory=dict)


class NetworkParams(BaseModel):
    """What every OAI job takes: its network, and the chain that follows it."""

    model_config = ConfigDict(extra="forbid")

    network: str = Field(min_length=1, max_length=64)
    chain: list[Link] = Field(default_factory=list)
    #: names the run a chain belongs to (dedup keys of its hand-overs)
    run: str | None = None


def network_context(params: Any) -> str:
    return f"network:{params.network}"


def hand_over(ctx: StepContext) -> dict[str, Any] | None:
    """The last step of every OAI job: start the next job of its chain."""
    if not ctx.params.chain:
        return None
    run = ctx.params.run or f"job{ctx.job_id}"
    return submit_next(ctx, ctx.params.network, ctx.params.chain, run)


def submit_next(ctx: StepContext, network: str, chain: list[Link], run: str) -> dict[str, Any]:
    """Submit chain[0] carrying the rest, once per job (a resumed step finds it submitted)."""
    following, rest = chain[0], chain[1:]

    def submit() -> dict[str, Any]:
        params = {
            **following.params,
            "network": network,
            "chain": [link.model_dump() for link in rest],
            "run": run,
        }
        submitted = ctx.engine.submit(
            following.pipeline,
            params,
            dedup_key=f"oai-run:{run}:{len(rest)}",
            note=f"{following.action} for {network} (run {run})",
        )
        return {"action": following.action, "job_id": submitted.job_id}

    done = ctx.effect("hand-over", submit)
    ctx.log.info(f"{done['action']} handed over to job {done['job_id']}")
    return done


class RunParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    network: str = Field(min_length=1, max_length=64)
    #: actions to run, in the order given; None = the ones the network's schedule runs
    actions: list[str] | None = None
    #: for actions that can be incremental: None = the action's own setting
    incremental: bool | None = None


class NothingToRun(ShelfworkError):
    pass


def plan_chain(
    ctx_settings: Any, network: Any, actions: list[str] | None, incremental: bool | None
) -> list[Link]:
    """The jobs a run of `network` makes, in order."""
    config = oai_config(ctx_settings)
    if actions is None:
        chosen = [a for a in config.actions if a.runs_on_schedule(network.properties)]
    else:
        chosen = [config.action(name) for name in actions]
    links = []
    for action in chosen:
        for call in action.pipelines:
            params = dict(call.params)
            if call.pipeline == "oai-harvest":
                wanted = action.incremental if incremental is None else incremental
                params["incremental"] = wanted and not network.on("force_full_harvest")
            elif call.pipeline == "oai-index" and incremental is False:
                params["full"] = True
            links.append(Link(action=action.name, pipeline=call.pipeline, params=params))
    return links


def start_run(ctx: StepContext) -> dict[str, Any]:
    network = Networks(ctx.engine.store).get(ctx.params.network)
    links = plan_chain(ctx.engine.settings, network, ctx.params.actions, ctx.params.incremental)
    if not links:
        ctx.warn(f"network {network.acronym}: no action applies (check its properties)")
        return {"actions": []}
    done = submit_next(ctx, network.acronym, links, f"job{ctx.job_id}")
    return {"actions": [link.action for link in links], "first": done}


run = Pipeline(
    "oai-run",
    params=RunParams,
    system="oai",
    description="Run a network's actions in order (its schedule's, or the ones named)",
    context=network_context,
    steps=[step(start_run, name="start", retry=HAND_OVER_RETRY)],
)
