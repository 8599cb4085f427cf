"""The README is the user's manual: its inputs table must cover every input the service takes."""

from pathlib import Path

from request.inputs import INPUTS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_lists_every_input() -> None:
    for name in INPUTS:
        assert f"`{name}`" in README, name


def test_readme_opens_with_the_two_commands_ci_runs() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in README.split("## Two commands")[1].split("##")[0]
    assert "bash scripts/demo.sh" in README.split("## Two commands")[1].split("##")[0]
    assert "exec bash scripts/test.sh" in ci
