"""The standings fold (pure) and its checkpoint codec."""
