"""A shelfwork server process that starts one OAI harvest, for the SIGKILL test:

    python -m tests.support.oai_crash server '<settings json>'

It runs the scheduler and the settings' executor (local threads, or Celery: then a worker started
with `python -m tests.support.crashsite worker ...` runs the harvest), submits `oai-harvest` of
network LB, and waits to be killed.
"""

from __future__ import annotations

import sys
import threading

from shelfwork.config import Settings
from shelfwork.engine import Engine


def main(argv: list[str]) -> None:
    role, raw = argv[0], argv[1]
    if role != "server":
        raise SystemExit(f"unknown role {role!r}; expected server")
    engine = Engine(Settings.model_validate_json(raw)).start()
    submitted = engine.submit("oai-harvest", {"network": "LB", "incremental": False})
    print(f"job {submitted.job_id}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
