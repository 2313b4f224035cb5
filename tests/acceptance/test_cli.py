"""The command line as a person or a script uses it: exit code, stdout and stderr.

Every flow runs `python -m shelfwork` as a subprocess at least once; variations of a flow go through
the same entry point (`shelfwork.cli.main`) inside the test process, which is much faster than
starting an interpreter each time. Bad input of every kind must end in one clear line naming the
problem, a non-zero exit code and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shelfwork.config import load_settings
from tests.support.cli import Cli, Result, in_process

REPO = Path(__file__).resolve().parents[2]
DEMO_MODULE_CONFIG = '[pipelines]\nmodules = ["shelfwork.pipelines.demo"]\n'


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test run's environment without any SHELFWORK_* setting leaking into the CLI."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHELFWORK_")}
    environ["COLUMNS"] = "200"
    environ.update(extra or {})
    return environ


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
    """Run `shelfwork ARGS` as a separate process in `cwd`, the way a person or script does."""
    return subprocess.run(
        [sys.executable, "-m", "shelfwork", *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def here(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """Run `shelfwork ARGS` through `main` in this process; same signature and result as `cli`."""
    with in_process(capsys, monkeypatch) as run:
        yield run


def clean_error(result: Result, code: int, *needles: str) -> str:
    """The run failed with `code` and one error line containing every needle; no traceback."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == code, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def as_json(result: Result) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory with a config file that adds the demo pipelines and uses its own database."""
    (tmp_path / "shelfwork.toml").write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "jobs.db"}"\n\n{DEMO_MODULE_CONFIG}'
    )
    return tmp_path


# --- jobs end to end ------------------------------------------------------------------------------


def test_submit_wait_succeeds_and_job_can_be_inspected(workdir: Path, here: Cli) -> None:
    run = cli("submit", "sleep", "-p", "seconds=0.3", "-p", "steps=3", "--wait", cwd=workdir)
    assert run.returncode == 0, run.stderr
    job_id = int(run.stdout.strip())  # stdout is the id and nothing else
    assert f"job {job_id} succeeded" in run.stderr
    assert "running the job in this process" in run.stderr  # no server: the CLI ran it

    status = as_json(here("status", str(job_id), "--json", cwd=workdir))
    assert status["state"] == "succeeded"
    assert status["result"] == {"slept": 0.3}
    assert status["percent"] == 100.0
    assert [(s["name"], s["state"], s["attempts"]) for s in status["steps"]] == [
        ("nap", "succeeded", 1)
    ]
    assert [e["kind"] for e in status["events"]][-1] == "succeeded"

    human = here("status", str(job_id), cwd=workdir)
    assert human.returncode == 0
    assert f"job {job_id} · sleep v1 · succeeded" in human.stdout
    assert "nap" in human.stdout

    listed = as_json(here("jobs", "--json", "--pipeline", "sleep", cwd=workdir))
    assert [(j["id"], j["state"]) for j in listed] == [(job_id, "succeeded")]
    table = here("jobs", "--state", "succeeded", cwd=workdir)
    assert table.returncode == 0 and "sleep" in table.stdout and "succeeded" in table.stdout
    assert as_json(here("jobs", "--json", "--state", "failed", cwd=workdir)) == []


def test_submit_wait_fails_on_failed_job_and_shows_why(workdir: Path, here: Cli) -> None:
    failed = cli(
        "submit",
        "demo-deposit",
        "--params-json",
        '{"record": "b7", "pause": 0}',
        "-p",
        "fail_deposit=true",
        "--wait",
        cwd=workdir,
    )
    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    job_id = int(failed.stdout.strip())
    assert f"job {job_id} failed" in failed.stderr
    assert "repository refused the deposit" in failed.stderr
    status = as_json(here("status", str(job_id), "--json", cwd=workdir))
    assert status["state"] == "failed"
    assert status["params"]["record"] == "b7" and status["params"]["fail_deposit"] is True
    assert "compensated" in [e["kind"] for e in status["events"]]

    warned = cli(
        "submit", "demo-deposit", "-p", "pause=0", "-p", "fail_cover=true", "--wait", cwd=workdir
    )
    assert warned.returncode == 0, warned.stderr
    assert "warning: [cover] optional branch 'cover' failed" in warned.stderr

    retried = here("retry", str(job_id), cwd=workdir)
    assert retried.returncode == 0 and "queued again" in retried.stdout
    assert as_json(here("status", str(job_id), "--json", cwd=workdir))["state"] == "queued"


