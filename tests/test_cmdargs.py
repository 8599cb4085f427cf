import sys

import pytest

from startup.cmdargs import filter_sys_argv, split_server_flags


@pytest.mark.parametrize(
    "argv, kept, removed",
    [
        (["--await-explicit-shutdown", "true", "--upload-url", "http://u/"], [], ["--await-explicit-shutdown", "true", "--upload-url", "http://u/"]),
        (["--await-explicit-shutdown", "--lr", "3"], ["--lr", "3"], ["--await-explicit-shutdown"]),
        (["--upload-url=http://u/", "--keep", "x"], ["--keep", "x"], ["--upload-url=http://u/"]),
        (["--threads", "4", "--x-mode", "predict", "--host", "0.0.0.0"], [],
         ["--threads", "4", "--x-mode", "predict", "--host", "0.0.0.0"]),
        (["--await-explicit-shutdown"], [], ["--await-explicit-shutdown"]),
        (["positional", "--upload-url-extra", "v"], ["positional", "--upload-url-extra", "v"], []),
        ([], [], []),
    ],
)
def test_split_server_flags(argv: list[str], kept: list[str], removed: list[str]) -> None:
    assert split_server_flags(argv) == (kept, removed)


def test_filtered_argv_parses_cleanly_with_argparse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure this prevents: a library's strict argparse dying on the server's flags."""
    import argparse

    monkeypatch.setattr(sys, "argv", ["cog.server.http", "--await-explicit-shutdown", "true", "--upload-url", "http://u/"])
    assert filter_sys_argv() == ["--await-explicit-shutdown", "true", "--upload-url", "http://u/"]
    assert sys.argv == ["cog.server.http"]
    argparse.ArgumentParser().parse_args()  # would exit(2) on unknown flags
