"""Edge face recognition agent."""

__version__ = "0.2.0"
