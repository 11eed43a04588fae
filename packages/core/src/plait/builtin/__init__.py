"""Core's default implementation of every hook group: the built-in ``single`` backend.

Registered first on every plugin manager, so any backend's implementation wins
and these are the fallback. No module here imports torch at the top: listing
plugins imports them to read their hook names.
"""
