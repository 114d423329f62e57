"""ORM integrations (SQLAlchemy, Django) tested on SQLite and a real PostgreSQL."""
