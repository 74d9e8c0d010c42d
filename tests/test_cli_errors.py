"""The command line turns bad input into one line and nothing else: an unknown name is one line naming it
and what is registered, while a ``KeyError`` raised by a bug keeps its traceback (it used to be caught by a
broad ``except KeyError`` and printed as one word, ``error: name``)."""

from __future__ import annotations

import pytest

from vlamergebench.cli import main
from vlamergebench.registry import UnknownNameError


def _commands(tmp_path):
    """One command line per subcommand, and the function each calls where the test plants the bug."""
    out = str(tmp_path / "out")
    return {
        "merge": (["merge", "--method", "ta", "--experts", str(tmp_path), "--out", out],
                  "vlamergebench.merge_methods.registry.make_method"),
        "run": (["run", "--method", "ta", "--out", out, "--no-progress"],
                "vlamergebench.eval.run.run_command"),
        "eval": (["eval", "--policy", "mypolicy:make", "--out", out, "--no-progress"],
                 "vlamergebench.eval.evaluate.evaluate"),
        "leaderboard": (["leaderboard", str(tmp_path), "--out", out],
                        "vlamergebench.leaderboards.registry.build_leaderboards"),
        "methods": (["methods"], "vlamergebench.subcommands.describe_method"),
    }  # fmt: skip


@pytest.mark.parametrize("command", ["merge", "run", "eval", "leaderboard", "methods"])
def test_a_key_error_from_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys, command):
    argv, target = _commands(tmp_path)[command]

    def buggy(*args, **kwargs):
        return {}["name"]  # the kind of slip the broad catch printed as "error: name"

    monkeypatch.setattr(target, buggy)
    with pytest.raises(KeyError) as raised:
        main(argv)
    assert type(raised.value) is KeyError and raised.value.args == ("name",)
    assert "error: name" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["merge", "--method", "tie", "--experts", ".", "--out", "m"],
            "merge: error: unknown merge method 'tie'",
        ),
        (["methods", "tie"], "methods: error: unknown merge method 'tie'"),
        (
            ["leaderboard", ".", "--only", "sucess", "--out", "b"],
            "leaderboard: error: unknown leaderboard builder",
        ),
    ],
)
def test_an_unknown_name_is_still_one_line_naming_it_and_the_registered_ones(tmp_path, monkeypatch, capsys,
                                                                            argv, message):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(argv) in (1, 2)
    error = capsys.readouterr().err.strip()
    assert error.splitlines() == [error]
    assert error.startswith(f"vlamergebench {message}") and "; registered: " in error
    assert 'error: "' not in error  # the message as text, not a KeyError's quoted repr
    assert not (tmp_path / "m").exists() and not (tmp_path / "b").exists()


def test_unknown_name_error_is_a_key_error_whose_text_is_the_message():
    error = UnknownNameError("unknown widget 'x'; registered: a, b")
    assert isinstance(error, KeyError) and str(error) == "unknown widget 'x'; registered: a, b"
