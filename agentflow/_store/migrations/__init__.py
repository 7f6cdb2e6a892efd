"""Alembic migrations of the agentflow schema. ``agentflow._store._schema`` applies them at open."""
