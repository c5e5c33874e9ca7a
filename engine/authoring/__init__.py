"""Writing funnels: reading and validating funnel files (YAML with positions, shape and graph checks),
finding the funnel a command names, checking forms, and trying a funnel before it goes live: `simulate`
and `test` on a virtual clock, `plan` for an edited funnel.

May import: `engine.views`, `engine.mail`, `engine.store`, `engine.settings`, `engine.core`.
"""
