"""Pipeline definitions: retry policy arithmetic, plan checks, params schema."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from shelfwork.errors import BadParams, Cancelled, ShelfworkError
from shelfwork.pipeline import Pipeline, Registry, Retry, branch, parallel, step


def a(ctx):
    return 1


def b(ctx):
    return 2


def test_retry_delays_grow_to_the_cap() -> None:
    r = Retry(attempts=6, delay=1.0, factor=3.0, max_delay=10.0)
    assert [r.wait(n) for n in range(1, 6)] == [1.0, 3.0, 9.0, 10.0, 10.0]


def test_retry_decides_by_error_type() -> None:
    r = Retry(attempts=3, on=(ConnectionError, TimeoutError), never=(ConnectionRefusedError,))
    assert r.retries(ConnectionResetError())
    assert r.retries(TimeoutError())
    assert not r.retries(ValueError())
    assert not r.retries(ConnectionRefusedError())
    assert not Retry(attempts=3).retries(Cancelled("stop"))


def test_retry_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Retry(attempts=0)
    with pytest.raises(ValueError):
        Retry(factor=0.5)


def test_step_names_must_be_unique() -> None:
    with pytest.raises(ShelfworkError, match="step names repeat"):
        Pipeline("dup", steps=[step(a), parallel(branch("x", a), branch("y", b))])
    with pytest.raises(ShelfworkError, match="no steps"):
        Pipeline("empty", steps=[])


def test_plan_and_description() -> None:
    p = Pipeline("p", steps=[step(a), parallel(branch("x", b, critical=False)), step(b, name="c")])
    assert p.step_names() == ["a", "b", "c"]
    plan = p.describe()["plan"]
    assert plan[1]["branches"] == [{"name": "x", "critical": False, "steps": ["b"]}]


class Params(BaseModel):
    biblionumber: int
    force: bool = False


def test_params_errors_name_every_field() -> None:
    p = Pipeline("p", steps=[step(a)], params=Params)
    assert p.validate({"biblionumber": "12"}).biblionumber == 12
    with pytest.raises(BadParams) as err:
        p.validate({"biblionumber": "twelve", "force": "maybe"})
    assert set(err.value.errors) == {"biblionumber", "force"}


def test_registry_lists_and_refuses_unknown() -> None:
    reg = Registry([Pipeline("one", steps=[step(a)])])
    assert reg.names() == ["one"] and "one" in reg
    with pytest.raises(ShelfworkError, match="unknown pipeline 'two'; known pipelines: one"):
        reg.get("two")
