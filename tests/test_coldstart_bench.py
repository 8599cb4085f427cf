"""The cold-start benchmark's own logic: the chain check CI relies on and the table it prints."""

from bench.bench_coldstart import check_chain, markdown
from startup.chain import STAGES


def result(cache: str, names: list[str], completed: bool = True) -> dict:
    return {
        "cache": cache,
        "medians": {"import_torch_s": 2.0, "service_ready_s": 3.0, "plain_diffusers_s": 6.0},
        "stage_medians": {name: 0.1 for name in names},
        "records": [{"stages": [{"name": n, "seconds": 0.1} for n in names], "completed": completed}],
    }


def test_check_chain_accepts_a_complete_run_and_names_what_is_missing() -> None:
    assert check_chain([result("warm", list(STAGES))]) == []
    problems = check_chain([result("warm", list(STAGES[:-1])), result("dropped", list(STAGES), completed=False)])
    assert len(problems) == 2 and "expected" in problems[0] and "did not complete" in problems[1]


def test_markdown_table_has_ratios_and_every_stage() -> None:
    table = markdown([result("warm", list(STAGES))], "NVIDIA H100")
    assert "| warm | 2.00 | 3.00 | 1.00 | 6.00 | 0.50 | – | – |" in table
    for name in STAGES:
        assert f"| {name} | 0.100 |" in table
