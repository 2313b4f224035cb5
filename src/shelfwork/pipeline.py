"""Pipelines: named, versioned plans of steps, parallel blocks of branches, and a compensation hook.

sleep = Pipeline("sleep", params=SleepParams, steps=[step(nap)])
integrate = Pipeline(
    "koha-dspace", version="2", params=Biblio,
    context=lambda p: f"biblio:{p.biblionumber}",
    steps=[step(fetch), step(move), parallel(branch("cover", render, upload, critical=False),
                                              branch("dspace", deposit)), step(finalize)],
    compensate=move_to_error,
)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .errors import BadParams, ShelfworkError, UnknownPipeline

if TYPE_CHECKING:
    from .context import StepContext

StepFn = Callable[["StepContext"], Any]


@dataclass(frozen=True)
class Retry:
    """Per-step retry policy: delay before attempt n+1 = min(delay * factor**(n-1), max_delay)."""

    attempts: int = 1
    delay: float = 0.0
    factor: float = 2.0
    max_delay: float = 300.0
    on: tuple[type[BaseException], ...] = (Exception,)
    never: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("Retry.attempts must be at least 1")
        if self.delay < 0 or self.max_delay < 0 or self.factor < 1:
            raise ValueError("Retry delays must be >= 0 and factor >= 1")

    def retries(self, exc: BaseException) -> bool:
        from .errors import Cancelled, ErrorRateExceeded, LeaseLost

        # An error-rate verdict is about the data, not a passing fault: retrying would only
        # spend a fresh error budget on the same bad input.
        if isinstance(exc, (Cancelled, LeaseLost, ErrorRateExceeded, *self.never)):
            return False
        return isinstance(exc, self.on)

    def wait(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return min(self.delay * self.factor ** (attempt - 1), self.max_delay)


NO_RETRY = Retry()


@dataclass(frozen=True)
class Step:
    name: str
    fn: StepFn
    retry: Retry = NO_RETRY
    description: str = ""


@dataclass(frozen=True)
class Branch:
    name: str
    steps: tuple[Step, ...]
    critical: bool = True


@dataclass(frozen=True)
class Parallel:
    name: str
    branches: tuple[Branch, ...]


Node = Step | Parallel


def step(
    fn: StepFn, *, name: str | None = None, retry: Retry | None = None, description: str = ""
) -> Step:
    return Step(
        name=name or fn.__name__,
        fn=fn,
        retry=retry or NO_RETRY,
        description=description or (fn.__doc__ or "").strip().split("\n")[0],
    )


def branch(name: str, *steps: Step | StepFn, critical: bool = True) -> Branch:
    if not steps:
        raise ValueError(f"branch {name!r} has no steps")
    return Branch(name, tuple(s if isinstance(s, Step) else step(s) for s in steps), critical)


def parallel(*branches: Branch, name: str | None = None) -> Parallel:
    if not branches:
        raise ValueError("parallel() needs at least one branch")
    return Parallel(name or "parallel:" + "+".join(b.name for b in branches), tuple(branches))


class EmptyParams(BaseModel):
    model_config = {"extra": "forbid"}


@dataclass
class Pipeline:
    """A named, versioned plan. Bump `version` when steps change meaning; list old versions whose
    in-flight jobs may safely resume on this code in `compatible`."""

    name: str
    steps: Sequence[Node]
    params: type[BaseModel] = EmptyParams
    version: str = "1"
    description: str = ""
    compatible: tuple[str, ...] = ()
    context: Callable[[Any], str | None] | None = None
    lane: str | Callable[[Any], str | None] | None = None
    dedup: Callable[[Any], str | None] | None = None
    precondition: Callable[[Any], str | None] | None = None
    compensate: Callable[[StepContext, BaseException], None] | None = None
    system: str = ""
    _names: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        names: list[str] = []
        for node in self.steps:
            if isinstance(node, Step):
                names.append(node.name)
            else:
                names.append(node.name)
                names.extend(b.name for b in node.branches)
                names.extend(s.name for b in node.branches for s in b.steps)
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ShelfworkError(f"pipeline {self.name!r}: step names repeat: {sorted(dupes)}")
        if not self.steps:
            raise ShelfworkError(f"pipeline {self.name!r} has no steps")
        self._names = set(names)

    def validate(self, params: dict[str, Any] | None) -> BaseModel:
        """Check params against the schema; BadParams names each bad field."""
        try:
            return self.params.model_validate(params or {})
        except ValidationError as exc:
            errors: dict[str, str] = {}
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "(params)"
                errors[where] = err["msg"]
            raise BadParams(self.name, errors) from None

    def resumable_from(self, version: str) -> bool:
        return version == self.version or version in self.compatible

    def step_names(self) -> list[str]:
        """Every step that writes a checkpoint, in plan order."""
        out: list[str] = []
        for node in self.steps:
            if isinstance(node, Step):
                out.append(node.name)
            else:
                out.extend(s.name for b in node.branches for s in b.steps)
        return out

    def describe(self) -> dict[str, Any]:
        plan: list[dict[str, Any]] = []
        for node in self.steps:
            if isinstance(node, Step):
                plan.append({"step": node.name, "description": node.description})
            else:
                plan.append(
                    {
                        "parallel": node.name,
                        "branches": [
                            {
                                "name": b.name,
                                "critical": b.critical,
                                "steps": [s.name for s in b.steps],
                            }
                            for b in node.branches
                        ],
                    }
                )
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "system": self.system,
            "params_schema": self.params.model_json_schema(),
            "plan": plan,
        }


class Registry:
    """Pipelines by name. The engine resolves a job's pipeline here at run time."""

    def __init__(self, pipelines: Iterable[Pipeline] = ()) -> None:
        self._pipelines: dict[str, Pipeline] = {}
        for p in pipelines:
            self.add(p)

    def add(self, pipeline: Pipeline) -> Pipeline:
        self._pipelines[pipeline.name] = pipeline
        return pipeline

    def get(self, name: str) -> Pipeline:
        try:
            return self._pipelines[name]
        except KeyError:
            raise UnknownPipeline(name, list(self._pipelines)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._pipelines

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._pipelines.values(), key=lambda p: p.name))

    def names(self) -> list[str]:
        return sorted(self._pipelines)
