"""`shelfwork oai-demo`: a network harvested, validated, indexed and re-exposed, end to end.

An upstream repository (records in memory, served over OAI-PMH on loopback by the sandbox)
holds a few hundred records in Spanish, Portuguese, Ukrainian and English, some deleted, some
that the example rule set refuses (an unknown document type, no access rights, an impossible
year). A shelfwork server on the embedded default (SQLite, local threads) runs the network's
actions through its API: HARVEST, VALIDATE with the example transformer and rule sets,
INDEX_BUILTIN and INDEX_OAI. Then the upstream changes three records and a second, incremental
run picks up exactly those. The demo prints what each run did, a search, and what shelfwork's
own OAI-PMH provider serves, checked with shelfwork's harvesting client.
"""

from __future__ import annotations

import random
import shutil
import time
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from rich.console import Console
from rich.table import Table

from ...config import Settings
from ...connectors.oaipmh import OaiClient
from ...engine import Engine
from ...outbound import AddressPolicy
from ...sandbox import RunningServer, fresh_folder, serve, stay_up
from ...sandbox.oai import MemorySource
from .provider import ExposedRecord, RepositoryInfo

NETWORK = "DEMO"
#: where the demo's servers listen: allowed explicitly, as a local setup must
LOOPBACK_HOSTS = ("127.0.0.1",)
DEADLINE = 120.0
SETS = (("tesis", "Tesis"), ("articulos", "Artículos"), ("articulos:abiertos", "Acceso abierto"))
TITLES = (
    "Historia de la imprenta en {place}",
    "A história das bibliotecas de {place}",
    "Історія друкарства у {place}",
    "Reading rooms of {place}",
    "Memoria y archivo: {place}",
)
PLACES = ("Córdoba", "Lisboa", "Київ", "Montevideo", "Recife", "Львів", "Boston")
TYPES = ("article", "thesis", "book", "Article", "info:eu-repo/semantics/report", "poster")
RIGHTS = ("info:eu-repo/semantics/openAccess", "info:eu-repo/semantics/embargoedAccess", None)


def demo_records(count: int = 400, seed: int = 5) -> list[ExposedRecord]:
    """Generated now; every 11th deleted, about a quarter refused by the example rules."""
    chooser = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    memberships = (("tesis",), ("articulos",), ("articulos:abiertos",), ())
    records = []
    for number in range(count):
        identifier = f"oai:demo.repository:{number:05d}"
        stamp = start + timedelta(hours=chooser.randrange(24 * 300))
        if number % 11 == 10:
            records.append(ExposedRecord(identifier, stamp, memberships[number % 4], deleted=True))
            continue
        place = chooser.choice(PLACES)
        year = str(chooser.choice((chooser.randrange(1890, 2026), 1999, 2012, 999)))
        fields = {
            "title": [chooser.choice(TITLES).format(place=place) + "."],
            "creator": [f"{chooser.choice(('Pérez', 'Silva', 'Коваль', 'Hart'))}, {number % 17}"],
            "type": [chooser.choice(TYPES)],
            "date": [year],
            "subject": [place, place, "bibliotecas"],
            "language": [chooser.choice(("spa", "por", "ukr", "eng"))],
            "identifier": [f"https://demo.repository.example/handle/1/{number}"],
        }
        rights = chooser.choice(RIGHTS)
        if rights:
            fields["rights"] = [rights]
        records.append(
            ExposedRecord(identifier, stamp, memberships[number % 4], metadata=dc_document(fields))
        )
    return records


def dc_document(fields: dict[str, list[str]]) -> bytes:
    from lxml import etree

    from ...sandbox.oai import DC_NS, OAI_DC_NS

    root = etree.Element(f"{{{OAI_DC_NS}}}dc", nsmap={"oai_dc": OAI_DC_NS, "dc": DC_NS})
    for name, values in fields.items():
        for value in values:
            etree.SubElement(root, f"{{{DC_NS}}}{name}").text = value
    return etree.tostring(root, encoding="UTF-8")


