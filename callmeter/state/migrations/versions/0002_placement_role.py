"""Placements carry their group's role, so that a run's call totals can leave callees out.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Placements made before this revision keep an unknown role: their runs count calls at both ends.
    with op.batch_alter_table("run_placements") as batch:
        batch.add_column(sa.Column("role", sa.String(length=32), server_default="ENDPOINT_ROLE_UNSPECIFIED",
                                   nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("run_placements") as batch:
        batch.drop_column("role")
