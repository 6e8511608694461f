"""Postgres: the Piccolo tables and their migrations, the embedded server, the connection pool."""
