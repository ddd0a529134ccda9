"""package verdicts: an admin marks an installed package's incidents to count as strikes

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 22:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('package_verdicts',
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('version', sa.String(length=128), nullable=False),
    sa.Column('counts', sa.Boolean(), nullable=False),
    sa.Column('by', sa.String(length=255), nullable=False),
    sa.Column('time', sa.Float(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('name', 'version')
    )


def downgrade() -> None:
    op.drop_table('package_verdicts')
