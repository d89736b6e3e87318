"""The consuming side: the standings fold, the projector, the websocket gateway and widget."""
