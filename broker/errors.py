"""The one error the bus raises: the connection to the broker could not be made or was lost.

Its own module so that ``broker.bus`` and ``broker.aiomqtt_internals`` can both
raise it; everyone else imports it from ``broker.bus``.
"""

from __future__ import annotations

import aiomqtt


class BusError(aiomqtt.MqttError):
    """The broker could not be reached, refused us, or the connection broke.

    Producer, projector, gateway and command line catch this, never a client
    library's own error. It derives from aiomqtt's error only so that a caller
    not yet moved to ``BusError`` keeps catching it; nothing outside ``broker``
    should rely on that.
    """
