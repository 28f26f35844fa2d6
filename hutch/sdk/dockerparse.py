"""Reading a Dockerfile as Docker does: instructions with their line numbers, flags, JSON
(exec) or shell form, variable substitution and ``.dockerignore`` rules.

Only the reading is here; :mod:`hutch.sdk.dockerfile` turns instructions into image steps.
What Docker's parser accepts is accepted here: the ``# escape=`` and ``# syntax=``
directives, lines continued by the escape character (with comment and blank lines inside a
continuation skipped), heredocs after ``RUN`` (``RUN <<EOF`` ... ``EOF``), instructions in
any case.  Substitution covers ``$var``, ``${var}``, ``${var:-word}``, ``${var-word}``,
``${var:+word}``, ``${var+word}`` and ``\\$`` for a literal dollar sign.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from hutch.exception import InvalidError

_DIRECTIVE = re.compile(r"#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$")
_HEREDOC = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")
_FLAG = re.compile(r"--([a-z][a-z-]*)(?:=(.*))?$")


@dataclass
class Instruction:
    line: int
    keyword: str  # upper case
    args: str  # after the keyword and its flags
    flags: dict[str, list[str]] = field(default_factory=dict)
    #: ``(word, body)`` of each ``<<WORD`` on the line, in order
    heredocs: list[tuple[str, str]] = field(default_factory=list)

    def fail(self, message: str) -> InvalidError:
        return InvalidError(f"Dockerfile line {self.line}: {self.keyword}: {message}")

    def json_form(self) -> list[str] | None:
        """The exec form's list (``["a", "b"]``), or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None  # Docker runs such a line in the shell form
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail("the exec form must be a JSON list of strings")
        return value


Line = tuple[int, str, list[tuple[str, str]]]  # first line, text, heredocs (word, body)


def _directives(raw: list[str]) -> tuple[str, int]:
    """The escape character and where the parser directives end."""
    escape = "\\"
    for start, line in enumerate(raw):
        match = _DIRECTIVE.match(line.strip())
        if match is None:
            return escape, start
        if match.group(1).lower() == "escape":
            if match.group(2) not in ("\\", "`"):
                raise InvalidError(f"Dockerfile line {start + 1}: escape must be \\ or `")
            escape = match.group(2)
    return escape, len(raw)


