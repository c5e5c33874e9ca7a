"""The HTTP app (FastAPI): the app itself (`api`), its routers by audience (`api_v1` for other
systems, `forms`, `pages` for leads, `hooks` for signed webhooks, `dashboard` for ops), what they share
(`http_context`), request bodies' limits, response headers, ops sign-in, and `/metrics`. Also its
`static/` files and `templates_ops/`.

May import: `engine.authoring`, `engine.views`, `engine.mail`, `engine.store`, `engine.settings`,
`engine.core`.
"""
