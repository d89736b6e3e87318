"""chequered: an event-sourced live timing simulator for endurance racing.

This package holds what every part shares: the wire contract (events,
control, topics), logging and the command line.
"""

__version__ = "0.1.0"
