"""C5 on the dashboard: a snapshot held back as suspicious (an empty full harvest where the one
before found records) says so in both languages, and an operator confirms it there; a viewer
sees no confirm form and cannot post one."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shelfwork.api import create_app
from shelfwork.api.auth import PasswordHasher
from shelfwork.pipelines import oai
from tests.dashboard.test_harvesting import engine_with_network, log_in
from tests.support.oai_provider import Repository, generate_items, start_provider


def test_a_suspicious_snapshot_is_flagged_and_confirmed(tmp_path: Path) -> None:
    provider = start_provider(Repository(generate_items(30, seed=2)), batch_size=25)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PasswordHasher, "n", 2**8)  # cheaper logins; same checks
        engine = engine_with_network(tmp_path, provider.url)
        engine.start()
        app = create_app(engine)
        try:
            first = engine.submit("oai-harvest", {"network": "LB"})
            assert engine.wait(first.job_id, timeout=60).state == "succeeded"
            provider.repository.items = []
            second = engine.submit("oai-harvest", {"network": "LB", "incremental": False})
            assert engine.wait(second.job_id, timeout=60).state == "succeeded"
            snapshot = oai.snapshots.Snapshots(engine.store).list("LB", limit=1)[0]
            assert snapshot.state == "suspicious"
            page_path = f"/snapshots/{snapshot.id}"
            confirm_path = f"{page_path}/confirm"

            viewer = TestClient(app)
            log_in(viewer, "viewer")
            seen = viewer.get(page_path)
            assert seen.status_code == 200
            assert 'data-snapshot-state="suspicious"' in seen.text
            assert 'id="snapshot-suspicious"' in seen.text and "held back" in seen.text
            assert confirm_path not in seen.text
            assert "утримано" in viewer.get(f"{page_path}?lang=uk").text
            assert 'data-snapshot-state="suspicious"' in viewer.get("/networks").text
            assert viewer.post(confirm_path, data={"csrf_token": "x"}).status_code == 403

            operator = TestClient(app)
            csrf = log_in(operator, "operator")
            assert f'action="{confirm_path}"' in operator.get(page_path).text
            done = operator.post(confirm_path, data={"csrf_token": csrf}, follow_redirects=False)
            assert done.status_code == 303 and done.headers["location"] == (
                f"{page_path}?done=confirmed"
            )
            after = operator.get(done.headers["location"])
            assert 'data-snapshot-state="harvested"' in after.text
            assert 'id="confirmed"' in after.text
            again = operator.post(confirm_path, data={"csrf_token": csrf})
            assert again.status_code == 409 and "not suspicious" in again.text
            log = oai.snapshots.Snapshots(engine.store).log_lines(snapshot.id)
            assert any("confirmed by user:operator-" in line.message for line in log)
        finally:
            engine.stop(wait=False)
            provider.stop()
