"""environment.yml must install exactly what pyproject.toml declares; CI must run README's test command."""
import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs |= set(extra)
    return {r.replace(" ", "") for r in reqs}


def environment_pip_requirements() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    indent = len(lines[start + 1]) - len(lines[start + 1].lstrip())
    reqs = set()
    for line in lines[start + 1 :]:
        if not line.strip() or len(line) - len(line.lstrip()) < indent:
            break
        reqs.add(line.strip()[2:].replace(" ", ""))
    return reqs - {"-e."}


def test_environment_yml_matches_pyproject():
    env, project = environment_pip_requirements(), pyproject_requirements()
    assert env == project, f"only in environment.yml: {sorted(env - project)}; only in pyproject.toml: {sorted(project - env)}"
    python = re.search(r"-\s*python\s*=\s*([\d.]+)", (ROOT / "environment.yml").read_text()).group(1)
    minimum = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"].lstrip(">=")
    assert tuple(map(int, python.split("."))) >= tuple(map(int, minimum.split(".")))


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"<!-- test-command -->\s*```(?:bash)?\n(.*?)\n```", readme, re.S).group(1).strip().splitlines()[-1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci, f"README's test command {command!r} is not what .ci/run runs"


def test_the_documents_link_only_to_files_in_the_repository():
    """Relative links of README.md, docs/*.md and results/README.md point at files that exist here."""
    import re as _re

    broken = []
    for doc in [ROOT / "README.md", ROOT / "results" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in _re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("#"):
                continue
            if not (doc.parent / target.split("#")[0]).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_every_notebook_states_its_time_at_the_top():
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        intro = "".join(next(c for c in cells if c["cell_type"] == "markdown")["source"])
        assert "**Time**" in intro and re.search(r"\d+ (seconds|minutes?|hours)|a minute", intro), path.name
