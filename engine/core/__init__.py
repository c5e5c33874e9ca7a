"""The pure core: the funnel definition, the journey decisions (stage transitions, steps, waits in
local time), editing a live funnel, and the rules every adapter asks (addresses, consent, timing,
signatures and signed tokens, webhook policy, ops sign-in, what an entry refuses, what a log line may
not show), and the plain rows the store hands to the views (`report_rows`). No clock, no socket, no
database: callers pass the time and the state, and get decisions back.

May import: nothing else of the engine (third-party libraries that do no IO are fine). The one module
that reads a file is `yamlfile`, which reads the one file it is given, bounded, to parse it with
positions.
"""
