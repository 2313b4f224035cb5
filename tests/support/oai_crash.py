"""A shelfwork server process that starts one OAI harvest, for the SIGKILL test:

    python -m tests.support.oai_crash '<settings json>'

It runs the scheduler and a local executor, submits `oai-harvest` of network LB, and waits to
be killed.
"""

from __future__ import annotations

import sys
import time

from shelfwork.config import Settings
from shelfwork.engine import Engine


def main() -> None:
    settings = Settings.model_validate_json(sys.argv[1])
    engine = Engine(settings).start()
    submitted = engine.submit("oai-harvest", {"network": "LB", "incremental": False})
    print(f"job {submitted.job_id}", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
