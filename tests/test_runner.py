"""Tests of gsmu.runner (the main job on Dask distributed), with real processes: a LocalCluster, a scheduler and
workers started as separate processes on the loopback interface, a worker killed mid-job, a run interrupted
with Ctrl-C and resumed. The jobs run tests/data/runner_seeded.ipynb, which records one claim, seed + 1."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import nbformat
import pytest

from gsmu import runner

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
BOOK = DATA / "runner_seeded.ipynb"
SCHEMA = json.loads((ROOT / "schemas" / "summary.schema.json").read_text())
DASK = Path(sys.executable).parent / "dask"
# a fixed commit: other people committing while the tests run must not change the job keys
ENV = {**os.environ, "REPRO_COMMIT": "test-commit", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(results: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gsmu.runner", "--notebooks", str(DATA), "--results", str(results),
                           *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def start(results: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gsmu.runner", "--notebooks", str(DATA), "--results",
                             str(results), *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    # A test command started in the background (nohup ... &, some CI shells) inherits SIGINT as ignored, and
    # Python keeps an ignored SIGINT ignored: restore the default so the Ctrl-C test means something.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def summary(results: Path) -> dict:
    s = json.loads((results / "summary.json").read_text())
    jsonschema.validate(s, SCHEMA)
    return s


def the_claim(s: dict, cid: str = "runner_test.seed_plus_one") -> dict:
    (claim,) = [c for c in s["claims"] if c["id"] == cid]
    return claim


def job_infos(results: Path) -> dict[int, dict]:
    """seed -> job.json of every finished job folder."""
    out = {}
    for path in (results / "runs" / "runner_seeded").glob("*/job.json"):
        info = json.loads(path.read_text())
        assert info["parameters"]["seed"] not in out, "two folders for one job"
        out[info["parameters"]["seed"]] = info
    return out


def assert_three_seeds(results: Path) -> dict:
    s = summary(results)
    claim = the_claim(s)
    assert claim["ours"]["n"] == 3 and claim["ours"]["seeds"] == [0, 1, 2]
    assert claim["ours"]["values"] == [1.0, 2.0, 3.0]  # seed + 1, each seed once
    assert claim["ours"]["mean"] == 2.0 and claim["ours"]["sd"] == 1.0 and claim["holds_seeds"] == 3
    assert [j["status"] for j in s["jobs"]] == ["passed"] * 3
    assert not list((results / "runs" / "runner_seeded").glob(".*")), "staging folders left behind"
    return s


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """One run of the three seeds on a LocalCluster with 2 workers."""
    results = tmp_path_factory.mktemp("local") / "results"
    t0 = time.time()
    proc = run(results, "--workers", "2", "--grid", "seed=0,1,2")
    return results, proc, time.time() - t0


def test_local_cluster_runs_the_seeds_and_aggregates(local_run):
    results, proc, _ = local_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LocalCluster, 2 single-threaded worker(s)" in proc.stdout
    s = assert_three_seeds(results)
    infos = job_infos(results)
    for seed, info in infos.items():
        folder = results / "runs" / "runner_seeded" / info["key"]
        assert (folder / "runner_seeded.ipynb").exists() and (folder / "claims" / "runner_seeded.json").exists()
        assert json.loads((folder / "metrics" / "runner_seeded.json").read_text()) == {"seed_squared": seed ** 2}
        assert "without encryption" not in (folder / "kernel.log").read_text()
    assert len({i["pid"] for i in infos.values()}) == 2, "both workers should have run jobs"
    md = (results / "summary.md").read_text()
    assert "### Sanity checks" in md and "(3 of 3 seeds)" in md and "2 ± 1" in md
    assert s["hardware"]["cores"] == os.cpu_count() and s["commit"] == "test-commit"
    assert "without encryption" not in proc.stdout + proc.stderr


def in_process(monkeypatch, capsys, results: Path, *args: str) -> tuple[int, str, str]:
    """The runner's main() in this process (for runs that start no cluster: fast)."""
    monkeypatch.setenv("REPRO_COMMIT", ENV["REPRO_COMMIT"])
    code = runner.main(["--notebooks", str(DATA), "--results", str(results), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_finished_jobs_are_skipped_and_force_reruns(local_run, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    shutil.copytree(local_run[0], results)
    stamps = {p: p.stat().st_mtime_ns for p in results.glob("runs/*/*/job.json")}
    code, out, err = in_process(monkeypatch, capsys, results, "--grid", "seed=0,1,2")
    assert code == 0, out + err
    assert "3 already passed (skipped), 0 to run" in out
    assert {p: p.stat().st_mtime_ns for p in results.glob("runs/*/*/job.json")} == stamps
    assert_three_seeds(results)
    code, out, err = in_process(monkeypatch, capsys, results, "--grid", "seed=0,1,2", "--force", "--summary-only")
    assert code == 0 and "0 already passed (skipped), 3 to run" in out, out + err
    monkeypatch.setenv("REPRO_COMMIT", "another-commit")  # new code: new keys, nothing done yet
    runner.main(["--notebooks", str(DATA), "--results", str(results), "--summary-only"])
    assert "0 already passed (skipped), 3 to run" in capsys.readouterr().out
    assert [j["error"] for j in summary(results)["jobs"]] == ["not run"] * 3


def test_corrupt_files_are_reported_not_fatal(local_run, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    shutil.copytree(local_run[0], results)
    infos = job_infos(results)
    folder = lambda seed: results / "runs" / "runner_seeded" / infos[seed]["key"]  # noqa: E731
    (folder(0) / "claims" / "runner_seeded.json").write_text('{"runner_test.seed_plus_one": {"id": ')  # truncated
    (folder(1) / "job.json").write_text("{")  # a job.json cut short: the job is not complete
    (results / "summary.json").write_text("[")
    code, out, err = in_process(monkeypatch, capsys, results, "--summary-only", "--grid", "seed=0,1,2")
    assert code == 0, out + err
    assert "unreadable claims" in err and "no complete job.json" in err
    s = summary(results)  # rebuilt
    assert [j["status"] for j in s["jobs"]] == ["incomplete", "incomplete", "passed"]
    assert the_claim(s)["ours"]["values"] == [3.0]


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes (no nanny: a killed worker stays dead) on 127.0.0.1.
    Shared by the two tests below; the second kills one of the workers."""
    from distributed import Client
    file = tmp_path_factory.mktemp("dask") / "scheduler.json"
    procs = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(file)], env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        for _ in range(300):
            if file.exists() and file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([str(DASK), "worker", address, "--nthreads", "1", "--no-nanny",
                                           "--host", "127.0.0.1", "--no-dashboard"], env=ENV,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, [p.pid for p in procs[1:]]
    finally:
        for p in procs[::-1]:  # only the processes this fixture started: the workers, then the scheduler
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


def test_scheduler_and_workers_as_separate_processes(dask_cluster, tmp_path):
    address, workers = dask_cluster
    results = tmp_path / "results"
    proc = run(results, "--scheduler", address, "--grid", "seed=0,1,2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"scheduler {address}" in proc.stdout
    assert_three_seeds(results)
    assert {i["pid"] for i in job_infos(results).values()} <= set(workers)


def test_failing_job_fails_alone_and_is_named(dask_cluster, tmp_path):
    results = tmp_path / "results"
    proc = run(results, "--scheduler", dask_cluster[0], "--grid", "seed=1", "--grid", "fail=False,True")
    assert proc.returncode == 1
    failed = [line for line in proc.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "fail=True" in failed[0] and "failing on purpose" in failed[0], proc.stderr
    s = summary(results)
    assert sorted(j["status"] for j in s["jobs"]) == ["failed", "passed"]
    for j in s["jobs"]:
        executed = results / j["executed"]
        assert executed.exists()
        if j["status"] == "failed":  # the executed notebook shows the error
            errors = [o for c in nbformat.read(executed, 4).cells for o in c.get("outputs", [])
                      if o.get("output_type") == "error"]
            assert errors and "failing on purpose" in errors[0]["evalue"]
    # a grid over more than seeds keeps the settings apart, and the job at the notebook's default (fail=False)
    # keeps the plain id: a setting added to a grid does not rename the default's claims
    assert the_claim(s, "runner_test.seed_plus_one")["ours"]["values"] == [2.0]
    assert [c["id"] for c in s["claims"]] == ["runner_test.seed_plus_one"]


def test_worker_killed_mid_job_is_retried_on_the_other(dask_cluster, tmp_path):
    address, workers = dask_cluster
    results, marker = tmp_path / "results", tmp_path / "started"
    proc = start(results, "--scheduler", address, "--grid", "seed=0,1,2", "--grid", "sleep=4",
                 "--grid", f"marker={marker}")
    try:
        for _ in range(600):  # the first job to start: its kernel notes its worker's pid
            started = list(marker.glob("*")) if marker.exists() else []
            if started:
                break
            time.sleep(0.1)
        victim_file = started[0]
        victim_seed, victim = int(victim_file.name.split("-")[0]), int(victim_file.read_text())
        assert victim in workers
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    assert_three_seeds(results)  # nothing lost, nothing duplicated
    (survivor,) = set(workers) - {victim}
    assert job_infos(results)[victim_seed]["pid"] == survivor
    attempts = [p.name for p in marker.glob(f"{victim_seed}-*")]
    assert len(attempts) == 2, attempts  # started on the killed worker, then again on the other


def test_interrupted_run_resumes_without_redoing_finished_jobs(tmp_path):
    results = tmp_path / "results"
    grid = ("--grid", "seed=0,1,2", "--grid", "sleep=3")  # long enough that Ctrl-C lands mid-run on a fast machine
    proc = start(results, "--workers", "1", *grid)
    try:
        for _ in range(1200):
            if list(results.glob("runs/runner_seeded/*/job.json")):
                break
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert "rerun the same command to resume" in out
    done = {p: p.stat().st_mtime_ns for p in results.glob("runs/*/*/job.json")
            if json.loads(p.read_text())["status"] == "passed"}
    assert 1 <= len(done) < 3
    s = summary(results)  # truthful: the unfinished jobs are not "passed"
    assert sum(j["status"] == "passed" for j in s["jobs"]) == len(done)
    proc = run(results, "--workers", "2", *grid)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(done)} already passed (skipped), {3 - len(done)} to run" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in done} == done  # not recomputed
    assert_three_seeds(results)


# --- keys, grids and arguments (no cluster) ---------------------------------------------------------------------
def test_job_key_tracks_notebook_parameters_commit_and_data(tmp_path):
    digest = runner.notebook_digest(BOOK)
    key = runner.job_key(digest, {"profile": "quick", "seed": 0}, "c1", "d1")
    assert len(key) == 12
    assert runner.job_key(digest, {"seed": 0, "profile": "quick"}, "c1", "d1") == key  # order-free
    others = [runner.job_key(digest, {"profile": "quick", "seed": 1}, "c1", "d1"),
              runner.job_key(digest, {"profile": "paper", "seed": 0}, "c1", "d1"),
              runner.job_key(digest, {"profile": "quick", "seed": 0}, "c2", "d1"),
              runner.job_key(digest, {"profile": "quick", "seed": 0}, "c1", "d2")]
    assert len({key, *others}) == 5
    nb = nbformat.read(BOOK, 4)
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", text="refreshed output\n")]
    nbformat.write(nb, tmp_path / "a.ipynb")
    assert runner.notebook_digest(tmp_path / "a.ipynb") == digest  # outputs do not change results
    nb.cells[-1].source += "\n# edited"
    nbformat.write(nb, tmp_path / "b.ipynb")
    assert runner.notebook_digest(tmp_path / "b.ipynb") != digest


def test_plan_orders_notebooks_and_applies_the_grid(tmp_path):
    for name in ("00_a.ipynb", "02_b.ipynb"):
        shutil.copy(BOOK, tmp_path / name)
    books = runner.find_notebooks(tmp_path)
    jobs = runner.plan(books, "quick", tmp_path / "r", {"seed": [5, 6]}, "c", "d")
    assert [(j.stem, j.parameters["seed"]) for j in jobs] == [("00_a", 5), ("00_a", 6), ("02_b", 5), ("02_b", 6)]
    assert [j.order for j in jobs] == sorted(j.order for j in jobs)  # priority -order: 00 before 02
    default = runner.plan(books[:1], "quick", tmp_path / "r", {}, "c", "d")
    assert [j.parameters for j in default] == [{"profile": "quick", "seed": s} for s in (0, 1, 2)]
    assert runner.find_notebooks(tmp_path, "02") == books[1:]


def test_claims_split_by_setting_but_not_by_a_splitting_parameter(tmp_path):
    """A swept setting (alpha) keeps its claims apart; notebook 03's only_alpha (one α per job, filling the cache
    for the whole-sweep job, `AlphaSweep.SPLITS`) does not rename the claims of the job that records them."""
    book = tmp_path / "03_slingshot_alpha.ipynb"
    shutil.copy(BOOK, book)
    jobs = runner.plan([book], "paper", tmp_path / "r", {"seed": [0], "alpha": [0.5, 0.8]}, "c", "d")
    assert len(jobs) == 22 and runner._varying(book.stem, jobs) == ["alpha"]  # only_alpha: 11 values, not varying
    assert runner.claim_id_suffix(jobs[0].parameters, ["alpha"], runner.declared_defaults(book)) == ".alpha_0_5"
    assert runner._varying("99_other", jobs) == ["only_alpha", "alpha"]  # no SPLITS there: a setting like any other


def test_the_job_at_the_notebooks_defaults_keeps_plain_claim_ids(tmp_path):
    """Notebook 07's quick grid adds dataset=cifar10 beside its default mnist: the mnist job's claims keep their
    ids, the other setting's get a suffix (here with the test notebook's declared `sleep`, default 0.0)."""
    assert runner.declared_defaults(BOOK) == {"profile": "quick", "seed": 0, "sleep": 0.0, "fail": False, "marker": ""}
    jobs = runner.plan([BOOK], "quick", tmp_path / "r", {"seed": [0], "sleep": [0.0, 0.5], "fail": [False]}, "c", "d")
    varying = runner._varying(BOOK.stem, jobs)
    assert varying == ["sleep"]
    suffixes = {j.parameters["sleep"]: runner.claim_id_suffix(j.parameters, varying, runner.declared_defaults(BOOK)) for j in jobs}
    assert suffixes == {0.0: "", 0.5: ".sleep_0_5"}
    # two varying parameters: plain only where every one of them is at its default
    jobs = runner.plan([BOOK], "quick", tmp_path / "r", {"seed": [0], "sleep": [0.0, 0.5], "fail": [False, True]}, "c", "d")
    got = sorted(runner.claim_id_suffix(j.parameters, ["sleep", "fail"], runner.declared_defaults(BOOK)) for j in jobs)
    assert got == ["", ".sleep_0_0.fail_true", ".sleep_0_5.fail_false", ".sleep_0_5.fail_true"]


def test_parse_grid():
    assert runner.parse_grid(["seed=0,1,2", "alpha=0.5", "fail=true,False", "name=vgg,None"]) == \
        {"seed": [0, 1, 2], "alpha": [0.5], "fail": [True, False], "name": ["vgg", None]}


def test_grid_override_reaches_other_notebooks_only_for_their_parameters(tmp_path, capsys):
    """`--only 02_b --grid extra=7`: the summary lists 02_b's jobs with extra=7 and 00_a (which has no `extra`)
    with its own grid, not with a parameter it would reject."""
    nb = json.loads(BOOK.read_text())
    shutil.copy(BOOK, tmp_path / "00_a.ipynb")
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    cell["source"] = "".join(cell["source"]) + "\nextra: int = 0  # a parameter only this notebook declares\n"
    (tmp_path / "02_b.ipynb").write_text(json.dumps(nb))
    base = runner.declared_parameters(tmp_path / "00_a.ipynb")
    assert {"profile", "seed", "fail"} <= base and runner.declared_parameters(tmp_path / "02_b.ipynb") == base | {"extra"}
    runner.main(["--notebooks", str(tmp_path), "--only", "02_b", "--grid", "extra=7", "--summary-only",
                 "--results", str(tmp_path / "r")])
    capsys.readouterr()
    jobs = summary(tmp_path / "r")["jobs"]
    assert sorted((j["notebook"], j["parameters"].get("extra")) for j in jobs) == \
        [("00_a", None)] * 3 + [("02_b", 7)] * 3


@pytest.mark.parametrize("argv, message", [
    (["--only", ""], "--only '' is empty"),
    (["--only", "no_such_notebook"], "no notebook in"),
    (["--grid", "seed"], "NAME=V1,V2"),
    (["--grid", "seed=0,,1"], "empty value"),
    (["--grid", "profile=paper"], "--profile"),
    (["--workers", "0"], "--workers 0"),
    (["--scheduler", "localhost"], "tcp://127.0.0.1:8786"),
    (["--scheduler", "tcp://127.0.0.1:8786", "--workers", "2"], "drop --workers"),
    (["--cluster-config", "x.yaml"], "for --cluster slurm"),
    (["--cluster", "slurm", "--cluster-config", "/no/such.yaml"], "no such file"),
    (["--profile", "fast"], "invalid choice: 'fast'"),
])
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        runner.parse_args(["--notebooks", str(DATA), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_results_path_that_is_a_file_and_missing_notebooks_folder(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    for argv, message in ((["--notebooks", str(DATA), "--results", str(tmp_path / "f")], "is a file"),
                          (["--notebooks", str(tmp_path / "nope")], "no such folder")):
        with pytest.raises(SystemExit):
            runner.parse_args(argv)
        assert message in capsys.readouterr().err


def test_slurm_cluster_from_a_config_file(tmp_path):
    pytest.importorskip("dask_jobqueue")
    config = tmp_path / "slurm.yaml"
    config.write_text("jobqueue:\n  slurm:\n    cores: 1\n    processes: 1\n    memory: 16GB\n"
                      "    walltime: '04:00:00'\n    queue: gpu\n    job_extra_directives: ['--gres=gpu:1']\n"
                      "    job_script_prologue: ['export OMP_NUM_THREADS=1']\n")
    cluster = runner.slurm_cluster(str(config))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p gpu" in script and "#SBATCH --gres=gpu:1" in script and "#SBATCH -t 04:00:00" in script
    assert "export OMP_NUM_THREADS=1" in script and "--nthreads 1" in script


def test_plan_starts_the_longest_chain_first(tmp_path, monkeypatch):
    from dataclasses import dataclass
    from gsmu import experiments
    from gsmu.base.profiles import Experiment

    def exp(seconds: float, needs: tuple = ()):
        @dataclass(frozen=True)
        class E(Experiment):
            SECONDS = {"quick": seconds}
            NEEDS = needs
        return E

    # 00 is short but 02 (long) and 03 need its model: chain 10 + 100 + 50 beats the standalone 120
    registry = {"00_a": exp(10), "02_b": exp(100, ("00_a",)), "03_c": exp(50, ("02_b",)), "05_d": exp(120),
                "06_e": exp(5)}
    monkeypatch.setattr(experiments, "NOTEBOOKS", registry)
    assert experiments.critical_path(list(registry), "quick") == {"00_a": 160, "02_b": 150, "03_c": 50,
                                                                  "05_d": 120, "06_e": 5}
    for name in registry:
        shutil.copy(BOOK, tmp_path / f"{name}.ipynb")
    jobs = runner.plan(runner.find_notebooks(tmp_path), "quick", tmp_path / "r", {"seed": [0]}, "c", "d")
    assert [j.stem for j in sorted(jobs, key=lambda j: j.order)] == ["00_a", "02_b", "05_d", "03_c", "06_e"]
