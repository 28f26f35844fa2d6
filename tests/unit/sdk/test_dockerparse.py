"""Reading Dockerfiles: lines, flags, forms, heredocs, substitution, .dockerignore."""

from __future__ import annotations

import pytest

from hutch.exception import InvalidError
from hutch.sdk.dockerparse import DockerIgnore, key_values, parse, substitute, words


def test_continuations_comments_and_line_numbers() -> None:
    text = ("# syntax=docker/dockerfile:1\n\nfrom alpine AS Build\n"
            "RUN echo a \\\n  # a comment inside\n\n  && echo b\n"
            "copy --from=build --chown=1:2 /a /b\n")
    insts = parse(text)
    assert [(i.line, i.keyword) for i in insts] == [(3, "FROM"), (4, "RUN"), (8, "COPY")]
    assert insts[1].args == "echo a   && echo b"
    assert insts[2].flags == {"from": ["build"], "chown": ["1:2"]}
    assert insts[2].args == "/a /b"


def test_escape_directive_backtick() -> None:
    insts = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  && echo\n")
    assert insts[1].args == "dir c:\\   && echo"
    with pytest.raises(InvalidError, match="escape"):
        parse("# escape=x\nFROM x\n")


def test_exec_and_shell_forms() -> None:
    cmd, shell_form, bad = parse('CMD ["python", "-m", "x"]\nCMD [not json\nCMD ["a", 1]\n')
    assert cmd.json_form() == ["python", "-m", "x"]
    assert shell_form.json_form() is None  # Docker runs it in the shell form
    with pytest.raises(InvalidError, match="line 3"):
        bad.json_form()


def test_heredocs() -> None:
    insts = parse("FROM x\nRUN <<EOF\necho 1\necho 2\nEOF\nRUN python3 <<-'PY'\n\tprint(1)\n"
                  "\tPY\nENV A=1\n")
    assert insts[1].heredocs == [("EOF", "echo 1\necho 2\n")]
    assert insts[2].heredocs == [("PY", "print(1)\n")]
    assert insts[3].keyword == "ENV" and insts[3].line == 9
    with pytest.raises(InvalidError, match="no closing EOF"):
        parse("FROM x\nRUN <<EOF\necho\n")


def test_not_an_instruction() -> None:
    with pytest.raises(InvalidError, match="line 2"):
        parse("FROM x\n123 go\n")


@pytest.mark.parametrize(("text", "expected"), [
    ("$A/${A}", "1/1"), ("${NOPE}", ""), ("${NOPE:-d}", "d"), ("${E:-d}", "d"),
    ("${E-d}", ""), ("${A:+w}", "w"), ("${E:+w}", ""), ("${E+w}", "w"), ("\\$A", "$A"),
    ("${NOPE:-$A}", "1"), ("a$", "a$"),
])
def test_substitution(text: str, expected: str) -> None:
    assert substitute(text, {"A": "1", "E": ""}) == expected


def test_substitution_keeping_unknown_names_for_the_engine() -> None:
    assert substitute("$A:$PATH:${HOME}", {"A": "1"}, keep_unknown=True) == "1:$PATH:${HOME}"


def test_key_values_and_words() -> None:
    env = parse('ENV A=1 B="two words" C=$A\\ x\nENV OLD value with spaces\nLABEL "k"=v\n'
                'EXPOSE 80 $P/udp\nENV =x\n')
    assert key_values(env[0], {"A": "1"}) == {"A": "1", "B": "two words", "C": "1 x"}
    assert key_values(env[1], {}) == {"OLD": "value with spaces"}
    assert key_values(env[2], {}) == {"k": "v"}
    assert words(env[3], {"P": "53"}) == ["80", "53/udp"]
    with pytest.raises(InvalidError, match="line 5"):
        key_values(env[4], {})
    with pytest.raises(InvalidError, match="unterminated"):
        key_values(parse('ENV A="x\n')[0], {})


@pytest.mark.parametrize(("path", "ignored"), [
    ("node_modules", True), ("node_modules/a/b.js", True), ("src/node_modules", False),
    ("x.pyc", True), ("deep/dir/y.pyc", True), ("keep.pyc", False), ("build", True),
    ("docs/a.md", True), ("docs/README.md", False), ("src/app.py", False), ("a/tmp1", True),
    ("a/tmp12", False),
])
def test_dockerignore(path: str, ignored: bool) -> None:
    rules = DockerIgnore(["# comment", "node_modules", "**/*.pyc", "!keep.pyc", "/build/",
                          "docs/*.md", "!docs/README.md", "*/tmp?", ""])
    assert rules(path) is ignored


def test_heredoc_bodies_are_taken_verbatim() -> None:
    """Comment lines, blank lines and a trailing backslash belong to the heredoc (a script's
    shebang, a config file's comments)."""
    text = ("FROM x\nRUN <<EOF\n#!/usr/bin/env python3\n\nprint('a') \\\nEOF\n"
            "COPY <<CONF /etc/app.conf\n# comment\nkey = 1\nCONF\nENV A=1\n")
    run, copy, env = parse(text)[1:]
    assert run.heredocs == [("EOF", "#!/usr/bin/env python3\n\nprint('a') \\\n")]
    assert copy.heredocs == [("CONF", "# comment\nkey = 1\n")]
    assert (env.keyword, env.line) == ("ENV", 11)
