"""What people read about the funnels and their leads: `funnel report`'s figures, the customer journey
map (`views.journey_map`: the map, its HTML, Markdown and PNG drawings, its sources) and one lead's
timeline. Built from rows the store reads; no SQL here.

May import: `engine.mail` (a template's subject), `engine.store`, `engine.settings`, `engine.core`.
"""
