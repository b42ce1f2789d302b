"""HTTP routes, one router per resource (paths from seed 001)."""