def _logical_lines(text: str) -> list[Line]:
    """The instructions' lines, continuations joined, with their first line number and
    the bodies of their heredocs, taken verbatim from the lines that follow (comment,
    blank and ``\\``-ended lines of a heredoc are the heredoc's own)."""
    raw = text.splitlines()
    escape, index = _directives(raw)
    lines: list[Line] = []
    current: list[str] = []
    first = 0
    while index < len(raw):
        line = raw[index]
        index += 1
        stripped = line.strip()
        if current and (not stripped or stripped.startswith("#")):
            continue  # blank and comment lines inside a continuation
        if not current:
            if not stripped or stripped.startswith("#"):
                continue
            first = index
        body = line.rstrip()
        if body.endswith(escape) and not body.endswith(escape * 2):
            current.append(body[:-1])
            continue
        current.append(line)
        joined = "".join(current)
        current = []
        heredocs: list[tuple[str, str]] = []
        keyword = joined.split(None, 1)[0].upper()
        if keyword in ("RUN", "COPY", "ADD") and "[" not in joined.split(None, 1)[-1][:1]:
            for match in _HEREDOC.finditer(joined):
                word, tabs = match.group(3), match.group(1) == "-"
                body_lines: list[str] = []
                while True:
                    if index >= len(raw):
                        raise InvalidError(f"Dockerfile line {first}: {keyword}: the heredoc "
                                           f"<<{word} has no closing {word} line")
                    text_line = raw[index].lstrip("\t") if tabs else raw[index]
                    index += 1
                    if text_line == word:
                        break
                    body_lines.append(text_line)
                heredocs.append((word, "".join(f"{b}\n" for b in body_lines)))
        lines.append((first, joined, heredocs))
    if current:
        lines.append((first, "".join(current), []))
    return lines


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile (or of a list of lines joined by newlines)."""
    instructions: list[Instruction] = []
    for number, line, heredocs in _logical_lines(text):
        keyword, _, rest = line.strip().partition(" ")
        if not re.fullmatch(r"[A-Za-z]+", keyword):
            raise InvalidError(f"Dockerfile line {number}: {keyword!r} is not an instruction")
        inst = Instruction(number, keyword.upper(), rest.strip(), heredocs=heredocs)
        if inst.keyword in ("FROM", "RUN", "COPY", "ADD"):
            _take_flags(inst)
        instructions.append(inst)
    return instructions


def _take_flags(inst: Instruction) -> None:
    words = inst.args.split()
    taken = 0
    for word in words:
        match = _FLAG.match(word)
        if match is None:
            break
        inst.flags.setdefault(match.group(1), []).append(match.group(2) or "")
        taken += 1
    inst.args = inst.args.split(None, taken)[taken] if taken < len(words) else ""


# substitution -------------------------------------------------------------------------------
_VAR = re.compile(r"\\\$|\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)"
                  r"(?:(:?[-+])((?:[^{}]|\{[^{}]*\})*))?\})")


def substitute(text: str, variables: dict[str, str], keep_unknown: bool = False) -> str:
    """``text`` with Docker's variable forms replaced from ``variables`` (unknown: empty, or
    left as written with ``keep_unknown``, for the engine to expand from the image's
    environment)."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "\\$":
            return "\\$" if keep_unknown else "$"
        name = m.group(1) or m.group(2)
        if keep_unknown and name not in variables:
            return m.group(0)
        op, word = m.group(3), m.group(4)
        value = variables.get(name)
        if op is None:
            return value or ""
        is_set = value is not None and (value != "" or not op.startswith(":"))
        if op.endswith("-"):
            return value if is_set and value is not None else substitute(word, variables)
        return substitute(word, variables) if is_set else ""

    return _VAR.sub(one, text)


def key_values(inst: Instruction, variables: dict[str, str], keep_unknown: bool = False
               ) -> dict[str, str]:
    """``KEY=value ...`` (values may be quoted) or the old ``KEY value`` of ENV/LABEL."""
    text = inst.args.strip()
    first = text.split(None, 1)
    if not first:
        raise inst.fail("needs KEY=value")
    if "=" not in first[0]:
        if len(first) < 2:
            raise inst.fail(f"{first[0]} needs a value")
        return {first[0]: substitute(first[1], variables, keep_unknown)}
    pairs: dict[str, str] = {}
    for word in _words(text, inst):
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise inst.fail(f"{word!r} is not KEY=value")
        pairs[substitute(key, variables)] = substitute(value, variables, keep_unknown)
    return pairs


def _words(text: str, inst: Instruction) -> list[str]:
    """Whitespace-separated words, quotes removed (quoted ``$`` kept for substitution)."""
    words: list[str] = []
    current, quote, have = "", "", False
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"' and i + 1 < len(text) and text[i + 1] in '"\\':
                i += 1
                current += text[i]
            elif c == "$" and quote == "'":
                current += "\\$"  # single quotes keep $ as it is, as Docker does
            else:
                current += c
        elif c in "\"'":
            quote, have = c, True
        elif c == "\\" and i + 1 < len(text):
            i += 1
            current += "\\$" if text[i] == "$" else text[i]
            have = True
        elif c.isspace():
            if current or have:
                words.append(current)
            current, have = "", False
        else:
            current += c
        i += 1
    if quote:
        raise inst.fail("an unterminated quote")
    if current or have:
        words.append(current)
    return words


def words(inst: Instruction, variables: dict[str, str]) -> list[str]:
    """The instruction's arguments: the exec form's list, or whitespace-separated words,
    each substituted."""
    listed = inst.json_form()
    if listed is not None:
        return [substitute(w, variables) for w in listed]
    return [substitute(w, variables) for w in _words(inst.args, inst)]


