"""Operations: systemd notify and watchdog, the health and metrics endpoint, the metrics registry, logging.

Infrastructure every layer may use; it imports only agent.errors, the standard library, prometheus_client
(metrics.py) and itself.
"""
