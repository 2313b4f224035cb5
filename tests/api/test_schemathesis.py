"""Property-based run of every operation in the OpenAPI document (schemathesis, in-process): for
generated valid and invalid input alike, no 5xx, and every response matches its schema.

Driven with Hypothesis directly (schemathesis' own pytest plugin does not run under pytest 9), one
pass per operation and generation mode, with a bounded number of examples. The event stream is left
out: it stays open while its job lives (test_jobs covers it). Calls carry an admin token, so they
reach every operation's logic, not only the 401.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from shelfwork.api import create_app
from shelfwork.config import ScheduleConfig
from shelfwork.engine import Engine
from shelfwork.pipeline import Registry
from shelfwork.pipelines import builtin
from shelfwork.trackers import Poll, Tracker
from tests.conftest import test_settings as settings_for
from tests.conftest import truncate_pg

from .conftest import API_PIPELINES, Api, TestClient

EXAMPLES = 12
echo = Tracker(
    "echo",
    lambda entity: Poll(),
    states=["OPEN", "CLOSED"],
    final=["CLOSED"],
    profiles={"live": {"OPEN": {"interval": 3600}}},
)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """An API over an engine with something of every kind in it, on each database (PostgreSQL is
    stricter: NUL bytes, integer ranges). The executor runs, so /healthz is a 200, but nothing
    dispatches: generated jobs stay queued."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        truncate_pg(url)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'shelfwork.db'}"
    engine = Engine(settings_for(url), Registry([*builtin.PIPELINES, *API_PIPELINES]))
    app = create_app(engine, stream_poll=0.02)
    api = Api(TestClient(app), engine)
    api.tokens["admin"] = app.state.auth.tokens.create("admin", "fuzzer")[1]
    engine.trackers.register(echo)
    engine.trackers.track("echo", "a/1", "OPEN")
    engine.schedules.sync_from_config(
        [ScheduleConfig(name="from-config", pipeline="noop", cron="@hourly")]
    )
    engine.submit("noop")
    engine.executor.start()
    yield api
    api.client.close()
    engine.stop(wait=False)


@pytest.fixture(scope="module")
def api_schema(fuzzed: Api) -> schemathesis.BaseSchema:
    """The app's own OpenAPI document, without the event stream."""
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", fuzzed.client.app)
    return schema.exclude(path_regex=r"/events/stream$")


def test_the_document_lists_every_operation(api_schema: schemathesis.BaseSchema) -> None:
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert len(labels) == 49  # every route but the event stream (see test_auth's table)
    assert "POST /api/v1/jobs" in labels and "GET /metrics" in labels
    assert "POST /integrate" in labels and "GET /status/{task_id}" in labels


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_a_server_error_or_an_off_schema_answer(
    api_schema: schemathesis.BaseSchema, fuzzed: Api, mode: GenerationMode
) -> None:
    failures: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers=fuzzed.admin,
                checks=[not_a_server_error, response_schema_conformance],
            )

        try:
            call()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to make invalid (no parameters)
        except Exception as exc:  # collect them all, then report every failing operation
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
