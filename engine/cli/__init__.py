"""The `funnel` command (`main`), and its groups of commands in modules of their own: `imports`, `maps`,
`ops`, `ops_user`, `outbox`. Thin: each parses arguments, calls the packages below, and prints.

May import: every other package of the engine.
"""
