"""The projector: folds each race's events into standings and publishes them."""
