"""Email: templates (Jinja2 in a sandbox, Markdown, their bounds), composing an outbox row into the
exact bytes (MIME, DKIM), signed links, and the dispatcher that sends them over SMTP with its rate
limits, render processes and the local sink.

May import: `engine.store`, `engine.settings`, `engine.core`.
"""
