"""OAI provider: set membership of exposed records

One row per (entry of the OAI provider's target, set it is in), the ancestors of its sets
included, so `set=` is an exact, indexed match on both backends: set specs are case-sensitive,
and matching them with LIKE on the JSON text was not on SQLite. Existing entries are filled in.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: the target whose entries the provider serves (pipelines/oai/exposure.py)
TARGET = "oai"
BATCH = 1000
#: what exposure.exposable keeps: OAI-PMH.xsd setSpecType, at most 500 characters
SET_SPEC = re.compile(r"[A-Za-z0-9\-_.!~*'()]+(?::[A-Za-z0-9\-_.!~*'()]+)*")
MAX_SET_SPEC = 500


def ancestors_and_self(spec: str) -> list[str]:
    if len(spec) > MAX_SET_SPEC or not SET_SPEC.fullmatch(spec):
        return []
    parts = spec.split(":")
    return [":".join(parts[: n + 1]) for n in range(len(parts))]


def upgrade() -> None:
    table = op.create_table(
        "oai_entry_sets",
        sa.Column("network", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("set_spec", sa.String(length=500), nullable=False),
        sa.Column("identifier", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(
            ["network", "target", "identifier"],
            [
                "oai_index_entries.network",
                "oai_index_entries.target",
                "oai_index_entries.identifier",
            ],
            name=op.f("fk_oai_entry_sets_network_oai_index_entries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "network", "target", "set_spec", "identifier", name=op.f("pk_oai_entry_sets")
        ),
    )
    op.create_index(
        "ix_oai_entry_sets_entry", "oai_entry_sets", ["network", "target", "identifier"]
    )
    entries = sa.table(
        "oai_index_entries",
        sa.column("network", sa.String),
        sa.column("target", sa.String),
        sa.column("identifier", sa.String),
        sa.column("sets", sa.JSON),
    )
    conn = op.get_bind()
    rows: list[dict[str, str]] = []
    found = conn.execute(
        sa.select(entries.c.network, entries.c.identifier, entries.c.sets).where(
            entries.c.target == TARGET
        )
    )
    for network, identifier, sets in found:
        specs = {a for spec in sets or () for a in ancestors_and_self(str(spec))}
        rows += [
            {"network": network, "target": TARGET, "set_spec": spec, "identifier": identifier}
            for spec in sorted(specs)
        ]
        if len(rows) >= BATCH:
            conn.execute(table.insert(), rows)
            rows = []
    if rows:
        conn.execute(table.insert(), rows)


def downgrade() -> None:
    op.drop_index("ix_oai_entry_sets_entry", table_name="oai_entry_sets")
    op.drop_table("oai_entry_sets")