def test_cancel_queued_and_running_jobs(workdir: Path, here: Cli) -> None:
    queued = here("submit", "sleep", "-p", "seconds=5", cwd=workdir)
    assert queued.returncode == 0
    job_id = queued.stdout.strip()
    assert "no `shelfwork serve` is running" in queued.stderr  # tells why it will just wait
    assert as_json(here("status", job_id, "--json", cwd=workdir))["state"] == "queued"
    done = here("cancel", job_id, cwd=workdir)
    assert done.returncode == 0 and f"job {job_id} cancelled" in done.stdout
    assert as_json(here("status", job_id, "--json", cwd=workdir))["state"] == "cancelled"
    clean_error(here("cancel", job_id, cwd=workdir), 2, f"job {job_id} is cancelled")

    # A running job followed with --wait: cancelling it ends the wait with a non-zero exit.
    follower = subprocess.Popen(
        [sys.executable, "-m", "shelfwork", "submit", "sleep", "-p", "seconds=30", "--wait"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        running_id = follower.stdout.readline().strip()
        deadline = time.monotonic() + 30
        while as_json(here("status", running_id, "--json", cwd=workdir))["state"] != "running":
            assert time.monotonic() < deadline, "job never started"
            time.sleep(0.1)
        requested = here("cancel", running_id, cwd=workdir)
        assert "cancel requested" in requested.stdout
        _, stderr = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 1, stderr
    assert f"job {running_id} cancelled" in stderr


def test_submit_prints_only_the_id_and_dedups(workdir: Path, here: Cli) -> None:
    first = here("submit", "noop", "--dedup-key", "export", "--context", "c1", cwd=workdir)
    second = here("submit", "noop", "--dedup-key", "export", cwd=workdir)
    assert first.returncode == second.returncode == 0
    assert first.stdout.strip().isdigit()
    assert first.stdout == second.stdout
    assert "no new job was created" in second.stderr
    status = as_json(here("status", first.stdout.strip(), "--json", cwd=workdir))
    assert status["context"] == "c1" and status["dedup_key"] == "export"
    assert status["params"] == {}


def test_param_values_are_json_when_they_parse(workdir: Path, here: Cli) -> None:
    from shelfwork.cli import parse_params

    parsed = parse_params(
        ["n=2", "x=0.5", "flag=true", "ids=[1, 2]", "name=b1001", "empty=", "eq=a=b"],
        '{"n": 1, "kept": null}',
    )
    assert parsed == {
        "n": 2,
        "kept": None,
        "x": 0.5,
        "flag": True,
        "ids": [1, 2],
        "name": "b1001",
        "empty": "",
        "eq": "a=b",
    }
    job_id = here("submit", "sleep", "-p", "seconds=0", "-p", "steps=2", cwd=workdir).stdout
    status = as_json(here("status", job_id.strip(), "--json", cwd=workdir))
    assert status["params"] == {"seconds": 0.0, "steps": 2}


def test_pipelines_lists_params(workdir: Path, here: Cli) -> None:
    listed = cli("pipelines", cwd=workdir)
    assert listed.returncode == 0
    for name in ("noop", "sleep", "demo-deposit", "demo-flaky", "seconds: float = 1.0"):
        assert name in listed.stdout
    described = as_json(here("pipelines", "--json", cwd=workdir))
    sleep = next(p for p in described if p["name"] == "sleep")
    assert set(sleep["params_schema"]["properties"]) == {"seconds", "steps"}


@pytest.mark.postgres
def test_submit_wait_on_postgresql(tmp_path: Path, pg_url: str, here: Cli) -> None:
    from tests.conftest import truncate_pg

    truncate_pg(pg_url)
    run = cli(
        "--database-url", pg_url, "submit", "sleep", "-p", "seconds=0.2", "--wait", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    listed = as_json(here("--database-url", pg_url, "jobs", "--json", cwd=tmp_path))
    assert [(j["id"], j["state"]) for j in listed] == [(int(run.stdout), "succeeded")]
    upgraded = here("--database-url", pg_url, "db", "upgrade", cwd=tmp_path)
    assert upgraded.returncode == 0 and "newest schema" in upgraded.stdout


# --- bad input ------------------------------------------------------------------------------------


def test_unknown_pipeline_names_the_known_ones(workdir: Path) -> None:
    result = cli("submit", "harvest-everything", cwd=workdir)
    clean_error(result, 2, "unknown pipeline 'harvest-everything'", "noop", "sleep", "demo-deposit")
    assert result.stdout == ""


def test_bad_params_name_each_field(workdir: Path, here: Cli) -> None:
    result = cli(
        "submit", "sleep", "-p", "seconds=-1", "-p", "steps=many", "-p", "colour=red", cwd=workdir
    )
    clean_error(result, 2, "bad params for pipeline 'sleep'", "seconds", "steps", "colour")
    clean_error(here("submit", "sleep", "-p", "seconds", cwd=workdir), 2, "key=value", "'seconds'")
    clean_error(
        here("submit", "sleep", "--params-json", "{seconds: 1}", cwd=workdir), 2, "--params-json"
    )
    clean_error(here("submit", "sleep", "--params-json", "[1]", cwd=workdir), 2, "JSON object")
    clean_error(
        here("submit", "demo-deposit", "-p", "record=", cwd=workdir), 2, "demo-deposit", "record"
    )
    assert as_json(here("jobs", "--json", cwd=workdir)) == []  # nothing was queued


def test_unreachable_database(tmp_path: Path, here: Cli) -> None:
    url = "postgresql://shelfwork@127.0.0.1:1/shelfwork"
    clean_error(cli("--database-url", url, "jobs", cwd=tmp_path), 3, "127.0.0.1:1", "unreachable")
    result = here("submit", "noop", cwd=tmp_path, env={"SHELFWORK_DATABASE_URL": url})
    clean_error(result, 3, "127.0.0.1:1", "unreachable")
    clean_error(here("--database-url", url, "db", "upgrade", cwd=tmp_path), 3, "unreachable")
    clean_error(
        here("--database-url", "sqlite:////proc/no/such/dir/jobs.db", "jobs", cwd=tmp_path),
        3,
        "cannot be opened",
    )
    clean_error(here("--database-url", "not a url", "jobs", cwd=tmp_path), 2, "not a database URL")


def test_unreachable_broker(tmp_path: Path, here: Cli) -> None:
    env = {
        "SHELFWORK_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "SHELFWORK_EXECUTOR": "celery",
        "SHELFWORK_BROKER_URL": "redis://127.0.0.1:1/0",
    }
    # The job is stored safely and stays queued; the person is told why nothing runs it yet.
    out = cli("submit", "noop", cwd=tmp_path, env=env)
    assert out.returncode == 0 and out.stdout.strip().isdigit(), out.stderr
    assert "broker unreachable" in out.stderr and "stays queued" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    clean_error(here("worker", cwd=tmp_path, env=env), 3, "broker", "127.0.0.1:1")


def test_worker_refuses_without_celery(tmp_path: Path, here: Cli) -> None:
    clean_error(here("worker", cwd=tmp_path), 2, "executor is 'local'", "SHELFWORK_EXECUTOR=celery")


def test_broken_config_file_in_a_real_process(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text('[database]\nurl = "sqlite:///x.db"\n[admission\nmax_running = 2\n')
    clean_error(
        cli("--config", str(config), "submit", "noop", cwd=tmp_path), 2, str(config), "line 3"
    )


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('[database]\nurl = "sqlite:///x.db"\n[admission\nmax_running = 2\n', ["line 3"]),
        ('[database]\nurl = "sqlite:///x.db"\ncolour = "blue"\n', ["line 3", "'colour'"]),
        (
            '[database]\nurl = "sqlite:///x.db"\n\n[admission]\nmax_running = "lots"\n',
            ["line 5", "max_running"],
        ),
        ("[frobnicate]\nx = 1\n", ["line 1", "[frobnicate]"]),
        ("schedules = 5\n", ["[schedules]"]),
    ],
    ids=["syntax", "unknown-key", "wrong-type", "unknown-section", "not-a-table"],
)
def test_broken_config_file_names_file_and_problem(
    tmp_path: Path, here: Cli, text: str, needles: list[str]
) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(text)
    clean_error(here("--config", str(config), "jobs", cwd=tmp_path), 2, str(config), *needles)


def test_broken_config_found_by_default_or_environment(tmp_path: Path, here: Cli) -> None:
    (tmp_path / "shelfwork.toml").write_text("[admission]\nmax_queue = -1\n")
    clean_error(here("submit", "noop", cwd=tmp_path), 2, "shelfwork.toml", "line 2", "max_queue")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"SHELFWORK_CONFIG": str(tmp_path / "missing.toml")}
    clean_error(here("jobs", cwd=elsewhere, env=env), 2, "missing.toml", "not found")
    clean_error(here("--config", "nope.toml", "jobs", cwd=elsewhere), 2, "nope.toml", "not found")
    modules = tmp_path / "modules.toml"
    modules.write_text('[pipelines]\nmodules = ["no.such.module"]\n')
    clean_error(here("-c", str(modules), "submit", "noop", cwd=elsewhere), 2, "'no.such.module'")


def test_unknown_job_and_state(workdir: Path, here: Cli) -> None:
    clean_error(here("status", "999", cwd=workdir), 2, "job 999 not found")
    clean_error(here("cancel", "999", cwd=workdir), 2, "job 999 not found")
    clean_error(here("jobs", "--state", "done", cwd=workdir), 2, "'done'", "succeeded")


# --- demo and example configuration ---------------------------------------------------------------


def test_engine_demo_runs_to_completion(tmp_path: Path, here: Cli) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    run = cli("--database-url", url, "engine-demo", cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Every job ended as expected" in run.stdout
    assert "rejected (queue full" in run.stdout
    listed = as_json(here("--database-url", url, "jobs", "--json", cwd=tmp_path))
    assert {j["state"] for j in listed} == {"succeeded", "failed", "cancelled"}
    # A second demo on a database with another user's queued job refuses instead of muddling on.
    assert here("--database-url", url, "submit", "noop", cwd=tmp_path).returncode == 0
    clean_error(here("--database-url", url, "engine-demo", cwd=tmp_path), 2, "1 live job")


def test_example_config_is_valid() -> None:
    settings = load_settings(REPO / "shelfwork.example.toml", env={})
    assert settings.source is not None
    assert "shelfwork.pipelines.demo" in settings.pipeline_modules
    assert [s.name for s in settings.schedules] == ["nightly-smoke-test"]
    defaults = load_settings(env={}, database_url="sqlite:///x.db")
    shown = tomllib.loads((REPO / "shelfwork.example.toml").read_text(encoding="utf-8"))["api"]
    for key in (
        "max_body",
        "header_timeout",
        "body_timeout",
        "send_timeout",
        "trusted_proxies",
        "session_ttl",
        "login_backoff",
        "login_backoff_max",
        "login_max_failures",
        "login_max_failures_per_ip",
    ):
        assert key in shown, key  # [api] shows every limit, at its default
        assert getattr(settings, key) == getattr(defaults, key), key


def test_readme_python_example_runs(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "example.py").write_text(example)
    run = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "succeeded"


def test_debug_logs_keep_credentials_out(tmp_path: Path) -> None:
    """`--debug` turns on every library's debug log; the DSpace bearer token, the XSRF tokens,
    Koha's session cookie and credentials in a configured URL must still never reach it."""
    from shelfwork.cli import _systems_table
    from shelfwork.pipelines.koha_dspace.demo import cases, seed_books
    from shelfwork.sandbox.peers import start_peers

    peers = start_peers()
    try:
        plan = [case for case in cases() if case.book.biblionumber == 1001]  # a deposit + a cover
        seed_books(peers, tmp_path, plan)
        table = peers.integrator_config(tmp_path)
        table["koha"]["url"] = table["koha"]["url"].replace("://", "://leaky:hunter2@", 1)
        (tmp_path / "shelfwork.toml").write_text(
            f'[database]\nurl = "sqlite:///{tmp_path / "jobs.db"}"\n\n'
            '[pipelines]\nmodules = ["shelfwork.pipelines.koha_dspace"]\n\n'
            f"{_systems_table(table)}\n"
        )
        run = cli(
            "--debug",
            "submit",
            "--wait",
            "koha-dspace",
            "-p",
            "biblionumber=1001",
            cwd=tmp_path,
            timeout=120,
        )
    finally:
        peers.stop()
    log = run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "HTTP Request: POST" in log  # debug logging was on, and the clients were heard
    assert "hunter2" not in log and "leaky:" not in log
    assert "eyJ" not in log  # no JSON Web Token (DSpace's bearer token) at all
    for name in ("Authorization", "Set-Cookie", "Cookie", "DSPACE-XSRF-TOKEN", "X-XSRF-TOKEN"):
        for line in log.splitlines():
            lowered = line.lower()
            at = lowered.find(f"'{name.lower()}', b'")
            if at >= 0:
                value = line[at + len(name) + 6 :]
                assert value.startswith("[redacted]"), line
    assert peers.koha_password not in log and peers.dspace_password not in log
