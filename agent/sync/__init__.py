"""Gallery sync: the hub's change feed and device credentials (hub.py, devices.py), and the edge syncer
that mirrors granted groups into the local gallery (edge.py, client.py). Wire format: docs/sync.md.

Owns the hub's HTTP family for the feed, device grants and the edge's sync state machine; imports api
(routing, signatures, replay cache), gallery (feed.py, mirror.py), publish (MQTT settings) and ops; never
recognition's internals, console, app or cli.
"""
