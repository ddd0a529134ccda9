"""incidents, appeals, strike clears and bans

Revision ID: 0001
Revises: (none: the first schema)
Create Date: 2026-12-04 20:31:19.706684
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('bans',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user', sa.String(length=255), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('time', sa.Float(), nullable=False),
    sa.Column('by', sa.String(length=255), nullable=False),
    sa.Column('lifted', sa.Float(), nullable=True),
    sa.Column('lifted_by', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('bans', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bans_user'), ['user'], unique=False)

    op.create_table('incidents',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('user', sa.String(length=255), nullable=False),
    sa.Column('category', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('signature', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('dry_run', sa.Boolean(), nullable=False),
    sa.Column('strike', sa.Boolean(), nullable=False),
    sa.Column('counted', sa.Boolean(), nullable=False),
    sa.Column('package_name', sa.String(length=255), nullable=True),
    sa.Column('package_version', sa.String(length=128), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('reported_by', sa.String(length=255), nullable=False),
    sa.Column('node', sa.String(length=255), nullable=False),
    sa.Column('time', sa.Float(), nullable=False),
    sa.Column('received', sa.Float(), nullable=False),
    sa.Column('updated', sa.Float(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.create_index('ix_incidents_package', ['package_name'], unique=False)
        batch_op.create_index('ix_incidents_time', ['time'], unique=False)
        batch_op.create_index('ix_incidents_user_time', ['user', 'time'], unique=False)

    op.create_table('strike_clears',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user', sa.String(length=255), nullable=False),
    sa.Column('time', sa.Float(), nullable=False),
    sa.Column('by', sa.String(length=255), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('strike_clears', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_strike_clears_user'), ['user'], unique=False)

    op.create_table('appeals',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('incident_id', sa.String(length=64), nullable=False),
    sa.Column('user', sa.String(length=255), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('time', sa.Float(), nullable=False),
    sa.Column('reply', sa.Text(), nullable=True),
    sa.Column('resolved_by', sa.String(length=255), nullable=True),
    sa.Column('resolved_time', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['incident_id'], ['incidents.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('appeals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_appeals_incident_id'), ['incident_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_appeals_user'), ['user'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('appeals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_appeals_user'))
        batch_op.drop_index(batch_op.f('ix_appeals_incident_id'))

    op.drop_table('appeals')
    with op.batch_alter_table('strike_clears', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_strike_clears_user'))

    op.drop_table('strike_clears')
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.drop_index('ix_incidents_user_time')
        batch_op.drop_index('ix_incidents_time')
        batch_op.drop_index('ix_incidents_package')

    op.drop_table('incidents')
    with op.batch_alter_table('bans', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bans_user'))

    op.drop_table('bans')
