"""`python -m engine.cli`: the `funnel` command, for a checkout without the entry point installed."""

from engine.cli.main import main

main()
