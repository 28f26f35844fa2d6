"""The engine reached from another machine: a TLS gateway in front of its socket, and the
credentials it admits (``hutch engine serve --listen``, ``hutch engine remote-credentials``)."""
