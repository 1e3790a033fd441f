"""Packaging and notebook conventions: one dependency list, papermill-ready notebooks, one repository URL."""
import ast
import re
import tomllib
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_environment_yml_matches_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    yml = (ROOT / "environment.yml").read_text()
    pip_deps = [line.strip()[2:] for line in yml.splitlines() if line.startswith("      - ") and "-e ." not in line]
    assert sorted(pip_deps) == sorted(deps)


def test_repository_url_lives_in_pyproject():
    url = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    for book in NOTEBOOKS:
        setup = [c for c in nbformat.read(book, 4).cells if c.cell_type == "code"][0]
        assert setup.source.startswith("# repro-setup") and f"git+{url}" in setup.source, \
            f"{book.name}: set-up cell out of sync; run scripts/refresh_notebooks.py"
    assert url in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("book", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(book):
    nb = nbformat.read(book, 4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "papermill needs exactly one cell tagged 'parameters'"
    names = []
    for stmt, line in zip(ast.parse(params[0].source).body, [l for l in params[0].source.splitlines() if l.strip()]):
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1, f"not a plain assignment: {line}"
        ast.literal_eval(stmt.value)  # literals only
        assert re.search(r"#\s*\S", line), f"parameter without a documenting comment: {line}"
        names.append(stmt.targets[0].id)
    assert "profile" in names and "seed" in names
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert not any(o.get("output_type") == "error" for o in cell.get("outputs", [])), "committed error output"
        for node in ast.walk(ast.parse("\n".join(l for l in cell.source.splitlines() if not l.startswith(("%", "!"))))):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 8, f"function {node.name} belongs in lib/"
