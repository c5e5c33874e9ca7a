"""The funnel engine, in layers; each package imports only the ones below it (enforced by the
import-linter contracts in pyproject.toml, run by tests/test_layers.py):

    cli        the `funnel` command
    runtime    `funnel run`: the worker's tick, the scheduler, logs, outbound webhooks, the digest
    http       the FastAPI app: its routers, ops sign-in, metrics
    authoring  funnel files: reading, validation, simulate, scenarios, plan
    views      what people read: the report, the journey map, a lead's timeline
    mail       templates, composing, MIME and DKIM, sending over SMTP
    store      every table, query and migration: the only package that speaks SQL
    settings   the settings (a module)
    core       the pure core: the funnel definition and the journey decisions; no IO, no clock
"""
