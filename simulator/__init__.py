"""The producing side: recordings, importers, the timeline, the replay clock and producer."""
