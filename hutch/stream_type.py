"""``from hutch.stream_type import StreamType``, where Modal code imports it from."""

from hutch.sdk.streams import StreamType

__all__ = ["StreamType"]
