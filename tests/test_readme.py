"""The README's quickstart is exactly two commands and CI runs exactly its test command; the
commands and links the README and docs/benchmarks.md name exist; the README's closed-form ℓ0
table is the closed form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("doc", ["README.md", "docs/benchmarks.md"])
def test_documented_entry_points_exist(doc):
    text = (ROOT / doc).read_text()
    for path in re.findall(r"python (sweeps/\w+\.py|benchmarks/\w+\.py)", text):
        assert (ROOT / path).is_file(), path
    for module in set(re.findall(r"python -m (jepa_ray\.\w+)", text)):
        path = ROOT / module.replace(".", "/")
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), module


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (outside code blocks)."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", ["README.md", "docs/benchmarks.md"])
def test_local_links_and_anchors_resolve(doc):
    source = ROOT / doc
    for target in re.findall(r"\]\(([^)\s]+)\)", source.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (source.parent / file).resolve() if file else source
        assert path.exists(), f"{doc}: {target}"
        if anchor:
            assert anchor in heading_anchors(path), f"{doc}: {target}"


def test_closed_form_density_table_is_the_closed_form():
    from jepa_ray.targets import expected_l0_density

    text = (ROOT / "README.md").read_text()
    header = re.search(r"^\| μ \\ p \|(.+)\|$", text, flags=re.M)
    assert header, "the README's closed-form density table"
    ps = [float(c) for c in header.group(1).split("|")]
    rows = re.findall(r"^\| (-?[\d.]+) \|((?: [\d.]+ \|)+)$", text[header.end() :], flags=re.M)
    assert len(rows) >= 5
    for mu, cells in rows:
        values = [c.strip() for c in cells.strip(" |").split("|")]
        assert len(values) == len(ps)
        for p, value in zip(ps, values):
            decimals = len(value.split(".")[1]) if "." in value else 0
            assert round(expected_l0_density(p, float(mu)), decimals) == float(value), (mu, p, value)


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
