"""Programs run from a checkout (`python -m scripts.NAME`): tools, not part of the shipped packages.

`scripts.fuzz` lives here rather than in `bench/` because it drives the waypoint's parsers, and a
component (bench is one) never imports another (DESIGN.md, "Parts and layout").
"""
