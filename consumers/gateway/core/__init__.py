"""The gateway's sans-I/O core: values in, frames and decisions out, the clock passed in.

``settings`` (every limit), ``session`` (one client: outbox, rate limits,
coalescing), ``cache`` (the race cache and its snapshot + delta chain),
``requests`` (the client protocol) and ``admission`` (who may connect). No
sockets, no event loop, no file I/O: ``consumers/gateway/server.py`` drives them.
"""
