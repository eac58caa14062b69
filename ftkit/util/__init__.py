"""Utilities that import nothing from ftkit but its errors: files, the registry, upstream compatibility, library set-up,
the web server."""
