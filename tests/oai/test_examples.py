"""The rule and transformer sets shipped in examples/oai/ load and work on a record, and the
README's [systems.oai] example is a valid configuration."""

from __future__ import annotations

import re
import shutil
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from oaipmh import error as oai_error
from pydantic import ValidationError

from shelfwork.pipelines import oai
from shelfwork.pipelines.oai.config import OaiConfig, oai_config
from shelfwork.pipelines.oai.exposure import sources_for
from shelfwork.pipelines.oai.provider import ADMIN_EMAIL, respond
from shelfwork.pipelines.oai.provider import OAI_NS as OAI
from shelfwork.pipelines.oai.record import MetadataRecord
from shelfwork.pipelines.oai.transform import TransformContext, TransformerSet, apply
from shelfwork.pipelines.oai.validation import RuleSet, validate
from tests.support.oai_provider import LOOPBACK_HOSTS, Item, Repository, start_provider
from tests.support.oai_schemas import oai_schema

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "src" / "shelfwork" / "pipelines" / "oai" / "examples"
RECORD = """<oai_dc:dc xmlns:oai_dc="http://www.openarchives.org/OAI/2.0/oai_dc/"
 xmlns:dc="http://purl.org/dc/elements/1.1/">
  <dc:title>Historia de la imprenta.</dc:title>
  <dc:creator>Pérez, Ana</dc:creator>
  <dc:type>Article</dc:type>
  <dc:rights>info:eu-repo/semantics/openAccess</dc:rights>
  <dc:date>2019-05-02</dc:date>
  <dc:subject>imprenta</dc:subject><dc:subject>imprenta</dc:subject><dc:subject> </dc:subject>
  <dc:identifier>https://repo.example/handle/1/2</dc:identifier>
</oai_dc:dc>"""


def test_example_sets_transform_then_validate() -> None:
    rules = RuleSet.load(EXAMPLES / "driver.toml")
    transformers = TransformerSet.load(EXAMPLES / "transform.toml")
    record = MetadataRecord.parse(RECORD.encode(), "oai:repo:2")
    before = validate(record, rules)
    assert not before.valid and before.failed_mandatory == ["type"]
    context = TransformContext(
        network_acronym="RI",
        base_url="https://repo.example/oai",
        harvested_at=datetime(2026, 1, 2, tzinfo=UTC),
        repository_name="Repo",
    )
    outcome = apply(record, transformers, context)
    assert outcome.changed
    assert record.values("dc.type") == ["info:eu-repo/semantics/article"]
    assert record.values("dc.title") == ["Historia de la imprenta"]
    assert record.values("dc.subject") == ["imprenta"]
    assert "reponame:Repo" in record.values("dc.source")
    assert validate(record, rules).valid


