"""Derive the test's reference bands from a multi-seed run of the main job.

Usage: .venv/bin/python scripts/make_reference.py [results/quick/summary.json] [tests/reference/quick.json]
                                                  [--extra=LABEL=CLAIMS.json ...] [--merge]

`--extra` adds the claims of a test run under other arithmetic (e.g. `ATEN_CPU_CAPABILITY=default`, seed 0:
a file or the whole `claims/` folder of its `$REPRO_RESULTS`) as further draws: for chaotic claims another CPU's rounding
moves the result as much as another seed does, or more, and the seeds alone would underestimate that.

Band of each claim: a 99% prediction interval for one new draw from the seeds' distribution,
`mean ± t(0.995, n−1)·sd·√(1 + 1/n)`, widened by 2% of the largest |value| plus 1e-6 (claims the seed does
not move still meet another CPU's rounding). A claim that gave no number (NaN) in some seed also accepts NaN;
one that gave none in any seed expects NaN. The test run executes seed 0 on whatever CPU it gets; a
value outside the band means the result changed.

`--merge`: the summary covers some notebooks only (e.g. `./run_all.sh --only NB`): their claims replace those
of the same notebooks in the existing reference, every other notebook's bands stay as they were, and the run
is listed under `updates` (notebooks, commit, hardware, date, extra runs).
"""
from __future__ import annotations

import argparse
import json
import math
from datetime import datetime, timezone
from pathlib import Path

from scipy import stats

ROOT = Path(__file__).resolve().parent.parent


def band(values: list[float]) -> tuple[float, float, float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = (stats.t.ppf(0.995, n - 1) * sd * math.sqrt(1 + 1 / n) if n > 1 else 0.0)
    half += 0.02 * max(abs(v) for v in values) + 1e-6
    return mean, sd, mean - half, mean + half


def main(summary_path: Path, out: Path, extras: dict[str, Path], merge: bool = False) -> None:
    summary = json.loads(summary_path.read_text())
    extra_rows = {label: read_claims(path) for label, path in extras.items()}
    claims = {}
    for c in summary["claims"]:
        values = list(c["ours"]["values"])
        runs = [f"seed {s}" for s in c["ours"]["seeds"]]
        for label, rows in extra_rows.items():
            if c["id"] in rows:
                values.append(rows[c["id"]]["value"])
                runs.append(f"seed {rows[c['id']]['seed']}, {label}")
        finite = [v for v in values if math.isfinite(v)]
        if c["ours"]["n"] < 3:
            raise SystemExit(f"{c['id']}: needs >= 3 seeds for a band, has {values}")
        entry = {"notebook": c["notebook"], "values": values, "seeds": c["ours"]["seeds"], "runs": runs,
                 "nan_allowed": len(finite) < len(values)}  # a seed gave no number (e.g. nothing certified)
        if len(finite) >= 2:
            mean, sd, low, high = band(finite)
            entry.update(mean=mean, sd=sd, low=low, high=high)
        elif finite:
            raise SystemExit(f"{c['id']}: only one finite value among {values}; run more seeds")
        claims[c["id"]] = entry
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if merge:
        ref = json.loads(out.read_text())
        if ref["profile"] != summary["profile"]:
            raise SystemExit(f"--merge: {summary_path} is profile {summary['profile']!r}, {out} {ref['profile']!r}")
        notebooks = sorted({c["notebook"] for c in claims.values()})
        merged: dict = {}
        for k, v in ref["claims"].items():  # the file's order (notebook by notebook), new claims in place of old
            if v["notebook"] not in notebooks:
                merged[k] = v
            else:  # the notebook's new claims, where its first old claim stood (re-setting keys keeps their place)
                merged.update({i: c for i, c in claims.items() if c["notebook"] == v["notebook"]})
        ref["claims"] = {**merged, **claims}  # notebooks new to the reference go last
        ref.setdefault("updates", []).append({"notebooks": notebooks, "commit": summary["commit"],
                                              "hardware": summary.get("hardware"), "made": made,
                                              "extra_runs": sorted(extras)})
    else:
        ref = {"profile": summary["profile"], "commit": summary["commit"], "hardware": summary.get("hardware"),
               "extra_runs": sorted(extras), "made": made,
               "band": "mean ± t(0.995, n-1)·sd·sqrt(1 + 1/n) + 0.02·max|value| + 1e-6", "claims": claims}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(ref, indent=1) + "\n")
    print(f"{len(claims)} claims -> {out}")


def read_claims(path: Path) -> dict[str, dict]:
    """Claim rows by id from one claims file, or from every `*.json` of a test run's claims folder (the notebooks'
    claims and tests/test_claims_bands.py's grid_settings.json)."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    return {cid: row for f in files for cid, row in json.loads(f.read_text()).items()}


def _extra(text: str) -> tuple[str, Path]:
    """`LABEL=CLAIMS` of `--extra` (a claims file or folder), checked to exist."""
    label, sep, path = text.rpartition("=")
    if not sep or not label or not Path(path).exists():
        raise argparse.ArgumentTypeError(f"--extra wants LABEL=CLAIMS (a claims .json or a claims folder) that "
                                         f"exists, got {text!r}")
    return label, Path(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("summary", nargs="?", type=Path, default=ROOT / "results" / "quick" / "summary.json",
                        help="summary.json of a multi-seed run of the main job")
    parser.add_argument("reference", nargs="?", type=Path, default=ROOT / "tests" / "reference" / "quick.json",
                        help="the reference file to write")
    parser.add_argument("--extra", type=_extra, action="append", default=[], metavar="LABEL=CLAIMS",
                        help="claims (a .json or the claims/ folder) of a test run under other arithmetic, as "
                             "further draws (repeatable)")
    parser.add_argument("--merge", action="store_true",
                        help="replace only the summary's notebooks' claims in the existing reference")
    args = parser.parse_args()
    if not args.summary.is_file():
        parser.error(f"no summary at {args.summary}: run ./run_all.sh first, or name the summary.json")
    main(args.summary, args.reference, dict(args.extra), merge=args.merge)
