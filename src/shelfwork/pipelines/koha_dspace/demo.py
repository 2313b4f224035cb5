"""`shelfwork demo`: the Koha -> DSpace integrator end to end, on emulated Koha and DSpace.

It starts both emulators and a shelfwork server (API + dashboard) on the embedded default (SQLite,
local threads), catalogues a handful of books whose PDFs are generated now, and integrates them the
way Koha's staff button does: POST /integrate with a token, then GET /status every so often.
The books cover the paths a cataloguer meets: a plain success with a cover, a Cyrillic record, a
scan missing from the inbox, a record already in DSpace, a corrupt PDF, a cover upload that fails
(the job succeeds with a warning), and a second click on a finished record (nothing changes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from ...config import Settings
from ...engine import Engine
from ...errors import ShelfworkError
from ...sandbox import RunningServer, fresh_folder, serve, stay_up
from ...sandbox.pdfs import corrupt_pdf, scanned_pdf, text_pdf
from ...sandbox.peers import KOHA_USER, Peers, start_peers
from ...sandbox.records import Book, marcxml
from .button import button_script
from .config import SYSTEM

DEADLINE = 120.0


@dataclass
class Case:
    book: Book
    story: str
    expect: str  # done | error
    pdf: str | None = None  # text | scanned | corrupt | None (missing)
    pages: int = 2
    later: bool = False  # submitted after the first wave (its fault targets it alone)


def cases() -> list[Case]:
    return [
        Case(
            Book(
                1001,
                "The reading room : a history of public libraries",
                author="Hart, Eleanor",
                year="2019",
                publisher="Riverside Press",
                place="Boston",
                subjects=["Public libraries", "Reading rooms"],
                pages="212 p.",
                file="2026/reading-room.pdf",
            ),
            "success with a cover",
            "done",
            "text",
            pages=3,
        ),
        Case(
            Book(
                1002,
                "Кобзар",
                author="Шевченко, Тарас",
                year="1840",
                publisher="Друкарня Є. Фішера",
                place="Санкт-Петербург",
                language="ukr",
                subjects=["Українська поезія"],
                file="2026/kobzar.pdf",
            ),
            "Cyrillic record, scanned PDF",
            "done",
            "scanned",
            pages=4,
        ),
        Case(
            Book(1003, "Letters never sent", author="Okafor, Ada", year="2001", file="missing.pdf"),
            "956$u names a file that is not in the inbox",
            "error",
            None,
        ),
        Case(
            Book(1004, "Maps of the old town", author="Novak, Petr", year="1987", file="maps.pdf"),
            "already in DSpace (956$3): the item is reused",
            "done",
            "text",
        ),
        Case(
            Book(1005, "Water damage", author="Lind, Sofia", year="1999", file="damaged.pdf"),
            "corrupt PDF: file moved to Error with a sidecar",
            "error",
            "corrupt",
        ),
        Case(
            Book(
                1006, "Songs of the harbour", author="Moreau, Luc", year="2011", file="harbour.pdf"
            ),
            "Koha's cover upload fails: success with a warning",
            "done",
            "text",
            later=True,
        ),
    ]


def run_demo(folder: Path, *, keep: bool | None = None, console: Console | None = None) -> int:
    """Run the demo in `folder` (made afresh); returns the exit code (0: every outcome as planned)."""
    out = console or Console()
    fresh_folder(folder)
    peers = start_peers()
    servers: list[RunningServer] = []
    engine: Engine | None = None
    try:
        plan = cases()
        existing = seed_books(peers, folder, plan)
        settings = Settings(
            database_url=f"sqlite:///{folder / 'shelfwork.db'}",
            pipeline_modules=["shelfwork.pipelines.koha_dspace"],
            systems={SYSTEM: peers.integrator_config(folder)},
            tracker_profile="dev",
            max_running=4,
            max_queue=64,
            lease_ttl=10.0,
            poll_interval=0.2,
            cors_origins=[peers.koha_url],
        )
        engine = Engine(settings, kind="demo")
        from ...api import create_app

        app = create_app(engine)
        token = app.state.auth.tokens.create("integrator", "koha-staff-button", created_by="demo")[
            1
        ]
        password = _dashboard_user(app)
        engine.start()
        server = serve(app, "shelfwork")
        servers.append(server)
        peers.koha.set_syspref("IntranetUserJS", button_script(server.url, token))
        out.print(f"[bold]shelfwork demo[/]: Koha -> DSpace integrator in {folder}")
        out.print(f"  emulated Koha   {peers.koha_url}   (staff login {KOHA_USER})")
        out.print(f"  emulated DSpace {peers.dspace_url}")
        out.print(f"  shelfwork       {server.url}  (SQLite {folder / 'shelfwork.db'})")

        tasks = _integrate(out, server.url, token, peers, plan)
        # A second click on a finished record: the same item, no second 856, Koha untouched.
        items_before = len(peers.dspace.items)
        rerun = _submit(server.url, token, 1001)
        final = _wait(server.url, token, {1001: rerun})[1001]
        rerun_ok = (
            final["status"] == "done"
            and final["handle_url"] == tasks[1001]["handle_url"]
            and len(peers.dspace.items) == items_before
        )
        ok = _summary(out, plan, tasks, peers, existing, rerun_ok)
        out.print()
        out.print(f"Dashboard: {server.url}/  (user [bold]demo[/], password [bold]{password}[/])")
        out.print(
            f"Koha record page with the staff button: {peers.koha_url}/cgi-bin/koha/catalogue/"
            f"detail.pl?biblionumber=1001  (login {KOHA_USER} / {peers.koha_password})"
        )
        out.print(
            f"Files: {folder / 'processed'} ({_count(folder / 'processed')}), "
            f"{folder / 'error'} ({_count(folder / 'error')} with sidecars)"
        )
        out.print(
            "[green]Every record ended as expected.[/]"
            if ok
            else "[red]Some records did not end as expected.[/]"
        )
        stay_up(keep, out.print)
        return 0 if ok else 1
    finally:
        for running in servers:
            running.stop()
        if engine is not None:
            engine.stop()
            engine.store.dispose()
        peers.stop()


def seed_books(peers: Peers, folder: Path, plan: list[Case]) -> dict[int, str]:
    """Catalogue the books in Koha, put their PDFs in the inbox, and deposit 1004 beforehand."""
    inbox = folder / "inbox"
    existing: dict[int, str] = {}
    for case in plan:
        book = case.book
        if case.pdf is not None and book.file:
            target = inbox / book.file
            target.parent.mkdir(parents=True, exist_ok=True)
            if case.pdf == "text":
                text_pdf(target, case.pages, title=book.title)
            elif case.pdf == "scanned":
                scanned_pdf(target, case.pages, seed=book.biblionumber)
            else:
                corrupt_pdf(target)
        if book.biblionumber == 1004:
            existing[1004] = _deposit_beforehand(peers, folder, book)
            book.item_uuid = existing[1004]
            book.status = "imported"
        peers.koha.add_record(book.biblionumber, marcxml(book))
    return existing


def _deposit_beforehand(peers: Peers, folder: Path, book: Book) -> str:
    """An item someone deposited earlier, with the identifier the integrator would give it."""
    from ...connectors.dspace import DSpace

    earlier = folder / "earlier"
    earlier.mkdir(exist_ok=True)
    pdf = text_pdf(earlier / "maps-earlier.pdf", 1, title=book.title)
    with DSpace(peers.dspace_url, "admin@library.example", peers.admin_password) as ds:
        ds.login()
        deposit = ds.create_as_admin(
            peers.collection,
            {"dc.title": [book.title], "dc.identifier.other": [f"koha:{book.biblionumber}"]},
            pdf,
            pdf.name,
        )
    return deposit.item.uuid


def _dashboard_user(app: Any) -> str:
    import secrets

    password = secrets.token_urlsafe(9)
    app.state.auth.users.create("demo", "admin", password)
    return password


def _submit(url: str, token: str, biblionumber: int) -> str:
    answer = httpx.post(
        f"{url}/integrate",
        json={"biblionumber": biblionumber},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    answer.raise_for_status()
    return str(answer.json()["task_id"])


def _wait(url: str, token: str, tasks: dict[int, str]) -> dict[int, dict[str, Any]]:
    """Poll /status like the Koha button until every task has ended."""
    deadline = time.monotonic() + DEADLINE
    done: dict[int, dict[str, Any]] = {}
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while len(done) < len(tasks):
            for number, task in tasks.items():
                if number in done:
                    continue
                status = client.get(f"{url}/status/{task}?biblionumber={number}").json()
                if status["status"] in ("done", "error", "cancelled", "attention"):
                    done[number] = status
            if time.monotonic() > deadline:
                raise ShelfworkError(f"demo: tasks still running after {DEADLINE:.0f} s")
            time.sleep(0.3)
    return done


def _integrate(
    out: Console, url: str, token: str, peers: Peers, plan: list[Case]
) -> dict[int, dict[str, Any]]:
    first = {
        c.book.biblionumber: _submit(url, token, c.book.biblionumber) for c in plan if not c.later
    }
    out.print(f"  integrating {len(first)} records (POST /integrate, then GET /status)...")
    results = _wait(url, token, first)
    for case in (c for c in plan if c.later):
        # Koha refuses the next cover uploads (HTTP 500): the optional branch tries 3 times.
        peers.koha.fail_next(3, 500, "/cgi-bin/koha/tools/upload-file.pl")
        n = case.book.biblionumber
        out.print(f"  integrating {n} while Koha's cover upload answers 500...")
        results |= _wait(url, token, {n: _submit(url, token, n)})
    return results


def _summary(
    out: Console,
    plan: list[Case],
    tasks: dict[int, dict[str, Any]],
    peers: Peers,
    existing: dict[int, str],
    rerun_ok: bool,
) -> bool:
    table = Table(title="Integrations")
    for column in ("record", "state", "handle URL", "cover URL", "what it shows"):
        table.add_column(column, no_wrap=column.endswith("URL"))
    notes: list[str] = []
    ok = True
    for case in plan:
        n = case.book.biblionumber
        status = tasks[n]
        good = status["status"] == case.expect
        if n in existing:
            good = good and status["item_uuid"] == existing[n]
        if case.later:
            good = good and bool(status["warnings"])
        ok = ok and good
        table.add_row(
            str(n),
            f"[{'green' if status['status'] == 'done' else 'red'}]{status['status']}[/]"
            + ("" if good else " [bold red](unexpected)[/]"),
            status["handle_url"] or "",
            status["cover_url"] or "",
            case.story,
        )
        for warning in status["warnings"]:
            notes.append(f"{n} warning: {warning}")
        if status["error"]:
            notes.append(f"{n} error: {status['error']}")
    table.add_row(
        "1001",
        "[green]unchanged[/]" if rerun_ok else "[bold red]changed (unexpected)[/]",
        "",
        "",
        "second click: same item, no second 856, no second DSpace item",
    )
    # URLs are not wrapped: a pipe or a narrow terminal still gets whole, clickable ones.
    Console(file=out.file, width=max(out.width, 160)).print(table)
    for note in notes:
        out.print(f"  {note}", markup=False, highlight=False)
    return ok and rerun_ok


def _count(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*.pdf")) if folder.exists() else 0