def upstream_server(source: MemorySource) -> RunningServer:
    from ...api.oai import oai_router

    app = FastAPI(title="upstream repository (sandbox)")
    app.include_router(
        oai_router(
            lambda network, _url: source if network == "upstream" else None,
            token_secret=b"sandbox-upstream-repository-secret",
            page_size=50,
        )
    )
    return serve(app, "upstream-oai")


def run_oai_demo(folder: Path, *, keep: bool | None = None, console: Console | None = None) -> int:
    """Run the demo in `folder` (made afresh); returns the exit code (0: all went as planned)."""
    out = console or Console()
    fresh_folder(folder)
    rules = folder / "rules"
    rules.mkdir()
    for name in ("driver.toml", "transform.toml"):
        with resources.as_file(resources.files(__package__) / "examples" / name) as packaged:
            shutil.copy(packaged, rules / name)
    records = demo_records()
    servers: list[RunningServer] = []
    engine: Engine | None = None
    source = MemorySource(_info("http://127.0.0.1/oai/upstream"), records, sets_=SETS)
    try:
        upstream = upstream_server(source)
        servers.append(upstream)
        source.info_ = _info(f"{upstream.url}/oai/upstream")
        settings = Settings(
            database_url=f"sqlite:///{folder / 'shelfwork.db'}",
            pipeline_modules=["shelfwork.pipelines.oai"],
            max_running=4,
            lease_ttl=10.0,
            poll_interval=0.2,
            systems={
                "oai": {
                    "rules_dir": str(rules),
                    # the sandbox upstream is on loopback, which harvesting refuses unless told
                    "allow_private_hosts": list(LOOPBACK_HOSTS),
                    "networks": [
                        {
                            "acronym": NETWORK,
                            "name": "Red de demostración",
                            "base_url": f"{upstream.url}/oai/upstream",
                            "validation": "driver.toml",
                            "transformation": "transform.toml",
                            "cron": "0 3 * * *",
                            "properties": {
                                "index_builtin": True,
                                "index_oai": True,
                                "detailed_diagnose": True,
                            },
                        }
                    ],
                }
            },
        )
        engine = Engine(settings, kind="demo")
        from ...api import create_app

        app = create_app(engine)
        token = app.state.auth.tokens.create("operator", "oai-demo", created_by="demo")[1]
        password = secrets_password(app)
        engine.start()
        server = serve(app, "shelfwork")
        servers.append(server)
        api = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        out.print(f"[bold]shelfwork oai-demo[/]: OAI-PMH network harvesting in {folder}")
        out.print(f"  upstream repository  {upstream.url}/oai/upstream  ({len(records)} records)")
        out.print(f"  shelfwork            {server.url}  (SQLite {folder / 'shelfwork.db'})")

        first = _run(api, out, "first run (full harvest)")
        live = [r for r in records if not r.deleted]
        checks = [first["state"] == "valid", first["total"] == len(live), first["invalid"] > 0]
        _diagnose(api, out, first["id"])
        hits = api.get("/api/v1/search", params={"q": "historia imprenta", "limit": 3}).json()
        out.print(f"\nSearch 'historia imprenta': {hits['total']} hits, e.g.")
        for hit in hits["hits"]:
            out.print(f"  {hit['identifier']}  {hit['title']}")
        checks.append(hits["total"] > 0)

        exposed = _exposed(f"{server.url}/oai/{NETWORK}")
        out.print(
            f"\nshelfwork's provider {server.url}/oai/{NETWORK}: {len(exposed)} records "
            f"(the {first['valid']} valid ones), harvested back with shelfwork's client"
        )
        checks.append(len(exposed) == first["valid"])

        changed = _change_upstream(source, api, first["id"])
        time.sleep(1.1)  # past the second of the first harvest's responseDate
        second = _run(api, out, "second run (incremental)")
        checks += [second["incremental"], second["harvested"] + second["deleted"] == changed]

        out.print(
            f"\nDashboard: {server.url}/networks  (user [bold]demo[/], password "
            f"[bold]{password}[/])"
        )
        ok = all(checks)
        out.print("[green]Every step went as planned.[/]" if ok else "[red]Something differed.[/]")
        stay_up(keep, out.print)
        return 0 if ok else 1
    finally:
        for running in reversed(servers):
            running.stop()
        if engine is not None:
            engine.stop()
            engine.store.dispose()


