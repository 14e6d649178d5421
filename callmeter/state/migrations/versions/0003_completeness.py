"""What collection, completeness and the two-phase start need: placements carry the
endpoint-seconds their worker measured and whether that count is final, its registered endpoints
and whether it was told to begin; runs when every part was delivered; workers their process's
instance id, so that a restarted worker's parts fail at once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run_placements") as batch:
        batch.add_column(sa.Column("endpoint_seconds", sa.BigInteger(), server_default="0", nullable=False))
        batch.add_column(sa.Column("samples_final", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("registered", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("begun", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("instance_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("instance_id")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("dispatched_at")
    with op.batch_alter_table("run_placements") as batch:
        batch.drop_column("begun")
        batch.drop_column("registered")
        batch.drop_column("samples_final")
        batch.drop_column("endpoint_seconds")
