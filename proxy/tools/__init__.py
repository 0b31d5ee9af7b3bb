"""The upstream tool catalogue's guard: definition review, pins, quarantine."""
