"""vocabulary: the concepts and ancestry the study builder searches

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vocabulary_concepts",
        sa.Column("concept_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("domain", sa.String(length=20), nullable=False),
        sa.Column("vocabulary", sa.String(length=20), nullable=False),
        sa.Column("concept_class", sa.String(length=20), nullable=False),
        sa.Column("standard", sa.String(length=1), nullable=True),
        sa.Column("code", sa.String(length=50), nullable=False),
        sa.PrimaryKeyConstraint("concept_id"),
    )
    with op.batch_alter_table("vocabulary_concepts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vocabulary_concepts_domain"), ["domain"])
        batch_op.create_index(batch_op.f("ix_vocabulary_concepts_name"), ["name"])
    op.create_table(
        "vocabulary_ancestors",
        sa.Column("ancestor", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("descendant", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("ancestor", "descendant"),
    )
    with op.batch_alter_table("vocabulary_ancestors", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vocabulary_ancestors_descendant"), ["descendant"])


def downgrade() -> None:
    with op.batch_alter_table("vocabulary_ancestors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vocabulary_ancestors_descendant"))
    op.drop_table("vocabulary_ancestors")
    with op.batch_alter_table("vocabulary_concepts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vocabulary_concepts_name"))
        batch_op.drop_index(batch_op.f("ix_vocabulary_concepts_domain"))
    op.drop_table("vocabulary_concepts")
