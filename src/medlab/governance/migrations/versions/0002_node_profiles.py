"""node profiles: what each node agent reports for its steward's pages

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_profiles",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node", sa.String(length=100), nullable=False),
        sa.Column("digest", sa.String(length=100), nullable=False),
        sa.Column("fingerprint", sa.String(length=100), nullable=True),
        sa.Column("profile", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["node"], ["nodes.name"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("node_profiles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_profiles_node"), ["node"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("node_profiles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_profiles_node"))
    op.drop_table("node_profiles")
