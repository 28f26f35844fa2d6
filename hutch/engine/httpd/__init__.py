"""The engine's own HTTP/1.1 server (parsing and serving over a Unix socket)."""
