"""Configuration and state shared by the api and orchestrator: SQLAlchemy models and their Alembic migrations."""
