"""Adversarial sweep of notebook parameters: every bad value must stop the notebook in its first code cell
after the parameters, with a message naming the parameter — none silent, none from deep inside a library.

Usage: .venv/bin/python scripts/bad_parameter_sweep.py [PATTERN ...]   (default: every notebook)

Cases are generated from each notebook's typed parameters cell: a misspelled name, a value of the wrong
type, None where the type is not Optional, a string where a number is expected, and a negative or
non-integer seed. Prints one line per case and a count; exits 1 if any case was silent or unclear.
"""
from __future__ import annotations

import ast
import fnmatch
import os
import sys
from pathlib import Path

import nbformat
import papermill as pm

ROOT = Path(__file__).resolve().parent.parent


def cases(book: Path) -> list[tuple[dict, str]]:
    """(parameters to inject, the name the error must mention) for one notebook."""
    nb = nbformat.read(book, 4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])][0]
    declared = {s.target.id: ast.unparse(s.annotation) for s in ast.parse(params.source).body}
    out: list[tuple[dict, str]] = []
    first = next(n for n in declared if n not in ("profile", "seed", "device"))
    out.append(({first + "x": 1}, first + "x"))  # a typo: papermill would inject it as a new variable
    out.append(({"seed": -1}, "seed"))
    out.append(({"seed": 1.5}, "seed"))
    out.append(({"profile": "papr"}, "profile"))
    for name, annotation in declared.items():
        if name in ("profile", "seed"):
            continue
        if annotation.startswith("Optional"):
            out.append(({name: [1, 2]}, name))
        elif annotation in ("int", "float"):
            out.append(({name: "abc"}, name))
            out.append(({name: None}, name))
        elif annotation == "str":
            out.append(({name: 3}, name))
        elif annotation.startswith(("list", "tuple")):
            out.append(({name: "abc"}, name))
        elif annotation == "bool":
            out.append(({name: "yes"}, name))
    return out


def run_case(book: Path, parameters: dict, name: str, out_dir: Path) -> tuple[str, str]:
    """('ok' | 'silent' | 'late' | 'unclear', message)."""
    nb = nbformat.read(book, 4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    params_at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    check_at = code[code.index(params_at) + 1] + 1  # +1: papermill inserts the injected-parameters cell
    truncated = nbformat.v4.new_notebook(metadata=nb.metadata)
    truncated.cells = nb.cells[:check_at]  # set-up, parameters, check: a pass would run the whole notebook
    path = out_dir / book.name
    nbformat.write(truncated, path)
    try:
        pm.execute_notebook(str(path), str(out_dir / ("out_" + book.name)), parameters=parameters,
                            kernel_name="python3", progress_bar=False, cwd=str(book.parent))
    except pm.PapermillExecutionError as e:
        message = f"{e.ename}: {e.evalue}"
        if e.cell_index > check_at:
            return "late", message
        return ("ok" if name in e.evalue else "unclear"), message
    return "silent", "no error"


def main(patterns: list[str]) -> int:
    import tempfile
    os.environ.setdefault("TQDM_DISABLE", "1")
    books = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if patterns:
        books = [b for b in books if any(fnmatch.fnmatch(b.name, f"*{p}*") for p in patterns)]
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for book in books:
            for parameters, name in cases(book):
                verdict, message = run_case(book, parameters, name, Path(tmp))
                counts[verdict] = counts.get(verdict, 0) + 1
                print(f"{verdict:<8} {book.stem} {parameters} -> {message[:150]}", flush=True)
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), f"(of {sum(counts.values())} cases)")
    return 0 if set(counts) <= {"ok"} else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
