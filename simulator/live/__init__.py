"""The live replay: a pure clock and feed, and the asyncio producer that publishes them."""
