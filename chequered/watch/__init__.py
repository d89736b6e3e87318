"""``chequered watch``: a terminal timing screen fed by the websocket gateway.

``view`` is the pure view model (frames in, rows and header out), ``client`` the
websocket shell, ``control`` the replay controller, ``app`` the Textual screen.
"""
