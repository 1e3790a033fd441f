"""Packaging and notebook conventions: one dependency list, papermill-ready notebooks, one repository URL."""
import ast
import json
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
    assert f'repository-code: "{url}"' in (ROOT / "CITATION.cff").read_text()


@pytest.mark.parametrize("book", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(book):
    """Typed, documented papermill parameters; no committed errors, stderr, local paths or long functions."""
    nb = nbformat.read(book, 4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "papermill needs exactly one cell tagged 'parameters'"
    names = []
    for stmt, line in zip(ast.parse(params[0].source).body, [l for l in params[0].source.splitlines() if l.strip()]):
        assert isinstance(stmt, ast.AnnAssign) and stmt.value is not None, f"not a typed assignment: {line}"
        ast.literal_eval(stmt.value)  # literals only
        comment = re.search(r"#\s*(\S.*)$", line)
        assert comment, f"parameter without a documenting comment: {line}"
        assert "=" not in comment.group(1), f"papermill cannot parse a comment holding '=': {line}"
        names.append(stmt.target.id)
    assert "profile" in names and "seed" in names
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = code[code.index(params[0]) + 1]
    assert "check_parameters(globals()" in first.source, "the cell after the parameters must validate them all"
    for cell in nb.cells:
        assert "SPEC.md" not in cell.source and "../shared" not in cell.source, "cite the papers, not SPEC.md"
        if cell.cell_type != "code":
            continue
        assert not re.search(r"^\s*(from|import) lib\b", cell.source, re.M), "import from gsmu, not lib"
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", "committed error output"
            assert not (out.get("output_type") == "stream" and out.get("name") == "stderr"), \
                f"committed stderr output (progress bars, warnings): {''.join(out.get('text', ''))[:200]!r}"
            text = json.dumps(out)
            assert "/work/" not in text and "/.venv/" not in text and "/home/" not in text, "a local path in outputs"
        for node in ast.walk(ast.parse("\n".join(l for l in cell.source.splitlines() if not l.startswith(("%", "!"))))):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 8, f"function {node.name} belongs in lib/"


def test_no_top_level_lib_package():
    """The distribution installs one package, gsmu; nothing named `lib` (issue: a generic name shadows others)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert cfg["where"] == ["lib"] and cfg["include"] == ["gsmu*"]
    assert not (ROOT / "lib" / "__init__.py").exists()
    for path in list((ROOT / "lib").rglob("*.py")) + list((ROOT / "tests").rglob("*.py")) + list((ROOT / "bench").rglob("*.py")):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) lib\b", text, re.M), f"{path}: imports lib"
        if path.parts[-2] != "tests" or path.name != "test_packaging.py":
            assert "SPEC.md" not in text, f"{path}: cites SPEC.md"


def test_gs_and_mu_never_import_each_other():
    for side, other in (("gs", "mu"), ("mu", "gs")):
        for path in (ROOT / "lib" / "gsmu" / side).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    mod = ("." * node.level) + (node.module or "")
                    assert not (mod.startswith(f"..{other}") or mod.startswith(f"gsmu.{other}")), f"{path} imports {mod}"
    for path in (ROOT / "lib" / "gsmu" / "base").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                assert not mod.startswith(("..", "gsmu.gs", "gsmu.mu")), f"{path} (base) imports {mod}"


@pytest.mark.parametrize("book", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_lists_every_parameter_with_its_type(book):
    """`papermill --help-notebook` must show each parameter typed (it silently drops `X | None`)."""
    import papermill
    params = [c for c in nbformat.read(book, 4).cells if "parameters" in c.metadata.get("tags", [])][0]
    declared = {s.target.id: ast.unparse(s.annotation) for s in ast.parse(params.source).body}
    seen = papermill.inspect_notebook(str(book))
    for name, annotation in declared.items():
        assert name in seen, f"papermill does not see {name}: {annotation} (write Optional[X], not X | None)"
        assert seen[name]["inferred_type_name"] == annotation, (name, seen[name])


def test_lock_file_agrees_with_every_pin():
    """requirements-lock.txt (the whole environment, transitive packages included) holds each pyproject pin."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = list(project["dependencies"]) + [p for extra in project["optional-dependencies"].values() for p in extra]
    lock = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[name.lower().replace("_", "-")] = version
    for pin in pins:
        if "==" not in pin:
            continue  # the project's own extras referring to each other
        name, version = pin.split("==")
        assert lock.get(name.lower().replace("_", "-")) == version, f"{pin} is not what requirements-lock.txt pins"
