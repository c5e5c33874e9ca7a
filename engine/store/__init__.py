"""The store: every table, query and migration, and the only package that imports SQLAlchemy or
SQLModel and knows the dialect (SQLite or PostgreSQL). Modules are named after what they read and write:
`tables` (the schema), `database` (connecting, transactions, migrations), `leads` (leads, events,
enrollments), `decisions` (the one decision writer), `ingest` (events in bulk), `outbox` and `ledger`
(the send pipeline), and the queries of the report, the dashboard, the digest and the metrics.

Callers get a connection from `database` and pass it to the functions here; they never build a
statement themselves.

May import: `engine.core`, `engine.settings`.
"""
