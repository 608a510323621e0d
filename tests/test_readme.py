"""The README's quickstart is exactly two commands and CI runs exactly its test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_quickstart_has_two_commands_install_and_run():
    commands = quickstart_commands()
    assert len(commands) == 2
    main, tests = commands
    assert main.startswith("pip install -e .") and main.endswith("python sweeps/rectified.py")
    assert "pytest" in tests and tests.startswith('pip install -e ".[test]"')


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [
        ln.strip()
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]
    assert quickstart_commands()[1] in ci_lines


def test_documented_entry_points_exist():
    text = (ROOT / "README.md").read_text()
    for path in re.findall(r"python (sweeps/\w+\.py|benchmarks/\w+\.py)", text):
        assert (ROOT / path).is_file(), path
    for module in set(re.findall(r"python -m (jepa_ray\.\w+)", text)):
        path = ROOT / module.replace(".", "/")
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), module


def test_options_table_defaults_match_the_sweep_defaults():
    from jepa_ray.sweep import SweepOptions

    text = (ROOT / "README.md").read_text()
    defaults = SweepOptions()
    for option, value in (
        ("--num-samples N", defaults.num_samples),
        ("--max-failed-trials N", defaults.max_failed_trials),
    ):
        row = re.search(rf"^\| `{re.escape(option)}` \| (\d+)", text, flags=re.M)
        assert row and int(row.group(1)) == value, option
