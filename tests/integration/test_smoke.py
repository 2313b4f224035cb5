"""The engine runs jobs end to end on both configurations."""

from __future__ import annotations

from tests.support.pipelines import flaky_pipeline


def test_noop_and_sleep_succeed(make_engine, backend) -> None:
    engine = make_engine([flaky_pipeline])
    a = engine.submit("noop")
    b = engine.submit("sleep", {"seconds": 0.2, "steps": 2})
    assert engine.wait(a.job_id, 20).state == "succeeded"
    view = engine.wait(b.job_id, 20)
    assert view.state == "succeeded", view.error
    assert view.result == {"slept": 0.2}
    assert view.progress_done == view.progress_total == 2
    kinds = [e["kind"] for e in engine.jobs.events(b.job_id)]
    assert kinds[0] == "submitted" and kinds[-1] == "succeeded"
