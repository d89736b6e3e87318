"""The timeline: a recording in, the ordered events of its race out (pure, seeded)."""
