"""A single-module Django project for the WSGI integration tests (see ``site``)."""