# .dockerignore ------------------------------------------------------------------------------
Token = tuple[str, str]  # (kind, text): lit, one (?), star (*), dstar (**), dss (**/), set


def _tokens(pattern: str) -> list[Token]:
    out: list[Token] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            kind = "dss" if pattern.startswith("/", i) else "dstar"
            i += kind == "dss"
            if not out or out[-1] != (kind, ""):  # **/**/ is **/: no blow-up from repeats
                out.append((kind, ""))
            continue
        if c == "*":
            out.append(("star", ""))
        elif c == "?":
            out.append(("one", ""))
        elif c == "[" and pattern.find("]", i + 1) > i + 1:
            end = pattern.find("]", i + 1)
            out.append(("set", pattern[i + 1:end]))
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(("lit", pattern[i]))
        else:
            out.append(("lit", c))
        i += 1
    return out


def _in_set(spec: str, c: str) -> bool:
    negate = spec.startswith(("^", "!"))
    body, found, i = spec[1:] if negate else spec, False, 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            found |= body[i] <= c <= body[i + 2]
            i += 3
        else:
            found |= body[i] == c
            i += 1
    return found != negate


class _Matcher:
    """A ``.dockerignore`` pattern run as an automaton over the path, one set of states
    per character: time linear in the path for each pattern token, never the
    exponential backtracking a regex of many ``**`` takes (a red team's
    ``**/**/.../x`` took seconds per path that way)."""

    def __init__(self, pattern: str) -> None:
        self.tokens = _tokens(pattern)

    def _closure(self, states: set[tuple[int, bool]]) -> set[tuple[int, bool]]:
        todo, seen = list(states), set(states)
        while todo:
            i, inside = todo.pop()
            if not inside and i < len(self.tokens) and \
                    self.tokens[i][0] in ("star", "dstar", "dss"):
                nxt = (i + 1, False)  # zero characters (or segments)
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def _step(self, states: set[tuple[int, bool]], c: str) -> set[tuple[int, bool]]:
        out: set[tuple[int, bool]] = set()
        for i, inside in states:
            if i >= len(self.tokens):
                continue
            kind, text = self.tokens[i]
            if kind == "dss":  # (.*/)? : any characters up to a slash
                out.add((i, True))
                if c == "/":
                    out.add((i + 1, False))
            elif inside:
                continue
            elif kind == "dstar" or (kind == "star" and c != "/"):
                out.add((i, False))
            elif (kind == "lit" and c == text) or (kind == "one" and c != "/") or \
                    (kind == "set" and c != "/" and _in_set(text, c)):
                out.add((i + 1, False))
        return self._closure(out)

    def match(self, rel: str) -> bool:
        """Whether the pattern matches ``rel`` or a directory above it."""
        end = (len(self.tokens), False)
        states = self._closure({(0, False)})
        for c in rel:
            if c == "/" and end in states:
                return True
            states = self._step(states, c)
            if not states:
                return False
        return end in states


class DockerIgnore:
    """``.dockerignore`` rules: paths relative to the context, ``**``, ``!`` exceptions, the
    last matching rule deciding; a directory's rule covers what is inside it."""

    def __init__(self, lines: list[str]) -> None:
        self.rules: list[tuple[bool, _Matcher]] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            body = line[1:].strip() if keep else line
            clean = str(PurePosixPath("/" + body.strip("/"))).lstrip("/") or "."
            clean = re.sub(r"(^|/)\./", r"\1", clean)
            self.rules.append((keep, _Matcher(clean)))

    def __call__(self, rel: str) -> bool:
        """Whether the context path ``rel`` (``a/b.txt``) is left out."""
        ignored = False
        for keep, matcher in self.rules:
            if matcher.match(rel):
                ignored = not keep
        return ignored

    def can_prune_directories(self) -> bool:
        """Whether a matched directory can be skipped whole: no ``!`` rule could bring
        anything inside it back."""
        return not any(keep for keep, _ in self.rules)
