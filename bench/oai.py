"""OAI-PMH benchmarks: harvest-and-store against the client-side limit, validation, memory.

Sub-commands ``harvest``, ``validate``, ``memory`` and ``all`` (the three in turn, one section),
each printing a Markdown section and appending it to bench/RESULTS.md (``--no-save`` to skip,
``--markdown FILE`` to also write it to FILE):

- ``harvest``: ``--records`` (20,000) generated oai_dc records (1.5-2 KB each with their header;
  Spanish, Portuguese, Greek, Cyrillic, CJK, XML escapes; about 2% deletions), pre-rendered as
  ListRecords pages of ``--page-size`` (500) and served as files by a threaded http.server in its
  own process on loopback (the resumption token names the next page's file; no compression).
  The sides take turns ``--repeat`` times in one run (each going first in turn), median shown:

  * client-side limit: ``OaiClient.pages()`` fetching and parsing every page, nothing stored
    (what the harvest step would do with an infinitely fast store);
  * harvest-and-store: the real ``oai-harvest`` job (Identify, then the pages into a new
    snapshot: catalog rows and gzipped blobs, one bulk insert per page, in the metadata database) in an
    Engine on the embedded default (SQLite file, local executor), fresh database and database folder
    per run; once with the database on disk (``--blob-dir``, the temporary folder) and once on a
    memory filesystem (``--tmpfs``, /dev/shm), to tell the filesystem's cost from the code's.

  The ratio is harvest-and-store records/s over the limit's, on the ``harvest`` step's duration
  (the step row's timestamps: the limit's work plus storing); target at least 80%. The whole job
  (created to finished) is shown too. Then one more harvest per database folder with timers around
  the main calls says where the step's time goes. For context: a raw fetch of the same pages
  (httpx, bytes only), and the ``oaipmh`` package's dynamic BatchingServer (the test provider,
  tests/support/oai_provider.py, same records and page size, its own process) read the same ways.
- ``validate``: the same records harvested once, then the real ``oai-validate`` job with a
  15-rule set covering every rule type but ``url_exists`` (records/s over the ``validate`` step,
  and the whole job); for context the validator alone (``MetadataRecord.parse`` then
  ``validate()`` per record, the blobs already in memory), and the job once more with a 16th
  rule, ``url_exists``, answered by an in-memory HEAD (no network; the pipeline's UrlChecker is
  swapped inside this benchmark only). Every job's verdict counts must equal the validator's.
- ``memory``: the ``oai-harvest`` job for ``--memory-records`` (100,000) records in a child
  process that samples its own resident set (/proc/self/status VmRSS every 50 ms, with the
  records stored so far) and reports its peak (VmHWM); a 20,000-record harvest in
  another child for comparison. Flat: RSS moves less than 10 MB from 10k to 100k stored records
  and between the two peaks. Target: peak < 300 MB.

Every run is checked (the job succeeded without warnings, every record and deletion stored);
otherwise nothing is saved. Nothing is downloaded; everything lives under temporary folders
removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import importlib.metadata
import json
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"

NETWORK = "BENCH"
#: the benchmark's servers listen here; harvesting reaches it only when told (outbound.py)
LOOPBACK = ["127.0.0.1"]
TARGET_RATIO = 0.80
TARGET_PEAK_MB = 300.0
JOB_TIMEOUT = 600.0
START = datetime(2023, 1, 2, 8, 0, 0, tzinfo=UTC)
RESPONSE_DATE = "2026-11-23T12:00:00Z"
BASE_URL = "http://127.0.0.1/oai"
OAI_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xsi:schemaLocation="http://www.openarchives.org/OAI/2.0/ '
    'http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd">\n'
    f"<responseDate>{RESPONSE_DATE}</responseDate>\n"
)
DC_OPEN = (
    '<oai_dc:dc xmlns:oai_dc="http://www.openarchives.org/OAI/2.0/oai_dc/" '
    'xmlns:dc="http://purl.org/dc/elements/1.1/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xsi:schemaLocation="http://www.openarchives.org/OAI/2.0/oai_dc/ '
    'http://www.openarchives.org/OAI/2.0/oai_dc.xsd">'
)
#: the order fields are written in (the oaipmh package's oai_dc writer uses the same one)
DC_FIELDS = (
    "title",
    "creator",
    "subject",
    "description",
    "publisher",
    "contributor",
    "date",
    "type",
    "format",
    "identifier",
    "source",
    "language",
    "relation",
    "coverage",
    "rights",
)
PAGE_NAME = re.compile(r"^p(\d{6})$")


# ------------------------------------------------------------------------------------ records

WORD_TEXT = (
    "análisis estudio evaluación desarrollo educación política económica región sostenible "
    "población acción participación comunicación investigación información características "
    "avaliação ensino saúde pública formação gestão produção conservação análise território "
    "relação experiência família violência género jóvenes niños mujeres trabajo agua suelo "
    "biodiversidad cuenca río montaña clima cambio climático energía minería ciudad rural "
    "learning model network data quality health policy growth systems community impact "
    "método modelo datos calidad salud crecimiento sistemas comunidad impacto historia cultura "
    "literatura lengua español portugués indígena memoria archivo biblioteca repositorio"
)
WORDS = WORD_TEXT.split()
FOREIGN = (
    "Ελληνική αρχαιολογία",
    "Русская литература",
    "中国经济发展",
    "日本語の研究",
    "한국 문화",
    "Ñandutí y ñandú",
    "São Paulo — Açores",
    "x < y & z > w",
    "«Comillas» y “citas”",
)
GIVEN = "María José Luis Ana João Beatriz Carlos Sofía Tomás Inês Élodie Zoë Øystein Jürgen Łukasz"
FAMILY = "Pérez González Rodríguez Fernández Gómez Martínez Conceição Araújo Müller Ñúñez Dvořák"
PUBLISHERS = (
    "Universidad Nacional de La Plata",
    "Universidade de São Paulo",
    "Pontificia Universidad Católica del Perú",
    "Universidad de la República",
    "Consejo Nacional de Investigaciones Científicas y Técnicas",
)
TYPES = (
    "info:eu-repo/semantics/article",
    "info:eu-repo/semantics/article",
    "info:eu-repo/semantics/doctoralThesis",
    "info:eu-repo/semantics/masterThesis",
    "info:eu-repo/semantics/bachelorThesis",
    "info:eu-repo/semantics/conferenceObject",
    "info:eu-repo/semantics/book",
    "info:eu-repo/semantics/report",
)
VERSIONS = ("info:eu-repo/semantics/publishedVersion", "info:eu-repo/semantics/acceptedVersion")
RIGHTS = ("info:eu-repo/semantics/openAccess", "info:eu-repo/semantics/embargoedAccess")
LANGUAGES = ("spa", "spa", "spa", "por", "por", "eng")


@dataclass(frozen=True)
class BenchRecord:
    identifier: str
    datestamp: str
    sets: tuple[str, ...]
    deleted: bool
    #: oai_dc field -> values, in DC_FIELDS order; empty for a deletion
    fields: dict[str, list[str]]


def words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def person(rng: random.Random) -> str:
    return f"{rng.choice(FAMILY.split())}, {rng.choice(GIVEN.split())}"


#: the benchmark repository's sets (DSpace-style collection specs); each record is in one or two
SETS = 40


def set_spec(number: int) -> str:
    return f"col_123456789_{number}"


def make_record(number: int) -> BenchRecord:
    """Record `number` of the benchmark repository (the same on every call and machine).

    About one in ten breaks a rule of the benchmark rule set on purpose (no date, a type or a
    language outside the vocabularies, a too-short title), so verdicts are mixed."""
    rng = random.Random(number * 7919 + 17)
    stamp = START + timedelta(seconds=number * 13 + rng.randrange(13))
    sets = tuple(sorted({set_spec(rng.randrange(SETS)) for _ in range(rng.choice((1, 2)))}))
    identifier = f"oai:repositorio.bench.example:123456789/{number}"
    if rng.random() < 0.02:
        return BenchRecord(identifier, stamp.strftime("%Y-%m-%dT%H:%M:%SZ"), sets, True, {})
    flaw = rng.random()
    title = words(rng, 4, 11).capitalize()
    if rng.random() < 0.25:
        title += f": {rng.choice(FOREIGN)}"
    year = rng.randint(1985, 2025)
    fields: dict[str, list[str]] = {
        "title": [title if flaw >= 0.02 else "T"],
        "creator": [person(rng) for _ in range(rng.randint(1, 3))],
        "subject": [words(rng, 1, 3) for _ in range(rng.randint(1, 4))],
        "description": [words(rng, 12, 50).capitalize() + "."],
        "publisher": [rng.choice(PUBLISHERS)],
        "contributor": [person(rng)] if rng.random() < 0.5 else [],
        "date": []
        if flaw < 0.05
        else [f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"],
        "type": [rng.choice(TYPES) if flaw >= 0.07 else "Artículo", rng.choice(VERSIONS)],
        "format": ["application/pdf"],
        "identifier": [
            f"https://repositorio.bench.example/handle/123456789/{number}",
            f"https://doi.org/10.{rng.randint(1000, 99999)}/bench.{number}",
        ],
        "source": [
            f"Revista {words(rng, 2, 4)}; Vol. {rng.randint(1, 40)} Núm. {rng.randint(1, 4)}"
        ],
        "language": [rng.choice(LANGUAGES) if flaw >= 0.09 else "español"],
        "relation": [],
        "coverage": [],
        "rights": [rng.choice(RIGHTS), "https://creativecommons.org/licenses/by/4.0/"],
    }
    return BenchRecord(identifier, stamp.strftime("%Y-%m-%dT%H:%M:%SZ"), sets, False, fields)


def dc_xml(fields: dict[str, list[str]]) -> str:
    parts = [DC_OPEN]
    for name in DC_FIELDS:
        for value in fields.get(name, ()):
            parts.append(f"\n<dc:{name}>{html.escape(value, quote=False)}</dc:{name}>")
    parts.append("\n</oai_dc:dc>")
    return "".join(parts)


def record_xml(record: BenchRecord) -> str:
    status = ' status="deleted"' if record.deleted else ""
    specs = "".join(f"<setSpec>{spec}</setSpec>" for spec in record.sets)
    header = (
        f"<header{status}><identifier>{record.identifier}</identifier>"
        f"<datestamp>{record.datestamp}</datestamp>{specs}</header>"
    )
    if record.deleted:
        return f"<record>{header}</record>\n"
    return f"<record>{header}<metadata>{dc_xml(record.fields)}</metadata></record>\n"


def page_name(number: int) -> str:
    return f"p{number:06d}"


@dataclass
class Corpus:
    """The pre-rendered pages of one benchmark repository."""

    folder: Path
    records: int
    page_size: int
    pages: int
    deleted: int
    page_bytes: int
    metadata_bytes: int

    @property
    def live(self) -> int:
        return self.records - self.deleted


def render_corpus(folder: Path, records: int, page_size: int) -> Corpus:
    """Identify, ListSets and every ListRecords page of `records` records, as files in
    `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    earliest = make_record(0).datestamp
    (folder / "identify.xml").write_text(
        OAI_HEAD
        + f'<request verb="Identify">{BASE_URL}</request>\n<Identify>'
        + "<repositoryName>Repositorio de prueba (benchmark)</repositoryName>"
        + f"<baseURL>{BASE_URL}</baseURL><protocolVersion>2.0</protocolVersion>"
        + "<adminEmail>oai@bench.example</adminEmail>"
        + f"<earliestDatestamp>{earliest}</earliestDatestamp>"
        + "<deletedRecord>persistent</deletedRecord>"
        + "<granularity>YYYY-MM-DDThh:mm:ssZ</granularity></Identify>\n</OAI-PMH>\n",
        encoding="utf-8",
    )
    # ListSets, which the harvest asks first (the set names its provider shows)
    (folder / "sets.xml").write_text(
        OAI_HEAD
        + f'<request verb="ListSets">{BASE_URL}</request>\n<ListSets>'
        + "".join(
            f"<set><setSpec>{set_spec(n)}</setSpec><setName>Colección {n}</setName></set>"
            for n in range(SETS)
        )
        + "</ListSets>\n</OAI-PMH>\n",
        encoding="utf-8",
    )
    pages = -(-records // page_size)
    deleted = page_bytes = metadata_bytes = 0
    for number in range(pages):
        first = number * page_size
        chunk = [make_record(n) for n in range(first, min(first + page_size, records))]
        deleted += sum(record.deleted for record in chunk)
        metadata_bytes += sum(
            len(dc_xml(record.fields).encode()) for record in chunk if not record.deleted
        )
        if number + 1 < pages:
            token = (
                f'<resumptionToken completeListSize="{records}" cursor="{first}">'
                f"{page_name(number + 1)}</resumptionToken>"
            )
        else:
            token = f'<resumptionToken completeListSize="{records}" cursor="{first}"/>'
        request = (
            f'<request verb="ListRecords" metadataPrefix="oai_dc">{BASE_URL}</request>'
            if number == 0
            else f'<request verb="ListRecords" resumptionToken="{page_name(number)}">'
            f"{BASE_URL}</request>"
        )
        body = (
            OAI_HEAD
            + request
            + "\n<ListRecords>\n"
            + "".join(record_xml(record) for record in chunk)
            + token
            + "\n</ListRecords>\n</OAI-PMH>\n"
        ).encode()
        page_bytes += len(body)
        (folder / f"{page_name(number)}.xml").write_bytes(body)
    return Corpus(folder, records, page_size, pages, deleted, page_bytes, metadata_bytes)


# ---------------------------------------------------------------------------- static server


def error_page(code: str, message: str) -> bytes:
    return (
        OAI_HEAD
        + f"<request>{BASE_URL}</request>\n"
        + f'<error code="{code}">{html.escape(message)}</error>\n</OAI-PMH>\n'
    ).encode()


def static_handler(folder: Path) -> type[BaseHTTPRequestHandler]:
    """Answers Identify, ListSets and ListRecords from the files of `folder` (token = next
    page's name)."""

    class PageHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.answer(urlsplit(self.path).query)

        def do_POST(self) -> None:
            length = min(int(self.headers.get("Content-Length") or 0), 65536)
            self.answer(self.rfile.read(length).decode("utf-8", "replace"))

        def answer(self, query: str) -> None:
            arguments = {k: v[0] for k, v in parse_qs(query).items()}
            verb = arguments.get("verb")
            token = arguments.get("resumptionToken")
            if verb == "Identify":
                body = (folder / "identify.xml").read_bytes()
            elif verb == "ListSets" and token is None:
                body = (folder / "sets.xml").read_bytes()
            elif verb == "ListRecords" and token is None:
                body = (folder / f"{page_name(0)}.xml").read_bytes()
            elif verb == "ListRecords" and token and PAGE_NAME.match(token):
                path = folder / f"{token}.xml"
                body = (
                    path.read_bytes()
                    if path.is_file()
                    else error_page("badResumptionToken", f"unknown token {token}")
                )
            else:
                body = error_page("badVerb", f"not served here: {query[:100]}")
            self.send_response(200)
            self.send_header("Content-Type", "text/xml; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return PageHandler


def serve_static(folder: Path) -> None:
    """Run the page server until killed; its URL goes to stdout first."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), static_handler(folder))
    server.daemon_threads = True
    print(f"http://127.0.0.1:{server.server_port}/oai", flush=True)
    server.serve_forever(poll_interval=0.2)


def serve_dynamic(records: int, page_size: int) -> None:
    """The oaipmh package's BatchingServer (the test provider) over the same records."""
    sys.path.insert(0, str(REPO_DIR))
    from tests.support.oai_provider import Item, Repository, start_provider

    items = []
    for number in range(records):
        record = make_record(number)
        items.append(
            Item(
                identifier=record.identifier,
                datestamp=datetime.strptime(record.datestamp, "%Y-%m-%dT%H:%M:%SZ"),
                sets=record.sets,
                deleted=record.deleted,
                fields={k: v for k, v in record.fields.items() if v},
            )
        )
    provider = start_provider(Repository(items), batch_size=page_size)
    provider.faults.encodings = ()  # identity, like the static server
    print(provider.url, flush=True)
    threading.Event().wait()


@contextlib.contextmanager
def server_process(*arguments: str) -> Iterator[str]:
    """One of this file's servers in a child process (so it does not share the GIL with the
    harvester); yields its base URL."""
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *arguments],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_DIR,
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"server {arguments} did not start (said {url!r})")
        yield url
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# ------------------------------------------------------------------------------ machine facts


def run_text(*command: str) -> str:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=10, cwd=REPO_DIR, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({exc})"
    return (done.stdout or done.stderr).strip()


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def filesystem_of(path: Path) -> str:
    """The type of the filesystem `path` lives on, from /proc/mounts (e.g. 'ext4 on /')."""
    resolved = str(path.resolve())
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            point = parts[1]
            inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, parts[2]
    return f"{kind} on {best or '?'}"


def creation_cost(root: Path, count: int = 300) -> tuple[float, float]:
    """Microseconds to make one new folder, and one new 760-byte file (open O_EXCL, write,
    close, rename: what a blob costs besides compressing it), on `root`'s filesystem."""
    folder = Path(tempfile.mkdtemp(prefix="probe-", dir=root))
    try:
        start = time.perf_counter()
        for n in range(count):
            os.mkdir(folder / f"d{n}")
        folders = time.perf_counter() - start
        body = b"x" * 760
        start = time.perf_counter()
        for n in range(count):
            temp = folder / f".t{n}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, body)
            os.close(fd)
            os.replace(temp, folder / f"f{n}")
        files = time.perf_counter() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return folders / count * 1e6, files / count * 1e6


def machine_lines(command: list[str], load_before: str, roots: dict[str, Path]) -> list[str]:
    """Facts that make this result comparable with a later one."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = run_text("git", "rev-parse", "--short", "HEAD")
    if run_text("git", "status", "--porcelain", "--untracked-files=no"):
        commit += " + uncommitted changes"
    versions = []
    for name in ("lxml", "httpx", "SQLAlchemy", "oaipmh"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    filesystems = []
    for label, root in roots.items():
        folder_us, file_us = creation_cost(root)
        filesystems.append(
            f"{label} {root} ({filesystem_of(root)}): new folder {folder_us:.0f} µs, "
            f"new 760-byte file {file_us:.0f} µs"
        )
    return [
        f"- date: {run_text('date', '-u')}",
        f"- command: `{' '.join(['python', 'bench/oai.py', *command])}`",
        f"- machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}; "
        f"load average (1/5/15 min) before the run {load_before}, after {load_average()}",
        f"- python {platform.python_version()} ({platform.python_implementation()}), "
        f"SQLite {sqlite3.sqlite_version}; {', '.join(versions)}",
        f"- git commit: {commit}",
        "- file creation on this machine (one thread, 300 each, measured after the run): "
        + "; ".join(filesystems),
    ]


# ------------------------------------------------------------------------------------ engines


class BenchFailed(RuntimeError):
    """A run did not do what it had to (a job failed, records are missing): nothing is saved."""


@dataclass
class JobRun:
    """One job's outcome, timed by the database's own timestamps."""

    state: str
    job_seconds: float  # created -> finished
    steps: dict[str, float]  # step name -> started -> finished
    results: dict[str, Any]  # step name -> result

    def step(self, name: str) -> float:
        return self.steps[name]


@contextlib.contextmanager
def sandbox(
    workdir: Path,
    url: str,
    blob_root: Path,
    *,
    validation: str | None = None,
    rules: dict[str, str] | None = None,
) -> Iterator[Any]:
    """An Engine on the embedded default (SQLite file, local executor) with one network, a
    fresh database and a fresh database folder under `blob_root`; removed afterwards."""
    from shelfwork.config import Settings
    from shelfwork.engine import Engine

    # the metadata database (which holds the blob store) lives under `blob_root`
    folder = Path(tempfile.mkdtemp(prefix="engine-", dir=blob_root))
    rules_dir = folder / "rules"
    rules_dir.mkdir()
    for name, text in (rules or {}).items():
        (rules_dir / name).write_text(text, encoding="utf-8")
    network: dict[str, Any] = {"acronym": NETWORK, "name": "Benchmark repository", "base_url": url}
    if validation is not None:
        network["validation"] = validation
    settings = Settings(
        database_url=f"sqlite:///{folder / 'shelfwork.db'}",
        pipeline_modules=["shelfwork.pipelines.oai"],
        systems={
            "oai": {
                "rules_dir": str(rules_dir),
                "allow_private_hosts": LOOPBACK,  # the benchmark's servers
                "networks": [network],
            }
        },
    )
    engine = Engine(settings, kind="bench")
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()
        shutil.rmtree(folder, ignore_errors=True)


def run_job(engine: Any, pipeline: str, params: dict[str, Any]) -> JobRun:
    submitted = engine.submit(pipeline, {"network": NETWORK, **params})
    view = engine.wait(submitted.job_id, timeout=JOB_TIMEOUT)
    if view.state != "succeeded":
        raise BenchFailed(f"{pipeline} job {view.id}: {view.state}: {view.error}")
    if view.warnings:
        raise BenchFailed(f"{pipeline} job {view.id} warned: {view.warnings}")
    return JobRun(
        state=view.state,
        job_seconds=(view.finished_at - view.created_at).total_seconds(),
        steps={step.name: step.duration or 0.0 for step in view.steps},
        results={step.name: step.result for step in view.steps},
    )


def harvest_job(engine: Any, corpus: Corpus) -> JobRun:
    """A full harvest, checked against what the repository holds."""
    run = run_job(engine, "oai-harvest", {"incremental": False})
    done = run.results["finish"]
    if (done["total"], done["deleted"], done["bad"]) != (corpus.live, corpus.deleted, 0):
        raise BenchFailed(
            f"harvest stored {done['total']} records and {done['deleted']} deletions "
            f"({done['bad']} refused); the repository has {corpus.live} and {corpus.deleted}"
        )
    return run


# ------------------------------------------------------------------------------------ harvest


def client_pages(url: str, expected: int) -> float:
    """Seconds for OaiClient to fetch and parse every page (the client-side limit)."""
    from shelfwork.connectors.oaipmh import OaiClient
    from shelfwork.outbound import AddressPolicy

    start = time.perf_counter()
    with OaiClient(url, addresses=AddressPolicy.allowing(LOOPBACK)) as client:
        records = sum(len(page.records) for page in client.pages("oai_dc"))
    elapsed = time.perf_counter() - start
    if records != expected:
        raise BenchFailed(f"the client read {records} records from {url}, not {expected}")
    return elapsed


TOKEN_TEXT = re.compile(rb"<resumptionToken[^>]*>([^<]+)</resumptionToken>")


def raw_pages(url: str, pages: int) -> float:
    """Seconds to fetch every page's bytes with httpx (no parsing): what the server serves."""
    import httpx

    start = time.perf_counter()
    fetched = 0
    with httpx.Client(timeout=120) as client:
        params = {"verb": "ListRecords", "metadataPrefix": "oai_dc"}
        while True:
            body = client.get(url, params=params).content
            fetched += 1
            found = TOKEN_TEXT.search(body)
            if found is None:
                break
            params = {"verb": "ListRecords", "resumptionToken": found.group(1).decode()}
    elapsed = time.perf_counter() - start
    if fetched != pages:
        raise BenchFailed(f"raw fetch got {fetched} pages from {url}, not {pages}")
    return elapsed


@dataclass
class Series:
    """Runs of one measurement, in seconds for `records` records."""

    label: str
    records: int
    runs: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs)

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    def rates(self) -> str:
        return ", ".join(f"{self.records / run:,.0f}" for run in sorted(self.runs))


def measure_harvest(
    workdir: Path, corpus: Corpus, repeat: int, blob_roots: dict[str, Path], dynamic: bool
) -> dict[str, Series]:
    """The client-side limit and harvest-and-store (per blob root) taking turns, then the
    dynamic provider for context."""
    n = corpus.records
    series: dict[str, Series] = {"limit": Series("client-side limit", n)}
    for label in blob_roots:
        series[f"step:{label}"] = Series(f"harvest step, database on {label}", n)
        series[f"job:{label}"] = Series(f"whole job, database on {label}", n)
    series["raw"] = Series("raw fetch", n)

    with server_process("serve-static", str(corpus.folder)) as url:
        client_pages(url, n)  # warm-up: imports, the page cache, the server's threads

        def limit() -> None:
            series["limit"].runs.append(client_pages(url, n))

        def raw() -> None:
            series["raw"].runs.append(raw_pages(url, corpus.pages))

        def harvest(label: str, root: Path) -> Callable[[], None]:
            def measure() -> None:
                with sandbox(workdir, url, root) as engine:
                    run = harvest_job(engine, corpus)
                series[f"step:{label}"].runs.append(run.step("harvest"))
                series[f"job:{label}"].runs.append(run.job_seconds)

            return measure

        turns = [limit, *(harvest(label, root) for label, root in blob_roots.items()), raw]
        for number in range(repeat):
            shift = number % len(turns)  # each side goes first in turn
            for measure in turns[shift:] + turns[:shift]:
                measure()
            done = ", ".join(
                f"{s.label} {s.records / s.runs[-1]:,.0f}/s" for s in series.values() if s.runs
            )
            print(f"run {number + 1}/{repeat}: {done}", file=sys.stderr)

    if dynamic:
        series["dynamic"] = Series("oaipmh BatchingServer, OaiClient", n)
        series["dynamic-raw"] = Series("oaipmh BatchingServer, raw fetch", n)
        with server_process("serve-dynamic", str(n), str(corpus.page_size)) as url:
            client_pages(url, n)
            for _ in range(min(repeat, 2)):
                series["dynamic"].runs.append(client_pages(url, n))
                series["dynamic-raw"].runs.append(raw_pages(url, corpus.pages))
    return series


PARTS = (
    ("fetch + parse (`OaiClient._attempt`)", "fetch"),
    ("blobs: insert (`MetadataStore.add_packed`, one executemany per page)", "put"),
    ("blobs: gzip (`packed_all`, on the fetching thread)", "gzip"),
    ("catalog rows (`snapshots.upsert`)", "upsert"),
)


@contextlib.contextmanager
def part_timers() -> Iterator[dict[str, float]]:
    """Wall time spent in the harvest's main calls while the block runs (one job at a time)."""
    from shelfwork.connectors.oaipmh import OaiClient
    from shelfwork.pipelines.oai import harvest, storage

    spent = dict.fromkeys((key for _, key in PARTS), 0.0)
    targets: list[tuple[Any, str, str]] = [
        (OaiClient, "_attempt", "fetch"),
        (storage.MetadataStore, "add_packed", "put"),
        (harvest, "packed_all", "gzip"),
        (harvest, "upsert", "upsert"),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]

    def timer(original: Callable[..., Any], key: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start

        return timed

    for (owner, name, original), (_, _, key) in zip(originals, targets, strict=True):
        setattr(owner, name, timer(original, key))
    try:
        yield spent
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def harvest_breakdown(
    workdir: Path, corpus: Corpus, blob_roots: dict[str, Path]
) -> dict[str, tuple[float, dict[str, float]]]:
    """One more harvest per blob root with timers: blob root -> (step seconds, parts)."""
    found = {}
    with server_process("serve-static", str(corpus.folder)) as url:
        for label, root in blob_roots.items():
            with sandbox(workdir, url, root) as engine, part_timers() as spent:
                run = harvest_job(engine, corpus)
            found[label] = (run.step("harvest"), dict(spent))
    return found


def breakdown_report(
    corpus: Corpus, breakdown: dict[str, tuple[float, dict[str, float]]]
) -> list[str]:
    labels = list(breakdown)
    lines = [
        "",
        "Where the `harvest` step's time goes (one more run per database folder, timers around the "
        "calls; µs per record, share of the step). Fetching, parsing, hashing and gzipping run on "
        "the fetching thread beside the storing thread, so their wall times overlap the rest and "
        "include waits for the GIL:",
        "",
        "| part | " + " | ".join(f"database on {label}" for label in labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    rows: list[tuple[str, list[str]]] = [
        (
            name,
            [
                f"{breakdown[label][1][key] / corpus.records * 1e6:.0f} µs "
                f"({breakdown[label][1][key] / breakdown[label][0]:.0%})"
                for label in labels
            ],
        )
        for name, key in PARTS
    ]
    rest = []
    for label in labels:
        step, spent = breakdown[label]
        other = step - spent["fetch"] - spent["put"] - spent["upsert"]
        rest.append(f"{other / corpus.records * 1e6:.0f} µs ({other / step:.0%})")
    rows.append(("the rest (items, rows, snapshot counters, checkpoint, commit)", rest))
    rows.append(
        (
            "the whole step",
            [f"{breakdown[label][0] / corpus.records * 1e6:.0f} µs (100%)" for label in labels],
        )
    )
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return lines


def harvest_report(
    corpus: Corpus, series: dict[str, Series], repeat: int, blob_roots: dict[str, Path]
) -> list[str]:
    limit = series["limit"]
    first = next(iter(blob_roots))
    lines = [
        f"- repository: {corpus.records:,} oai_dc records ({corpus.deleted} deletions), "
        f"{corpus.pages} ListRecords pages of {corpus.page_size}, "
        f"{corpus.page_bytes / corpus.records:,.0f} bytes per record on the wire, metadata "
        f"{corpus.metadata_bytes / corpus.live:,.0f} bytes per live record; pre-rendered files "
        "served by a threaded http.server in its own process on loopback, no compression",
        f"- each side {repeat} times, taking turns (each goes first in turn); median shown. "
        "Harvest-and-store: the `oai-harvest` job in an Engine on SQLite (file, WAL) with the "
        "local executor; fresh database and database folder per run",
        "",
        "| what | records/s | s per run | vs client-side limit | target ≥ 80% |",
        "|---|---:|---:|---:|---|",
        f"| client-side limit: OaiClient fetch + parse, nothing stored | {limit.rate:,.0f} "
        f"| {limit.seconds:.2f} | 100% | |",
    ]
    for label, root in blob_roots.items():
        for kind, name in (("step", "`harvest` step"), ("job", "whole `oai-harvest` job")):
            entry = series[f"{kind}:{label}"]
            ratio = entry.rate / limit.rate
            verdict = ("PASS" if ratio >= TARGET_RATIO else "FAIL") if kind == "step" else ""
            lines.append(
                f"| harvest-and-store, {name}, database on {label} ({filesystem_of(root)}) "
                f"| {entry.rate:,.0f} | {entry.seconds:.2f} | {ratio:.0%} | {verdict} |"
            )
    raw = series["raw"]
    lines.append(
        f"| raw fetch of the same pages (httpx, bytes only) | {raw.rate:,.0f} | "
        f"{raw.seconds:.2f} | {raw.rate / limit.rate:.0%} | |"
    )
    if "dynamic" in series:
        for key, name in (
            ("dynamic", "oaipmh BatchingServer (dynamic), OaiClient fetch + parse"),
            ("dynamic-raw", "oaipmh BatchingServer (dynamic), raw fetch"),
        ):
            entry = series[key]
            lines.append(
                f"| {name} | {entry.rate:,.0f} | {entry.seconds:.2f} "
                f"| {entry.rate / limit.rate:.0%} | |"
            )
    headline = series[f"step:{first}"].rate / limit.rate
    lines += [
        "",
        f"Verdict: {'PASS' if headline >= TARGET_RATIO else 'FAIL'}: harvest-and-store runs at "
        f"{headline:.0%} of the client-side limit with database on {first} (target "
        f"{TARGET_RATIO:.0%})"
        + "".join(
            f"; {series[f'step:{label}'].rate / limit.rate:.0%} with database on {label}"
            for label in list(blob_roots)[1:]
        )
        + ".",
        "",
        "All runs, records/s (best first):",
    ]
    lines += [f"- {entry.label}: {entry.rates()}" for entry in series.values()]
    return lines


# --------------------------------------------------------------------------------- validation

RULES_15 = """
name = "bench-15"
description = "15 rules over the rule types but url_exists (DRIVER-like oai_dc checks)"

[[rules]]
id = "title-length"
type = "content_length"
field = "dc.title"
min_length = 3
max_length = 1000

[[rules]]
id = "one-title"
type = "xpath_occurrence"
xpath = "//dc:title"
quantifier = "ONE_ONLY"

[[rules]]
id = "creator"
type = "content_length"
field = "dc.creator"
min_length = 3

[[rules]]
id = "creator-inverted"
type = "regex"
field = "dc.creator"
pattern = "[^,]+, .+"
quantifier = "ALL"
mandatory = false

[[rules]]
id = "description"
type = "content_length"
field = "dc.description"
min_length = 20
max_length = 20000
quantifier = "ZERO_OR_MORE"
mandatory = false

[[rules]]
id = "driver-type"
type = "controlled_vocabulary"
field = "dc.type"
values = [
  "info:eu-repo/semantics/article", "info:eu-repo/semantics/bachelorThesis",
  "info:eu-repo/semantics/masterThesis", "info:eu-repo/semantics/doctoralThesis",
  "info:eu-repo/semantics/book", "info:eu-repo/semantics/bookPart",
  "info:eu-repo/semantics/review", "info:eu-repo/semantics/conferenceObject",
  "info:eu-repo/semantics/lecture", "info:eu-repo/semantics/workingPaper",
  "info:eu-repo/semantics/preprint", "info:eu-repo/semantics/report",
  "info:eu-repo/semantics/annotation", "info:eu-repo/semantics/contributionToPeriodical",
  "info:eu-repo/semantics/patent", "info:eu-repo/semantics/other",
]

[[rules]]
id = "version"
type = "controlled_vocabulary"
field = "dc.type"
file = "versions.txt"
mandatory = false

[[rules]]
id = "access"
type = "controlled_vocabulary"
field = "dc.rights"
values = [
  "info:eu-repo/semantics/openAccess", "info:eu-repo/semantics/embargoedAccess",
  "info:eu-repo/semantics/restrictedAccess", "info:eu-repo/semantics/closedAccess",
]

[[rules]]
id = "language-iso639-3"
type = "regex"
field = "dc.language"
pattern = "[a-z]{3}"
quantifier = "ALL"

[[rules]]
id = "date-format"
type = "regex"
field = "dc.date"
pattern = "[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?"

[[rules]]
id = "date-range"
type = "year_range"
field = "dc.date"
lower = 100
upper = 1
mandatory = false

[[rules]]
id = "identifier-url"
type = "regex"
field = "dc.identifier"
pattern = "https?://[^ ]+"

[[rules]]
id = "format-mime"
type = "regex"
field = "dc.format"
pattern = "[a-z]+/[a-z0-9.+-]+"
case_sensitive = false
quantifier = "ZERO_OR_MORE"
mandatory = false

[[rules]]
id = "thesis-or-article"
type = "field_expression"
expression = "dc.type=='info:eu-repo/semantics/article' OR dc.type=%'info:eu-repo/semantics/[a-z]+Thesis'"
mandatory = false

[[rules]]
id = "open-and-licensed"
type = "field_expression"
expression = "dc.rights=='info:eu-repo/semantics/openAccess' AND dc.rights=%'https?://creativecommons.org/.*' AND NOT dc.rights=='info:eu-repo/semantics/closedAccess'"
mandatory = false
"""

URL_RULE = """
[[rules]]
id = "identifier-resolves"
type = "url_exists"
field = "dc.identifier"
mandatory = false
"""

VERSIONS = (
    "info:eu-repo/semantics/draft\ninfo:eu-repo/semantics/submittedVersion\n"
    "info:eu-repo/semantics/acceptedVersion\ninfo:eu-repo/semantics/publishedVersion\n"
    "info:eu-repo/semantics/updatedVersion\n"
)
RULES_FILE = "bench.toml"


@contextlib.contextmanager
def answered_urls() -> Iterator[list[str]]:
    """Inside this benchmark only: the validate pipeline's URL checker asks an in-memory HEAD
    that answers 200 at once (no network). Yields the URLs it was asked."""
    import functools

    from shelfwork.pipelines.oai import publish

    asked: list[str] = []

    def head(url: str) -> tuple[int, str | None]:
        asked.append(url)
        return 200, None

    original = publish.UrlChecker
    publish.UrlChecker = functools.partial(original, head=head)  # type: ignore[misc]
    try:
        yield asked
    finally:
        publish.UrlChecker = original  # type: ignore[misc]


@dataclass
class ValidatorAlone:
    """One pass of the validator over the snapshot's blobs, already read into memory."""

    seconds: float
    parse_seconds: float
    validate_seconds: float
    valid: int


def validator_pass(blobs: list[tuple[str, bytes]], rules_dir: Path) -> ValidatorAlone:
    from shelfwork.pipelines.oai.record import MetadataRecord
    from shelfwork.pipelines.oai.validation import RuleSet, validate

    ruleset = RuleSet.load(rules_dir / RULES_FILE)
    namespaces = ruleset.namespace_table()
    year = datetime.now().year
    parsing = judging = 0.0
    valid = 0
    clock = time.perf_counter
    start = clock()
    for identifier, data in blobs:
        t0 = clock()
        record = MetadataRecord.parse(data, identifier, namespaces=namespaces)
        t1 = clock()
        verdict = validate(record, ruleset, year=year)
        judging += clock() - t1
        parsing += t1 - t0
        valid += verdict.valid
    return ValidatorAlone(clock() - start, parsing, judging, valid)


@dataclass
class ValidationResults:
    live: int
    harvest_seconds: float
    read_seconds: float
    rules_15: list[JobRun] = field(default_factory=list)
    rules_16: list[JobRun] = field(default_factory=list)
    alone: list[ValidatorAlone] = field(default_factory=list)
    valid: int = 0
    invalid: int = 0
    urls_asked: int = 0


def measure_validation(
    workdir: Path, corpus: Corpus, repeat: int, blob_root: Path
) -> ValidationResults:
    """Harvest once, then the validate job (15 rules), the validator alone and the job with
    the URL rule added, taking turns."""
    from shelfwork.pipelines.oai.snapshots import HARVESTED, Snapshots
    from shelfwork.pipelines.oai.storage import MetadataStore

    rules = {RULES_FILE: RULES_15, "versions.txt": VERSIONS}
    with (
        server_process("serve-static", str(corpus.folder)) as url,
        sandbox(workdir, url, blob_root, validation=RULES_FILE, rules=rules) as engine,
    ):
        harvested = harvest_job(engine, corpus)
        snapshot_id = harvested.results["finish"]["snapshot"]
        config = engine.settings.systems["oai"]
        rules_dir = Path(config["rules_dir"])
        store = MetadataStore(engine.store)
        snapshots = Snapshots(engine.store)
        rows = snapshots.records(snapshot_id, limit=corpus.records + 1, include_deleted=False)
        start = time.perf_counter()
        stored = store.get_many(NETWORK, [row.metadata_hash for row in rows])
        blobs = [(row.identifier, stored[row.metadata_hash]) for row in rows]
        results = ValidationResults(
            corpus.live, harvested.step("harvest"), time.perf_counter() - start
        )
        if len(blobs) != corpus.live:
            raise BenchFailed(f"{len(blobs)} live records in the snapshot, not {corpus.live}")
        expected_valid = validator_pass(blobs, rules_dir).valid  # warm-up, and the answer

        def validated(label: str) -> JobRun:
            """One validate job over the snapshot, its verdicts checked. The snapshot goes back
            to `harvested` first: the pipeline skips a snapshot already validated with the
            same rules, and every run here must do the work."""
            snapshots.set(snapshot_id, state=HARVESTED)
            run = run_job(engine, "oai-validate", {})
            done = run.results["finish"]
            if done is None:
                raise BenchFailed(f"{label}: the job did not validate: {run.results['begin']}")
            if (done["valid"], done["invalid"]) != (expected_valid, corpus.live - expected_valid):
                raise BenchFailed(
                    f"{label}: the job found {done['valid']} valid and {done['invalid']} invalid; "
                    f"the validator alone {expected_valid} valid of {corpus.live}"
                )
            return run

        def job_15() -> None:
            results.rules_15.append(validated("15 rules"))

        def alone() -> None:
            results.alone.append(validator_pass(blobs, rules_dir))

        def job_16() -> None:
            (rules_dir / RULES_FILE).write_text(RULES_15 + URL_RULE, encoding="utf-8")
            try:
                with answered_urls() as asked:
                    results.rules_16.append(validated("15 rules + url_exists"))
                results.urls_asked = len(asked)
            finally:
                (rules_dir / RULES_FILE).write_text(RULES_15, encoding="utf-8")

        turns = [job_15, alone, job_16]
        for number in range(repeat):
            shift = number % len(turns)
            for measure in turns[shift:] + turns[:shift]:
                measure()
            print(
                f"run {number + 1}/{repeat}: job {corpus.live / results.rules_15[-1].step('validate'):,.0f}/s, "
                f"alone {corpus.live / results.alone[-1].seconds:,.0f}/s, "
                f"job + url_exists {corpus.live / results.rules_16[-1].step('validate'):,.0f}/s",
                file=sys.stderr,
            )
        results.valid = expected_valid
        results.invalid = corpus.live - expected_valid
    return results


def validation_report(corpus: Corpus, results: ValidationResults, repeat: int) -> list[str]:
    live = results.live

    def median_rate(values: list[float]) -> tuple[float, float]:
        seconds = statistics.median(values)
        return live / seconds, seconds

    step_15 = median_rate([run.step("validate") for run in results.rules_15])
    job_15 = median_rate([run.job_seconds for run in results.rules_15])
    step_16 = median_rate([run.step("validate") for run in results.rules_16])
    alone = median_rate([run.seconds for run in results.alone])
    parse = median_rate([run.parse_seconds for run in results.alone])
    judge = median_rate([run.validate_seconds for run in results.alone])
    lines = [
        f"- snapshot: the {live:,} live records of the harvest above (same generator), "
        f"harvested once by the `oai-harvest` job ({live / results.harvest_seconds:,.0f} "
        "records/s), database on disk",
        "- rule set: 15 rules, every type but `url_exists`: content_length x3, "
        "controlled_vocabulary x3 (two inline, one from a vocabulary file), regex x5, "
        "year_range, field_expression x2, xpath_occurrence; 7 mandatory. "
        f"Verdicts: {results.valid:,} valid, {results.invalid:,} invalid (the generator breaks "
        "about one record in ten on purpose); every run checked against the validator alone",
        f"- each {repeat} times, taking turns; median shown. No transformer set; "
        "`detailed_diagnose` off",
        "",
        "| what | records/s | s per run |",
        "|---|---:|---:|",
        f"| `oai-validate` job, 15 rules: `validate` step | {step_15[0]:,.0f} | {step_15[1]:.2f} |",
        f"| `oai-validate` job, 15 rules: whole job | {job_15[0]:,.0f} | {job_15[1]:.2f} |",
        f"| `oai-validate` job, 15 rules + url_exists (in-memory HEAD, 200): `validate` step "
        f"| {step_16[0]:,.0f} | {step_16[1]:.2f} |",
        f"| validator alone: `MetadataRecord.parse` + `validate()` (15 rules), blobs in memory "
        f"| {alone[0]:,.0f} | {alone[1]:.2f} |",
        f"| &nbsp;&nbsp;&nbsp;of which `MetadataRecord.parse` | {parse[0]:,.0f} | {parse[1]:.2f} |",
        f"| &nbsp;&nbsp;&nbsp;of which `validate()` | {judge[0]:,.0f} | {judge[1]:.2f} |",
        f"| reading the blobs (`MetadataStore.get`, gunzip), once | "
        f"{live / results.read_seconds:,.0f} | {results.read_seconds:.2f} |",
        "",
        f"The url_exists runs asked the in-memory HEAD {results.urls_asked:,} times per run "
        "(two identifiers per record, each URL once).",
        "",
        "All runs, records/s (best first):",
    ]
    for label, values in (
        ("validate step, 15 rules", [run.step("validate") for run in results.rules_15]),
        ("whole job, 15 rules", [run.job_seconds for run in results.rules_15]),
        ("validate step, + url_exists", [run.step("validate") for run in results.rules_16]),
        ("validator alone", [run.seconds for run in results.alone]),
    ):
        shown = ", ".join(f"{live / value:,.0f}" for value in sorted(values))
        lines.append(f"- {label}: {shown}")
    return lines


# ------------------------------------------------------------------------------------- memory


def status_kb(field: str) -> int:
    """A /proc/self/status figure in kB: VmRSS (resident now) or VmHWM (resident at most).

    VmHWM rather than getrusage's ru_maxrss: a child started by fork and exec inherits the
    parent's ru_maxrss, so a large benchmark parent would show up as the harvester's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def rss_kb() -> int:
    return status_kb("VmRSS")


def memory_child(url: str, records: int, workdir: Path, blob_root: Path) -> None:
    """Run in a child process: one harvest, sampling this process's RSS; JSON to stdout."""
    samples: list[tuple[float, float, int]] = []
    with sandbox(workdir, url, blob_root) as engine:
        baseline = rss_kb()
        stop = threading.Event()
        job: dict[str, int] = {}

        def sample() -> None:
            start = time.perf_counter()
            while not stop.wait(0.05):
                done = 0.0
                if "id" in job:
                    view = engine.jobs.get(job["id"], steps=False)
                    done = view.progress_done or 0.0
                samples.append((time.perf_counter() - start, done, rss_kb()))

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        submitted = engine.submit("oai-harvest", {"network": NETWORK, "incremental": False})
        job["id"] = submitted.job_id
        view = engine.wait(submitted.job_id, timeout=JOB_TIMEOUT)
        stop.set()
        sampler.join()
        last = samples[-1][0] if samples else 0.0
        samples.append((last, view.progress_done or 0.0, rss_kb()))  # after the last page
        finish = next((s.result for s in view.steps if s.name == "finish"), None) or {}
        harvest = next((s.duration for s in view.steps if s.name == "harvest"), None)
    peak = status_kb("VmHWM")
    print(
        json.dumps(
            {
                "records": records,
                "state": view.state,
                "error": view.error,
                "stored": (finish.get("total", 0) or 0) + (finish.get("deleted", 0) or 0),
                "harvest_seconds": harvest,
                "baseline_kb": baseline,
                "peak_kb": peak,
                "samples": samples,
            }
        )
    )


@dataclass
class MemoryRun:
    records: int
    harvest_seconds: float
    baseline_kb: int
    peak_kb: int
    samples: list[tuple[float, float, int]]

    def rss_at(self, done: int) -> int | None:
        """RSS at the first sample with at least `done` records (and deletions) stored."""
        for _, stored, rss in self.samples:
            if stored >= done:
                return rss
        return None


def measure_memory(workdir: Path, corpora: list[Corpus], blob_root: Path) -> list[MemoryRun]:
    runs = []
    for corpus in corpora:
        with server_process("serve-static", str(corpus.folder)) as url:
            done = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "memory-child",
                    url,
                    str(corpus.records),
                    str(workdir),
                    str(blob_root),
                ],
                capture_output=True,
                text=True,
                cwd=REPO_DIR,
                timeout=JOB_TIMEOUT,
                check=False,
            )
        if done.returncode != 0:
            raise BenchFailed(f"memory child for {corpus.records} records: {done.stderr[-2000:]}")
        data = json.loads(done.stdout.strip().splitlines()[-1])
        if data["state"] != "succeeded" or data["stored"] != corpus.records:
            raise BenchFailed(
                f"memory child for {corpus.records} records: {data['state']} "
                f"({data['error']}), {data['stored']} stored"
            )
        run = MemoryRun(
            corpus.records,
            data["harvest_seconds"],
            data["baseline_kb"],
            data["peak_kb"],
            [tuple(sample) for sample in data["samples"]],  # type: ignore[misc]
        )
        print(
            f"{corpus.records} records: peak {run.peak_kb / 1024:.0f} MB, "
            f"{corpus.records / run.harvest_seconds:,.0f} records/s",
            file=sys.stderr,
        )
        runs.append(run)
    return runs


def memory_report(runs: list[MemoryRun], page_size: int, blob_root: Path) -> list[str]:
    mb = 1024.0
    largest = max(runs, key=lambda run: run.records)
    marks = [mark for mark in (10_000, 20_000, 50_000, 100_000) if mark <= largest.records]
    lines = [
        f"- each harvest in a fresh child process (the `oai-harvest` job in an Engine on SQLite, "
        f"local executor, database on {filesystem_of(blob_root)}), pages of {page_size} from the "
        "static server; the child samples its own VmRSS every 50 ms with the records stored so "
        "far (the job's progress, per page) and reports its peak (VmHWM, the most it was ever "
        "resident, engine start-up included). psutil is not installed, so /proc is read",
        "",
        "| harvest | records/s | RSS before the job MB | "
        + " | ".join(f"RSS at {mark // 1000}k stored MB" for mark in marks)
        + " | peak RSS MB | target peak < 300 MB |",
        "|---:|---:|---:|" + "---:|" * len(marks) + "---:|---|",
    ]
    for run in runs:
        cells = []
        for mark in marks:
            rss = run.rss_at(mark) if mark <= run.records else None
            cells.append(f"{rss / mb:.0f}" if rss is not None else "-")
        verdict = "PASS" if run.peak_kb / mb < TARGET_PEAK_MB else "FAIL"
        lines.append(
            f"| {run.records:,} records | {run.records / run.harvest_seconds:,.0f} "
            f"| {run.baseline_kb / mb:.0f} | "
            + " | ".join(cells)
            + f" | {run.peak_kb / mb:.0f} | {verdict} |"
        )
    low = largest.rss_at(10_000)
    high = largest.rss_at(largest.records)
    smallest = min(runs, key=lambda run: run.records)
    lines.append("")
    if low is not None and high is not None:
        growth = (high - low) / mb
        peak_gap = (largest.peak_kb - smallest.peak_kb) / mb
        flat = growth < 10.0 and peak_gap < 10.0
        lines.append(
            f"Verdict: {'PASS' if flat and largest.peak_kb / mb < TARGET_PEAK_MB else 'FAIL'}: "
            f"from 10k to {largest.records // 1000}k stored records RSS moved "
            f"{growth:+.1f} MB; peak {largest.peak_kb / mb:.0f} MB for "
            f"{largest.records:,} records vs {smallest.peak_kb / mb:.0f} MB for "
            f"{smallest.records:,} ({peak_gap:+.1f} MB); flat means both moves under 10 MB, "
            f"and the peak must stay under {TARGET_PEAK_MB:.0f} MB."
        )
    return lines


# --------------------------------------------------------------------------------------- main


def section(title: str, command: list[str], load_before: str, roots: dict[str, Path]) -> list[str]:
    return [
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {title} (`bench/oai.py`)",
        "",
        *machine_lines(command, load_before, roots),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve-static"]:
        serve_static(Path(argv[1]))
        return 0
    if argv[:1] == ["serve-dynamic"]:
        serve_dynamic(int(argv[1]), int(argv[2]))
        return 0
    if argv[:1] == ["memory-child"]:
        memory_child(argv[1], int(argv[2]), Path(argv[3]), Path(argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("harvest", "validate", "memory", "all"))
    parser.add_argument("--records", type=int, default=20_000, help="harvest and validate")
    parser.add_argument("--memory-records", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    parser.add_argument(
        "--blob-dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where blob stores go (default: the temporary folder, on disk here)",
    )
    parser.add_argument(
        "--tmpfs",
        type=lambda value: Path(value) if value else None,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="also harvest with the database on this memory filesystem ('' to skip)",
    )
    parser.add_argument("--no-dynamic", action="store_true", help="skip the oaipmh provider")
    parser.add_argument("--no-save", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--markdown", type=Path, help="also write the section to this file")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.records < args.page_size:
        parser.error("--repeat must be at least 1 and --records at least one page")
    load_before = load_average()
    roots = {"disk": args.blob_dir}
    if args.tmpfs and str(args.tmpfs):
        roots["tmpfs"] = args.tmpfs
    workdir = Path(tempfile.mkdtemp(prefix="shelfwork-oai-bench-"))
    blob_roots = {
        label: Path(tempfile.mkdtemp(prefix="oai-bench-", dir=root))
        for label, root in roots.items()
    }
    body: list[str] = []
    try:
        if args.command in ("harvest", "validate", "all"):
            corpus = render_corpus(workdir / "pages-small", args.records, args.page_size)
        if args.command in ("harvest", "all"):
            series = measure_harvest(
                workdir, corpus, args.repeat, blob_roots, dynamic=not args.no_dynamic
            )
            breakdown = harvest_breakdown(workdir, corpus, blob_roots)
            body += [
                "",
                "### Harvest-and-store vs the client-side limit",
                "",
                *harvest_report(corpus, series, args.repeat, blob_roots),
                *breakdown_report(corpus, breakdown),
            ]
        if args.command in ("validate", "all"):
            results = measure_validation(workdir, corpus, args.repeat, blob_roots["disk"])
            body += ["", "### Validation", "", *validation_report(corpus, results, args.repeat)]
        if args.command in ("memory", "all"):
            small = render_corpus(workdir / "pages-20k", 20_000, args.page_size)
            large = render_corpus(workdir / "pages-large", args.memory_records, args.page_size)
            runs = measure_memory(workdir, [small, large], blob_roots["disk"])
            body += ["", "### Memory", "", *memory_report(runs, args.page_size, blob_roots["disk"])]
    except BenchFailed as exc:
        print(f"benchmark failed, nothing saved: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for root in blob_roots.values():
            shutil.rmtree(root, ignore_errors=True)
    titles = {
        "harvest": "OAI-PMH harvest-and-store",
        "validate": "OAI-PMH validation",
        "memory": "OAI-PMH harvest memory",
        "all": "OAI-PMH harvest, validation, memory",
    }
    text = "\n".join(section(titles[args.command], argv, load_before, roots) + body) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    if not args.no_save:
        with RESULTS.open("a", encoding="utf-8") as out:
            out.write("\n" + text)
        print(f"appended to {RESULTS.relative_to(REPO_DIR)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
