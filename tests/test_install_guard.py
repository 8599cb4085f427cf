"""The guard runs in a child interpreter: an audit hook cannot be removed, and the test process
must stay free to run pip-like commands of its own."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from startup.install_guard import is_install_command, package_report

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["pip", "install", "bitsandbytes"],
        ["/usr/bin/pip3.11", "install", "-U", "bitsandbytes==0.45"],
        [sys.executable, "-m", "pip", "install", "--force-reinstall", "bitsandbytes"],
        "pip install xformers",
        "uv pip install torch",
        ["sh", "-c", "pip install bitsandbytes"],
        "conda install -y pytorch",
        b"python -m pip install ultralytics",
    ],
)
def test_install_commands_are_recognised(command: object) -> None:
    assert is_install_command(command)


@pytest.mark.parametrize(
    "command", [["pip", "list"], "pip show bitsandbytes", [sys.executable, "-c", "print(1)"], "git add -A", "nvidia-smi"]
)
def test_other_commands_pass(command: object) -> None:
    assert not is_install_command(command)


def run_child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_installs_are_blocked_and_logged_other_processes_run() -> None:
    child = run_child(
        """
        import logging, os, subprocess, sys
        logging.basicConfig(level=logging.INFO)
        from startup.install_guard import InstallBlockedError, install_guard
        install_guard(); install_guard()  # idempotent
        for attempt in (
            lambda: subprocess.run([sys.executable, "-m", "pip", "install", "bitsandbytes"]),
            lambda: os.system("pip install --force-reinstall bitsandbytes"),
            lambda: subprocess.check_call("pip3 install xformers", shell=True),
        ):
            try:
                attempt()
                print("NOT BLOCKED")
            except InstallBlockedError:
                print("BLOCKED")
        print(subprocess.run([sys.executable, "-c", "print(40 + 2)"], capture_output=True, text=True).stdout.strip())
        print("YOLO_AUTOINSTALL=" + os.environ["YOLO_AUTOINSTALL"])
        """
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["BLOCKED", "BLOCKED", "BLOCKED", "42", "YOLO_AUTOINSTALL=false"]
    assert child.stderr.count("install guard: blocked a package install at run time") == 3


def test_an_install_attempted_during_setup_is_blocked(tiny_weights: Path, tmp_path: Path) -> None:
    """A library that tries to pip-install while the model loads is stopped, and the log says so."""
    child = run_child(
        f"""
        import subprocess, sys
        import pipeline.loading.sdxl as loader
        real = loader.load_sdxl
        def load_with_installer(*args, **kwargs):
            try:
                subprocess.run(["pip", "install", "bitsandbytes"])
            except Exception as error:
                print("setup saw", type(error).__name__)
            return real(*args, **kwargs)
        loader.load_sdxl = load_with_installer
        import startup.chain as chain
        chain.load_sdxl = load_with_installer
        chain.run_startup({str(tiny_weights)!r}, timings_path=__import__("pathlib").Path({str(tmp_path / "t.json")!r}))
        print("setup completed")
        """
    )
    assert child.returncode == 0, child.stderr
    assert "setup saw InstallBlockedError" in child.stdout and "setup completed" in child.stdout
    assert "install guard: blocked a package install at run time: pip install bitsandbytes" in child.stderr


def test_package_report_reads_metadata() -> None:
    report = package_report(("torch", "surely-not-a-package-xyz"))
    assert report["torch"] and report["surely-not-a-package-xyz"] is None
