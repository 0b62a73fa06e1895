"""Edge face recognition agent."""

__version__ = "0.1.0"
