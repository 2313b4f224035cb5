"""The rule and transformer sets shipped in examples/oai/ load and work on a record, and the
README's [systems.oai] example is a valid configuration."""

from __future__ import annotations

import re
import shutil
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
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


@pytest.fixture
def published(make_engine: Any, tmp_path: Path) -> Iterator[Any]:
    """The example rule and transformer sets run on a repository, published by INDEX_OAI with
    the default provider settings; yields the provider's source."""
    rules = tmp_path / "rules"
    shutil.copytree(EXAMPLES, rules)
    repository = Repository(example_items(), set_names={**UNUSED_SETS, **SET_NAMES})
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
        yield sources("RI", "https://harvest.example/oai/RI")
    finally:
        provider.stop()


def answer(source: Any, **arguments: str) -> etree._Element:
    body = respond(
        {name: [value] for name, value in arguments.items()},
        source,
        now=datetime.now(UTC),
        page_size=4,
        token_secret=SECRET,
    )
    return etree.fromstring(body)


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
    listed = answer(published, verb="ListSets")
    names = {
        s.findtext(f"{{{OAI}}}setSpec"): s.findtext(f"{{{OAI}}}setName")
        for s in listed.iter(f"{{{OAI}}}set")
    }
    assert names == SET_NAMES  # and not the unused ones on ListSets' first page


def test_admin_emails_are_what_the_oai_pmh_schema_accepts() -> None:
    # OAI-PMH.xsd emailType \S+@(\S+\.)+\S+; the default was oai-admin@localhost, which fails it
    assert all(ADMIN_EMAIL.fullmatch(email) for email in OaiConfig().admin_emails)
    assert OaiConfig(admin_emails=["oai@repo.example.org"]).admin_emails == ["oai@repo.example.org"]
    for bad in ("root@localhost", "nobody", "a b@example.org"):
        with pytest.raises(ValidationError, match="admin_emails"):
            OaiConfig(admin_emails=[bad])
