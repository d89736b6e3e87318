"""The websocket gateway: serves standings and the widget to browsers."""
