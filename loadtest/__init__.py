"""The load test: races x websocket clients, latency percentiles, loss and a report."""
