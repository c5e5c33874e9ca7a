"""`funnel run` and what runs in it: the runner that wires everything, the worker's tick, logging,
outages said as state changes, outbound webhooks, the ops digest, CSV imports and the demo month.

May import: everything below it: `engine.http` (the runner serves the app), `engine.authoring`,
`engine.views`, `engine.mail`, `engine.store`, `engine.settings`, `engine.core`.
"""
