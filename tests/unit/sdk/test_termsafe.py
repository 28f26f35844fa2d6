"""hutch.tools.termsafe: sandbox output made inert for a terminal, colours kept."""

from __future__ import annotations

import pytest

from hutch.sdk.termsafe import TerminalFilter


def _through(*chunks: bytes) -> bytes:
    f = TerminalFilter()
    return b"".join(f.feed(c) for c in chunks) + f.flush()


@pytest.mark.parametrize("data", [
    b"plain text\n", b"tab\tand\r\n", "héllo wörld ✓ 日本\n".encode(),
    b"\x1b[31mred\x1b[0m", b"\x1b[1;38;5;208mbold orange\x1b[m", b"\x1b[38:2:1:2:3m",
])
def test_text_and_colours_pass(data: bytes) -> None:
    assert _through(data) == data


@pytest.mark.parametrize("data, shown", [
    (b"\x1b]52;c;aGk=\x07", b"^[]52;c;aGk=^G"),           # clipboard write
    (b"\x1b]0;title\x1b\\", b"^[]0;title^[\\"),            # title, ST-terminated
    (b"\x1b[2J\x1b[H", b"^[[2J^[[H"),                      # clear screen, cursor home
    (b"\x1b[?1049h", b"^[[?1049h"),                        # alternate screen: private
    (b"\x1b[6n", b"^[[6n"),                                # a query: the answer is input
    (b"\x1bc", b"^[c"),                                    # full reset
    (b"\x1b[>0;1m", b"^[[>0;1m"),                          # private 'm' is not SGR
    (b"a\x08b\x00c\x7fd", b"a^Hb^@c^?d"),                  # other C0 and DEL
    ("\u009b2J".encode(), b"<U+009B>2J"),                  # C1 CSI, UTF-8 encoded
    (b"\x9b2J\x90", b"<9B>2J<90>"),                        # C1 as raw (invalid UTF-8) bytes
])
def test_controls_are_shown_inert(data: bytes, shown: bytes) -> None:
    assert _through(data) == shown


def test_sequences_split_across_chunks() -> None:
    assert _through(b"a\x1b", b"[3", b"1mred\x1b[0", b"m") == b"a\x1b[31mred\x1b[0m"
    assert _through(b"a\x1b", b"]0;t\x07") == b"a^[]0;t^G"
    assert _through(b"\x1b[", b"2J") == b"^[[2J"
    assert _through("é".encode()[:1], "é".encode()[1:]) == "é".encode()
    assert _through(b"\xc2", b"\x9b") == b"<U+009B>"


def test_an_escape_left_at_the_end_is_shown() -> None:
    assert _through(b"x\x1b[31") == b"x^[[31"
    # a character cut short: its bytes are invalid UTF-8, shown like any other
    assert _through(b"x\xe2\x9c") == b"x\xe2<9C>"


def test_endless_parameters_do_not_accumulate() -> None:
    f = TerminalFilter()
    out = f.feed(b"\x1b[" + b"1;" * 100_000)
    assert len(out) >= 190_000 and b"\x1b" not in out
    assert f.feed(b"m") == b"m"
