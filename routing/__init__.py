"""Routing: which deployment serves a request, and in what order to try them."""
