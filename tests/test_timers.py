import json
from pathlib import Path

import pytest

from startup.timers import StageTimer


def test_each_stage_prints_a_timer_line_and_json_records_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    timer = StageTimer(tmp_path / "t.json")
    with timer.stage("argv_filter"):
        pass
    with timer.stage("weights"):
        sum(range(10000))
    record = timer.finish()
    out = capsys.readouterr().err.splitlines()
    assert out[0].startswith("[Timer: argv_filter]: ") and out[0].endswith(" seconds")
    assert out[1].startswith("[Timer: weights]: ")
    assert out[2].startswith("[Timer: total]: ")
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved == record
    assert [s["name"] for s in saved["stages"]] == ["argv_filter", "weights"]
    assert saved["completed"] is True
    assert saved["total_seconds"] >= sum(s["seconds"] for s in saved["stages"])


def test_a_failing_stage_is_still_recorded(tmp_path: Path) -> None:
    timer = StageTimer(tmp_path / "t.json")
    with pytest.raises(RuntimeError):
        with timer.stage("load"):
            raise RuntimeError("boom")
    timer.finish(completed=False)
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["completed"] is False and saved["stages"][0]["name"] == "load"