def test_readme_oai_table_is_valid() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(\[systems\.oai\].*?)```", readme, re.S)
    assert block is not None
    raw = tomllib.loads(block.group(1))["systems"]["oai"]
    raw["provider_secret"] = "a-test-secret-of-some-length"
    config = OaiConfig.model_validate(raw)
    assert config.networks[0].acronym == "RI"
    assert config.networks[0].properties["index_oai"]


# --- what the provider serves after the example sets ran: valid OAI-PMH 2.0 and oai_dc ----------

SECRET = b"examples-test-secret-0123456789abcdef"
SET_NAMES = {"art": "Artículos", "art:open": "Open access articles", "th": "Tesis"}
#: sets the repository lists without records in them; first, so ListSets needs two pages
UNUSED_SETS = {f"a{n}": f"Unused {n}" for n in range(4)}


def example_items() -> list[Item]:
    start = datetime(2024, 2, 1)
    return [
        Item(
            f"oai:repo:{n}",
            start.replace(minute=n),
            (("art",), ("art:open",), ("th",))[n % 3],
            deleted=n == 7,
            fields={
                "title": [f"Historia de la imprenta {n}."],
                "creator": ["Pérez, Ana"],
                "type": ["thesis" if n % 3 == 2 else "article"],
                "rights": ["info:eu-repo/semantics/openAccess"],
                "date": ["2019-05-02"],
                "subject": ["imprenta", "imprenta"],
                "identifier": [f"https://repo.example/handle/1/{n}"],
            },
        )
        for n in range(12)
    ]


@contextmanager
def publish(make_engine: Any, rules: Path, repository: Repository) -> Iterator[Any]:
    """The example rule and transformer sets run on `repository`, published by INDEX_OAI with
    the default provider settings; yields the engine and the provider's source."""
    if not rules.exists():
        shutil.copytree(EXAMPLES, rules)
    provider = start_provider(repository, batch_size=5)
    try:
        engine = make_engine(
            oai.PIPELINES,
            pipeline_modules=["shelfwork.pipelines.oai"],
            systems={
                "oai": {
                    "allow_private_hosts": LOOPBACK_HOSTS,
                    "rules_dir": str(rules),
                    "networks": [
                        {
                            "acronym": "RI",
                            "name": "Repositorio",
                            "base_url": provider.url,
                            "validation": "driver.toml",
                            "transformation": "transform.toml",
                        }
                    ],
                }
            },
        )
        for pipeline, params in (
            ("oai-harvest", {"incremental": False}),
            ("oai-validate", {}),
            ("oai-index", {"target": "oai"}),
        ):
            job = engine.submit(pipeline, {"network": "RI", **params})
            done = engine.wait(job.job_id, timeout=60)
            assert done.state == "succeeded", done.error
        sources = sources_for(engine.store, oai_config(engine.settings))
        yield engine, sources("RI", "https://harvest.example/oai/RI")
    finally:
        provider.stop()


@pytest.fixture
def published(make_engine: Any, tmp_path: Path) -> Iterator[Any]:
    """The example sets on a repository with named sets; yields the provider's source."""
    repository = Repository(example_items(), set_names={**UNUSED_SETS, **SET_NAMES})
    with publish(make_engine, tmp_path / "rules", repository) as (_, source):
        yield source


def answer(source: Any, **arguments: str) -> etree._Element:
    body = respond(
        {name: [value] for name, value in arguments.items()},
        source,
        now=datetime.now(UTC),
        page_size=4,
        token_secret=SECRET,
    )
    return etree.fromstring(body)


def set_names(listed: etree._Element) -> dict[str | None, str | None]:
    """setSpec -> setName of each set a ListSets answer lists."""
    return {
        s.findtext(f"{{{OAI}}}setSpec"): s.findtext(f"{{{OAI}}}setName")
        for s in listed.iter(f"{{{OAI}}}set")
    }


def test_the_provider_answers_valid_oai_pmh_and_oai_dc(published: Any, tmp_path: Path) -> None:
    schema = oai_schema(tmp_path)
    answers = [
        answer(published, verb="Identify"),
        answer(published, verb="ListMetadataFormats"),
        answer(published, verb="ListSets"),
        answer(published, verb="GetRecord", identifier="oai:repo:1", metadataPrefix="oai_dc"),
        answer(published, verb="GetRecord", identifier="oai:nope", metadataPrefix="oai_dc"),
        answer(published, verb="ListRecords", metadataPrefix="oai_dc", set="art"),
        answer(published, verb="Bogus"),
        # errors whose request is echoed must still be valid
        answer(published, verb="ListRecords", metadataPrefix="oai_dc", set="ART"),
        answer(published, verb="ListRecords", metadataPrefix="marc21"),
        answer(published, verb="ListIdentifiers", resumptionToken="made-up"),
        answer(published, verb="ListSets", resumptionToken="made-up"),
        answer(published, verb="ListMetadataFormats", identifier="oai:nope"),
        answer(
            published,
            verb="ListIdentifiers",
            metadataPrefix="oai_dc",
            set="art",
            **{"from": "2000-01-01", "until": "2999-12-31"},
        ),
        answer(published, verb="ListRecords", metadataPrefix="oai dc"),
        answer(published, verb="ListRecords", metadataPrefix="oai_dc", set="art:"),
    ]
    for verb in ("ListRecords", "ListIdentifiers"):
        page = answer(published, verb=verb, metadataPrefix="oai_dc")
        answers.append(page)
        while (token := page.findtext(f".//{{{OAI}}}resumptionToken")) is not None and token:
            page = answer(published, verb=verb, resumptionToken=token)
            answers.append(page)
    records = [r for a in answers for r in a.iter(f"{{{OAI}}}record")]
    assert len(records) > 12  # the lists and GetRecord brought records with metadata
    for document in answers:
        assert schema.validate(document), (schema.error_log.last_error, etree.tostring(document))


def test_list_sets_carries_the_upstream_set_names(published: Any) -> None:
    names = set_names(answer(published, verb="ListSets"))
    assert names == SET_NAMES  # and not the unused ones on ListSets' first page


def test_admin_emails_are_what_the_oai_pmh_schema_accepts() -> None:
    # OAI-PMH.xsd emailType \S+@(\S+\.)+\S+; the default was oai-admin@localhost, which fails it
    assert all(ADMIN_EMAIL.fullmatch(email) for email in OaiConfig().admin_emails)
    assert OaiConfig(admin_emails=["oai@repo.example.org"]).admin_emails == ["oai@repo.example.org"]
    for bad in ("root@localhost", "nobody", "a b@example.org"):
        with pytest.raises(ValidationError, match="admin_emails"):
            OaiConfig(admin_emails=[bad])


VALID_ANSWER = """<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/">
<responseDate>2024-02-01T10:00:00Z</responseDate>
<request verb="GetRecord" identifier="oai:repo:1" metadataPrefix="oai_dc">https://h.example/oai</request>
<GetRecord><record><header><identifier>oai:repo:1</identifier>
<datestamp>2024-02-01T09:00:00Z</datestamp><setSpec>art:open</setSpec></header>
<metadata><oai_dc:dc xmlns:oai_dc="http://www.openarchives.org/OAI/2.0/oai_dc/"
 xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title xml:lang="es">Historia</dc:title>
<dc:date>2019</dc:date></oai_dc:dc></metadata></record></GetRecord></OAI-PMH>"""


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("<dc:date>2019", '<dc:date type="issued">2019'),  # SimpleLiteral: xml:lang only
        ("Historia</dc:title>", "<b>Historia</b></dc:title>"),  # text only
        ("<dc:date>2019</dc:date>", "<dc:issued>2019</dc:issued>"),  # not one of the 15
        ("T09:00:00Z</datestamp>", "T09:00:00+01:00</datestamp>"),  # UTC with Z only
        ("<setSpec>art:open", "<setSpec>art:"),  # setSpecType
        ("<header>", '<header status="gone">'),  # statusType: deleted
        ('metadataPrefix="oai_dc"', 'metadataPrefix="oai dc"'),  # metadataPrefixType
        ("<dc:date>2019</dc:date>", '<x:extra xmlns:x="urn:x">1</x:extra>'),
        ("</oai_dc:dc></metadata>", '</oai_dc:dc></metadata><about><x xmlns="urn:x"/></about>'),
        ("</responseDate>", "</responseDate><responseDate>2024-02-01T10:00:00Z</responseDate>"),
    ],
)
def test_the_test_schemas_refuse_what_the_real_ones_refuse(
    tmp_path: Path, old: str, new: str
) -> None:
    # the schemas are written for these tests: check that they are not too lenient to catch
    # what OAI-PMH.xsd, oai_dc.xsd and simpledc20021212.xsd refuse
    schema = oai_schema(tmp_path)
    assert schema.validate(etree.fromstring(VALID_ANSWER)), schema.error_log.last_error
    assert old in VALID_ANSWER
    assert not schema.validate(etree.fromstring(VALID_ANSWER.replace(old, new, 1)))


VALID_IDENTIFY = """<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/">
<responseDate>2024-02-01T10:00:00Z</responseDate>
<request verb="Identify">https://h.example/oai</request>
<Identify><repositoryName>R</repositoryName><baseURL>https://h.example/oai</baseURL>
<protocolVersion>2.0</protocolVersion><adminEmail>oai@h.example</adminEmail>
<earliestDatestamp>2024-01-01T00:00:00Z</earliestDatestamp>
<deletedRecord>persistent</deletedRecord><granularity>YYYY-MM-DDThh:mm:ssZ</granularity>
</Identify></OAI-PMH>"""


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("oai@h.example", "oai-admin@localhost"),  # emailType
        (">persistent<", ">sometimes<"),  # deletedRecordType
        (">2.0<", ">2.1<"),  # protocolVersionType
        ("</granularity>", '</granularity><description><x xmlns="urn:x"/></description>'),
    ],
)
def test_the_test_schemas_refuse_a_bad_identify(tmp_path: Path, old: str, new: str) -> None:
    schema = oai_schema(tmp_path)
    assert schema.validate(etree.fromstring(VALID_IDENTIFY)), schema.error_log.last_error
    assert old in VALID_IDENTIFY
    assert not schema.validate(etree.fromstring(VALID_IDENTIFY.replace(old, new, 1)))


def harvest_warnings(engine: Any) -> list[str]:
    jobs = engine.jobs.list(limit=50)
    harvest = next(j for j in jobs if j.pipeline == "oai-harvest")
    return [str(w) for w in engine.jobs.get(harvest.id).warnings]


def test_a_repository_without_sets_is_exposed_without_a_set_hierarchy(
    make_engine: Any, tmp_path: Path
) -> None:
    # the upstream answers ListSets with noSetHierarchy: no warning, and the provider, with no
    # set to show, answers noSetHierarchy as well (OAI-PMH 2.0, 4.6 and 3.6)
    items = [replace(item, sets=()) for item in example_items()]
    with publish(make_engine, tmp_path / "rules", Repository(items)) as (engine, source):
        assert not [w for w in harvest_warnings(engine) if "ListSets" in w]
        listed = answer(source, verb="ListSets")
        assert [e.get("code") for e in listed.iter(f"{{{OAI}}}error")] == ["noSetHierarchy"]
        by_set = answer(source, verb="ListIdentifiers", metadataPrefix="oai_dc", set="art")
        assert [e.get("code") for e in by_set.iter(f"{{{OAI}}}error")] == ["noSetHierarchy"]
        every = answer(source, verb="ListIdentifiers", metadataPrefix="oai_dc")
        assert len(list(every.iter(f"{{{OAI}}}header"))) == 4  # the first page: records there
        schema = oai_schema(tmp_path)
        assert schema.validate(listed), schema.error_log.last_error


class SetsRefused(Repository):
    """A repository whose ListSets answers an error (its records are in sets all the same)."""

    def listSets(self, cursor: int = 0, batch_size: int = 10) -> list[tuple[str, str, None]]:
        raise oai_error.BadArgumentError("ListSets is switched off here")


def test_a_failing_list_sets_leaves_the_specs_as_names(make_engine: Any, tmp_path: Path) -> None:
    # names only label sets: the harvest goes on with a warning, and ListSets shows the specs
    repository = SetsRefused(example_items(), set_names=SET_NAMES)
    with publish(make_engine, tmp_path / "rules", repository) as (engine, source):
        assert [w for w in harvest_warnings(engine) if "ListSets failed" in w]
        names = set_names(answer(source, verb="ListSets"))
        assert names == {spec: spec for spec in SET_NAMES}
        art = answer(source, verb="ListIdentifiers", metadataPrefix="oai_dc", set="art")
        assert art.find(f"{{{OAI}}}error") is None
