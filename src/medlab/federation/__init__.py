"""Federation: hospitals as separate parties — a hub service, node agents, a client.

``common`` holds the wire messages, task states and request signatures; ``hub``, ``node`` and
``client`` import it and never each other.
"""
