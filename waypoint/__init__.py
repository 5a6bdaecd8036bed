"""The per-namespace L7 proxy (waypoint). Not built yet: see DESIGN.md, "Waypoint"."""
