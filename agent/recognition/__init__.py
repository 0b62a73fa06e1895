"""Recognition loop: frame -> detect -> gates -> embed -> match -> track vote -> event.

Owns pipeline, tracking, dispatch and per-track challenges; imports capture, inference, gates, gallery,
publish and ops; never api or cli.
"""
