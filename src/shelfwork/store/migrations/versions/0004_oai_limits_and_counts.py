"""OAI: per-network request limits; which harvest delivered each catalog row

`oai_networks.limits` holds a network's limits on one request to its repository (byte cap,
deadline, timeout, retries and waits; None: the defaults). `oai_records.harvested_by` is the
snapshot whose harvest last delivered the row, so a harvest counts distinct records: a list
restarted after a refused token, or overlapping sets, deliver some records twice.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("oai_networks", sa.Column("limits", sa.JSON(), nullable=True))
    op.add_column(
        "oai_records",
        sa.Column(
            "harvested_by", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
    )


def downgrade() -> None:
    with op.batch_alter_table("oai_records") as batch:
        batch.drop_column("harvested_by")
    with op.batch_alter_table("oai_networks") as batch:
        batch.drop_column("limits")
