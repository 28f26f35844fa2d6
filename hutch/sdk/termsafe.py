"""Sandbox output made inert before it reaches the user's terminal, colours kept.

A terminal acts on the control sequences it is sent: OSC 52 writes the clipboard (what the
user pastes next runs on the host), OSC 0 sets the window title, CSI sequences clear or
rewrite the screen (to hide what ran) or ask the terminal to answer on its input.  Output of
a sandbox is the sandbox's to choose, so the CLI passes it through :class:`TerminalFilter`
when it writes to a terminal, as ``less -R`` does: ``\\n``, ``\\t``, ``\\r`` and SGR colour
sequences (``ESC [`` digits, ``;``, ``:`` ``m``) pass; every other control is shown
visibly, in caret notation for C0 and DEL (``^[``, ``^G``, ``^?``: the bytes after an
``ESC`` are printable, so a sequence is shown whole and does nothing), ``<U+009B>`` for a
C1 control encoded in UTF-8 and ``<9B>`` for one sent as a raw (invalid UTF-8) byte.
Printable text, UTF-8 included, passes unchanged; the filter keeps state between chunks,
so a sequence or a character split across two writes is judged whole.
"""

from __future__ import annotations

import codecs
import re

#: An SGR sequence, or what may still become one when more output comes.
_SGR = re.compile(r"\x1b\[[0-9;:]*m")
_SGR_PREFIX = re.compile(r"\x1b(\[[0-9;:]*)?\Z")
#: The parameters an SGR prefix may hold while it waits for its final ``m``.
MAX_PENDING = 256
#: Controls that pass: newline, tab, carriage return.
_KEPT = frozenset("\n\t\r")
#: Runs of characters that need no look (printable, or kept controls).
_PLAIN = re.compile(r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\udc80-\udc9f]+")


def _shown(ch: str) -> str:
    """How a control that may not pass is shown."""
    code = ord(ch)
    if code < 0x20 or code == 0x7F:
        return "^" + chr(code ^ 0x40)
    if 0xDC80 <= code <= 0xDC9F:  # a raw byte 0x80-0x9f (surrogateescape)
        return f"<{code - 0xDC00:02X}>"
    return f"<U+{code:04X}>"


class TerminalFilter:
    """A byte stream's filter for one terminal stream: :meth:`feed` each chunk, then
    :meth:`flush` at the end."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self._pending = ""  # an ESC that may begin an SGR sequence

    def feed(self, data: bytes) -> bytes:
        return self._filter(self._pending + self._decoder.decode(data), final=False)

    def flush(self) -> bytes:
        return self._filter(self._pending + self._decoder.decode(b"", final=True), final=True)

    def _filter(self, text: str, final: bool) -> bytes:
        self._pending = ""
        out: list[str] = []
        i, end = 0, len(text)
        while i < end:
            plain = _PLAIN.match(text, i)
            if plain is not None:
                out.append(plain.group())
                i = plain.end()
                continue
            ch = text[i]
            if ch == "\x1b":
                sgr = _SGR.match(text, i)
                if sgr is not None:
                    out.append(sgr.group())
                    i = sgr.end()
                    continue
                if (not final and _SGR_PREFIX.match(text, i) is not None
                        and end - i <= MAX_PENDING):
                    self._pending = text[i:]  # judged when the rest comes
                    break
            out.append(_shown(ch))
            i += 1
        return "".join(out).encode("utf-8", "surrogateescape")
