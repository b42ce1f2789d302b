"""Live events (issue 18): every change to a study, an order, a report or a critical finding,
recorded as a row in the same transaction as the change (database triggers, migration 0020),
and served as Server-Sent Events (`GET /api/events`) to the callers allowed to see it."""
