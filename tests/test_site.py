"""Test of the results site (scripts/build_site.py, Sphinx + myst-nb) in a real headless browser (Debian's
chromium): built from a synthetic last run (executed notebooks under runs/, a summary.json with claims),
the landing page loads with one claims-table row per claim and a figure per paper, and every notebook page
renders all of its figures. A screenshot of the landing page is saved to build/test-artifacts/."""
import importlib.util
import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from gsmu.base.claims import ClaimSpec, Paper, aggregate, as_dict

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium); "
                                                          "the site test needs a real headless browser")
BOOKS = ("02_slingshot_manipulation", "06_unlearning_certified")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HARNESS = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="f" src="PAGE" style="width:1200px;height:800px" onload="check()"></iframe>
<script>
function check() {
  const doc = document.getElementById('f').contentDocument;
  const imgs = Array.from(doc.images);
  const tables = Array.from(doc.querySelectorAll('table')).map(t => t.querySelectorAll('tbody tr').length);
  document.getElementById('result').textContent = JSON.stringify({
    title: doc.title, images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    table_rows: tables, text: doc.body.innerText.slice(0, 20000)});
}
</script></body></html>"""


def chromium(*args, timeout=120):
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                               text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def inspect(page: Path) -> dict:
    """Load `page` in an iframe of a harness page; report its images (loaded or not), tables and text."""
    harness = page.parent / f"_harness_{page.stem}.html"
    harness.write_text(HARNESS.replace("PAGE", page.name))
    result = chromium("--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
                      harness.as_uri())
    harness.unlink()
    start = result.stdout.find('<pre id="result">')
    assert start >= 0, result.stderr[-2000:]
    text = result.stdout[start + len('<pre id="result">'):result.stdout.find("</pre>", start)]
    import html
    return json.loads(html.unescape(text))


def png_outputs(book: Path) -> int:
    nb = json.loads(book.read_text())
    return sum("image/png" in o.get("data", {}) for c in nb["cells"] if c["cell_type"] == "code"
               for o in c.get("outputs", []))


def claim_rows() -> list[dict]:
    specs = [ClaimSpec("t.paper_a", "paper", "a paper number", paper=Paper(14.0, "GS paper Table 1"), unit="x",
                       rule="mean >= 10", data="MNIST"),
             ClaimSpec("t.paper_b", "paper", "another one", paper=Paper(0.9, "MU paper Sec. 6"), unit="",
                       rule="abs(mean - paper) <= 0.05", data="Spambase"),
             ClaimSpec("t.ext", "extension", "ours", paper=Paper(None, "ours (no paper value)"), unit="", rule="mean > 0", data="MNIST"),
             ClaimSpec("t.sanity", "sanity", "a sanity check", paper=Paper(None, "sanity (no paper value)"), unit="", rule="mean < 1",
                       data="MNIST")]
    rows = []
    for spec in specs:
        for seed, value in enumerate((12.0, 0.91, 0.5)):
            rows.append({**asdict(spec), "value": value, "seed": seed, "profile": "quick", "notebook": BOOKS[0],
                         "holds": True})
    return rows


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if importlib.util.find_spec("myst_nb") is None:
        pytest.fail("myst-nb is not installed: install the site extra (pip install -e '.[site]').")
    tmp = tmp_path_factory.mktemp("site")
    books = tmp / "notebooks"
    books.mkdir()
    for stem in BOOKS:
        shutil.copy(ROOT / "notebooks" / f"{stem}.ipynb", books)
        run = tmp / "results" / "runs" / stem / "key0"
        run.mkdir(parents=True)
        nb = json.loads((books / f"{stem}.ipynb").read_text())
        first_md = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
        first_md["source"] = "".join(first_md["source"]) + "\n\nEXECUTED-BY-THE-RUN marker.\n"
        (run / f"{stem}.ipynb").write_text(json.dumps(nb))
        (run / "job.json").write_text(json.dumps({"status": "passed", "parameters": {"seed": 0},
                                                  "started": "2026-01-01T00:00:00+00:00"}))
    claims = aggregate(claim_rows())
    summary = {"profile": "quick", "commit": "0" * 40, "started": "2026-01-01", "seconds": 1.0,
               "hardware": {"cpu": "test", "cores": 2}, "claims": [as_dict(c) for c in claims]}
    (tmp / "results" / "summary.json").write_text(json.dumps(summary))
    out = tmp / "html"
    build = subprocess.run([str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else "python",
                            str(ROOT / "scripts" / "build_site.py"), "--results", str(tmp / "results"),
                            "--notebooks", str(books), "--out", str(out)], capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return out, books, len(claims)


def test_landing_page_has_claims_and_figures(site):
    out, _, n_claims = site
    page = inspect(out / "index.html")
    assert "reproduction results" in page["title"]
    assert sum(page["table_rows"]) == n_claims == 4  # one row per claim (paper, extension, sanity tables)
    assert "Paper claims" in page["text"] and "Sanity checks" in page["text"] and "Extensions" in page["text"]
    assert page["images"] == len(BOOKS) and page["loaded"] == page["images"]  # a figure per paper, decoded
    shots = ROOT / "build" / "test-artifacts"
    shots.mkdir(parents=True, exist_ok=True)
    result = chromium("--window-size=1280,1600", f"--screenshot={shots / 'site_index.png'}", (out / "index.html").as_uri())
    assert (shots / "site_index.png").is_file(), result.stderr[-2000:]
    with Image.open(shots / "site_index.png") as im:
        assert im.size == (1280, 1600) and ImageStat.Stat(im.convert("L")).stddev[0] > 10  # not a blank page


def test_every_notebook_page_renders_its_figures(site):
    out, books, _ = site
    for stem in BOOKS:
        page = inspect(out / "notebooks" / f"{stem}.html")
        expected = png_outputs(books / f"{stem}.ipynb")
        assert expected > 0
        assert page["images"] == expected and page["loaded"] == expected, (stem, page["images"], page["loaded"])
        assert "EXECUTED-BY-THE-RUN" in page["text"]  # the run's executed notebook, not the committed one


def test_reference_page_without_paper_run(site):
    out, _, _ = site
    page = inspect(out / "reference.html")
    assert "Paper-profile reference results" in page["text"]
