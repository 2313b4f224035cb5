"""built-in full-text search

Hand-written (the models do not describe these tables, see shelfwork.search): one row per indexed
record in `search_documents`, keyed by (network, identifier). shelfwork folds case and accents of
every script itself (SQLite's remove_diacritics only knows Latin) and indexes the folded words:
on SQLite in the FTS5 table `search_fts` (rowid = search_documents.id; unicode61 remove_diacritics
2 as a second line; a trigger drops a record's row when the record goes), on PostgreSQL in a
tsvector column ('simple' configuration: no one language's stemming imposed on multilingual
records) under a GIN index.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FTS_COLUMNS = "title, creators, body"


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    columns: list[sa.Column[object]] = [
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("network", sa.String(64), nullable=False),
        sa.Column("identifier", sa.String(1000), nullable=False),
        sa.Column("datestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sets", sa.JSON(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("creators", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
    ]
    if not sqlite:
        columns.append(sa.Column("document", postgresql.TSVECTOR(), nullable=False))
    op.create_table(
        "search_documents",
        *columns,
        sa.PrimaryKeyConstraint("id", name="pk_search_documents"),
        sa.UniqueConstraint("network", "identifier", name="uq_search_documents_network_identifier"),
    )
    op.create_index(
        "ix_search_documents_network_datestamp", "search_documents", ["network", "datestamp"]
    )
    if not sqlite:
        op.create_index(
            "ix_search_documents_document",
            "search_documents",
            ["document"],
            postgresql_using="gin",
        )
        return
    op.execute(
        f"CREATE VIRTUAL TABLE search_fts USING fts5({FTS_COLUMNS}, "
        "tokenize='unicode61 remove_diacritics 2')"
    )
    op.execute(
        "CREATE TRIGGER search_documents_ad AFTER DELETE ON search_documents BEGIN "
        "DELETE FROM search_fts WHERE rowid = old.id; END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS search_documents_ad")
        op.execute("DROP TABLE IF EXISTS search_fts")
    else:
        op.drop_index("ix_search_documents_document", table_name="search_documents")
    op.drop_index("ix_search_documents_network_datestamp", table_name="search_documents")
    op.drop_table("search_documents")
