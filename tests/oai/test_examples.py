"""The rule and transformer sets shipped in examples/oai/ load and work on a record, and the
README's [systems.oai] example is a valid configuration."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from shelfwork.pipelines.oai.config import OaiConfig
from shelfwork.pipelines.oai.record import MetadataRecord
from shelfwork.pipelines.oai.transform import TransformContext, TransformerSet, apply
from shelfwork.pipelines.oai.validation import RuleSet, validate

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
