"""m2gate: run Python web apps (WSGI, ASGI) behind Mongrel2 over ZeroMQ."""

__version__ = "0.1.0"
