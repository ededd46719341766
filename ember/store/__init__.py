"""Persistence on SQLAlchemy 2.x: a SQLite file by default, PostgreSQL by URL. The engine never imports this."""
