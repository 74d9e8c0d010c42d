"""`vlamergebench leaderboard`: from a store to files and a printed table; clear errors on bad input."""

from __future__ import annotations

from vlamergebench.cli import main
from vlamergebench.eval.bundle import open_bundle


def test_leaderboard_command_builds_prints_and_exports(store_dir, tmp_path, capsys):
    out, bundle = tmp_path / "board", tmp_path / "pub" / "bundle.zip"
    status = main(
        [
            "leaderboard",
            str(store_dir),
            "--out",
            str(out),
            "--export-bundle",
            str(bundle),
            "--description",
            "from the CLI",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "| ties · oracle | oracle | 2 | 3 | 12 | 0 | 68.8 [39.4, 88.1] |" in printed
    assert (out / "leaderboard.html").is_file() and (out / "storage_pareto.png").is_file()
    assert f"bundle: {bundle}" in printed
    with open_bundle(bundle) as (manifest, _):
        assert manifest["description"] == "from the CLI"

    assert main(["leaderboard", str(bundle), "--out", str(tmp_path / "again"), "--only", "storage"]) == 0
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == [
        "storage.csv",
        "storage.md",
        "storage_pareto.png",
        "storage_pareto.svg",
    ]


def test_leaderboard_command_names_bad_input(tmp_path, capsys, store_dir):
    assert main(["leaderboard", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 1
    assert (
        f"error: {tmp_path / 'nowhere' / 'results.sqlite'}: no results store here" in capsys.readouterr().err
    )
    assert main(["leaderboard", str(store_dir), "--out", str(tmp_path / "o"), "--only", "sucess"]) == 1
    assert (
        "unknown leaderboard builder 'sucess'; registered: entries, findings, forgetting, page, paper"
        in capsys.readouterr().err
    )
