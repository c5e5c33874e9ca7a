"""The customer journey map of a funnel: `model` (the map as data), `words` and `timing` (its rules and
waits in a marketer's words), `sources` (its inputs from the database and the templates), and its
drawings `html`, `markdown` and `png`.
"""