def _info(base_url: str) -> RepositoryInfo:
    return RepositoryInfo(
        name="Repositorio de demostración",
        base_url=base_url,
        admin_emails=("repositorio@demo.example",),
        earliest_datestamp=datetime(2024, 1, 1, tzinfo=UTC),
    )


def secrets_password(app: Any) -> str:
    import secrets

    password = secrets.token_urlsafe(9)
    app.state.auth.users.create("demo", "admin", password)
    return password


def _run(api: httpx.Client, out: Console, label: str) -> dict[str, Any]:
    started = api.post(f"/api/v1/oai/networks/{NETWORK}/run")
    started.raise_for_status()
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        jobs = api.get("/api/v1/jobs", params={"limit": 100}).json()["items"]
        mine = [j for j in jobs if j["id"] >= started.json()["job_id"]]
        if len(mine) >= 5 and all(j["state"] in ("succeeded", "failed") for j in mine):
            break
        time.sleep(0.2)
    snapshot = api.get(f"/api/v1/oai/networks/{NETWORK}").json()["latest"]
    table = Table(title=label, title_justify="left")
    for column in ("job", "pipeline", "state", "took"):
        table.add_column(column)
    for job in sorted(mine, key=lambda j: j["id"]):
        took = _seconds(job)
        table.add_row(str(job["id"]), job["pipeline"], job["state"], took)
    out.print()
    out.print(table)
    kind = "incremental" if snapshot["incremental"] else "full"
    out.print(
        f"snapshot {snapshot['id']} ({kind}, {snapshot['state']}): {snapshot['harvested']} "
        f"harvested, {snapshot['deleted']} deleted, {snapshot['total']} in the catalog, "
        f"{snapshot['valid']} valid, {snapshot['invalid']} invalid, "
        f"{snapshot['transformed']} transformed"
    )
    return snapshot


def _seconds(job: dict[str, Any]) -> str:
    if not job.get("started_at") or not job.get("finished_at"):
        return ""
    begun = datetime.fromisoformat(job["started_at"])
    ended = datetime.fromisoformat(job["finished_at"])
    return f"{(ended - begun).total_seconds():.2f} s"


def _diagnose(api: httpx.Client, out: Console, snapshot_id: int) -> None:
    report = api.get(f"/api/v1/oai/snapshots/{snapshot_id}/diagnose").json()
    table = Table(title="rules (diagnose)", title_justify="left")
    for column in ("rule", "mandatory", "valid", "invalid"):
        table.add_column(column)
    for rule_id, stats in report["validation"]["rules"].items():
        table.add_row(
            rule_id,
            "yes" if stats["mandatory"] else "no",
            str(stats["valid_count"]),
            str(stats["invalid_count"]),
        )
    out.print(table)


def _exposed(endpoint: str) -> list[str]:
    with OaiClient(endpoint, addresses=AddressPolicy.allowing(LOOPBACK_HOSTS)) as client:
        return [
            record.identifier
            for page in client.pages("oai_dc")
            for record in page.records
            if not record.deleted
        ]


def _change_upstream(source: MemorySource, api: httpx.Client, snapshot_id: int) -> int:
    """Retitle one valid record, delete another, spoil a third's year; returns 3."""
    valid = api.get(
        f"/api/v1/oai/snapshots/{snapshot_id}/records", params={"valid": "true", "limit": 3}
    ).json()["items"]
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    first, second, third = (item["identifier"] for item in valid)
    renewed = {
        "title": ["Historia renovada de la imprenta"],
        "creator": ["Pérez, 1"],
        "type": ["article"],
        "date": ["2020"],
        "rights": ["info:eu-repo/semantics/openAccess"],
    }
    source.put(ExposedRecord(first, now, metadata=dc_document(renewed)))
    source.put(ExposedRecord(second, now, deleted=True))
    source.put(
        ExposedRecord(
            third,
            now,
            metadata=dc_document({"title": ["Sin fecha válida"], "date": ["0999"]}),
        )
    )
    return 3
