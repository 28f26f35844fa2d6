"""The client: Modal's Sandbox API over the engine's socket, blocking and ``.aio``."""
