"""The wire contract: events, control commands, topics, standings boards and their schemas.

Imports nothing of ours: producer and consumers both build on it."""
