"""Runtime plumbing shared by every notebook: profiles, parameter checks, device, seeds and paths.

Nothing here is paper-specific. Paths: the data and checkpoint caches live under `$REPRO_CACHE` (default
`<checkout>/.cache`, or `~/.cache/gs-mu-repro` for an installed copy); results of a notebook run go to
`$REPRO_RESULTS` (set by `run_all.sh` to `results/<profile>/`; default `results/interactive/`); either set
but empty, or naming a file, is an error rather than the current folder.

Also the one home of the SHA-256 helpers (`sha256_bytes`, `sha256_file`, `tensor_digest`, `state_digest`),
of atomic writes (`atomic_write`: unique temporary file + `os.replace`) and of per-file locks (`file_lock`,
`fcntl.flock` on `<path>.lock`) that the data cache, the checkpoint cache (`gsmu.base.train`) and the
experiments' cache keys use; and of the argument checks (`check_int`, `check_positive`, `check_nonempty`,
`check_choice`, `check_range`) that guard the library's public entry points.
"""
from __future__ import annotations

import difflib
import hashlib
import math
import numbers
import os
import random
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

try:  # POSIX; without it (Windows) writes stay atomic but same-key writers are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

# numpy and torch are imported where they are used: claims files and the runner's bookkeeping import this
# module, and parallel workers should not pay torch's import time for them.

PROFILES = ("quick", "paper")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return `value` if it is one of `choices`, else raise a ValueError naming the parameter."""
    choices = list(choices)
    if value in choices:
        return value
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"{name}={value!r} is not one of {choices}.{hint}")


def check_profile(profile: str) -> str:
    """Validate the notebooks' `profile` parameter ('quick': CPU minutes; 'paper': the papers' sizes)."""
    return check_choice("profile", profile, PROFILES)


def check_range(name: str, value: float, low: float, high: float) -> float:
    """Raise a ValueError naming the parameter unless low <= value <= high."""
    if not (low <= float(value) <= high):
        raise ValueError(f"{name}={value!r} is outside [{low}, {high}].")
    return value


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """Return `value` if it is an integer (not a bool) within [low, high], else raise naming the parameter.

    Integral floats such as 3.0 are refused as well: a step or epoch count given as a float is usually a
    mistake (2.5 epochs) and would otherwise fail later, deep inside `range`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an integer, not {type(value).__name__}.")
    if low is not None and value < low:
        raise ValueError(f"{name}={value!r} must be at least {low}.")
    if high is not None and value > high:
        raise ValueError(f"{name}={value!r} must be at most {high}.")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    """Return `value` if it is a finite real number > 0, else raise naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be a number, not {type(value).__name__}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r} must be a finite number > 0.")
    return value


def check_nonempty(name: str, value: Any) -> Any:
    """Return `value` if it has at least one element (list, tuple, tensor, array), else raise naming it."""
    if value is None or len(value) == 0:
        raise ValueError(f"{name} must not be empty (got {value!r}).")
    return value


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when present, else the CPU."""
    import torch
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available; use device='cpu'.")
    return device


def device_of(model) -> "torch.device":
    """The device of a model's parameters (where its inputs must go)."""
    return next(model.parameters()).device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU torch.Generator seeded with `seed`.

    Also flushes denormal floats to zero on the CPU (x86 FTZ/DAZ, as most frameworks' fast paths do): trained
    weights and gradients produce values below 1.2e-38 whose slow path made MNIST CNN training and slingshot
    steps ~10 % slower here; no result depends on numbers that small."""
    import numpy as np
    import torch
    torch.set_flush_denormal(True)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def repo_root() -> Path | None:
    """The checkout this package runs from, or None when it is installed elsewhere."""
    root = Path(__file__).resolve().parents[3]  # <checkout>/lib/gsmu/base/runtime.py
    return root if (root / "pyproject.toml").exists() and (root / "lib" / "gsmu").is_dir() else None


def cache_dir(kind: str) -> Path:
    """Cache folder for `kind` ('data' or 'checkpoints'), created on demand."""
    check_choice("kind", kind, ("data", "checkpoints"))
    base = _env_folder("REPRO_CACHE")
    if base is None:
        root = repo_root()
        base = root / ".cache" if root else Path.home() / ".cache" / "gs-mu-repro"
    return _make_folder(Path(base) / kind, "REPRO_CACHE")


def _env_folder(variable: str) -> str | None:
    """The folder named by an environment variable; set but empty (or blank) is an error, not the cwd."""
    value = os.environ.get(variable)
    if value is not None and not value.strip():
        raise ValueError(f"${variable} is set but empty; set it to a folder path or unset it for the default.")
    return value


def _make_folder(path: Path, variable: str) -> Path:
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            raise NotADirectoryError(f"{part} is a file, not a folder, so {path} cannot be created: "
                                     f"point ${variable} at a folder (or remove that file).")
        if part.is_dir():
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the folder {path} (${variable}): {e}") from e
    return path


def results_dir() -> Path:
    """Folder where the running notebook writes claims, metrics and figures."""
    base = _env_folder("REPRO_RESULTS")
    if base is None:
        root = repo_root() or Path.cwd()
        base = root / "results" / "interactive"
    return _make_folder(Path(base), "REPRO_RESULTS")


def parse_index_list(text: str) -> list[int]:
    """'1,5,9', '0-9' or '0,2,5-7' → sorted unique non-negative integers (command-line unit/row/feature
    lists). Raises ValueError naming the offending part."""
    out: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        lo, dash, hi = part[1:].partition("-") if part[:1] != "-" else ("", "", "")
        lo = part[0] + lo if dash else part
        if not (lo.isdigit() and (not dash or hi.isdigit())) or (dash and int(lo) > int(hi)):
            raise ValueError(f"{part!r} is not a non-negative index or a range low-high")
        out.update(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    return sorted(out)


def progress_off(progress: bool) -> bool:
    """tqdm's `disable=` for a library progress bar: off when the caller asks, and in headless runs
    (`TQDM_DISABLE` set by the main job and the tests), which an explicit `disable=` would otherwise override."""
    return not progress or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def cpu_threads() -> int:
    """The torch CPU thread count the library runs with: `OMP_NUM_THREADS` when it is a positive integer, else 1
    (the main job and the test command set it to 1). torch's own default is one thread per core, and its OpenMP
    workers spin at every parallel region: when another process holds one of the cores, each region waits
    for the descheduled worker, so on a 2-core machine shared with other jobs two threads made the MNIST CNN's
    forward + backward and batched feature visualization 4–8× slower than one (bench/featvis.py); on an idle
    one they were 1.8× faster. Set `OMP_NUM_THREADS` to use more cores on a machine of your own."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


@contextmanager
def torch_threads(n: int | None = None) -> Iterator[int]:
    """Run the block with `n` torch intra-op CPU threads (default `cpu_threads()`), then restore the count."""
    import torch
    n = cpu_threads() if n is None else check_int("n", n, low=1)
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def notebook_name() -> str:
    """Name of the notebook being run (set by run_all.sh), 'interactive' otherwise."""
    return os.environ.get("REPRO_NOTEBOOK", "interactive")


_KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def _type_ok(value: Any, annotation: Any) -> bool:
    """Whether `value` fits a parameter annotation (int, float, str, bool, Optional[X] or X | None, list[X],
    tuple[X, ...]). Notebooks write Optional[X]: papermill's parameter inspection cannot parse `X | None`."""
    import types
    import typing
    if annotation is Any:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value) if args else \
            isinstance(value, (list, tuple))
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def check_parameters(namespace: dict, *, ranges: dict[str, tuple[float, float]] | None = None,
                     choices: dict[str, Iterable[Any]] | None = None,
                     nonempty: Iterable[str] = ()) -> None:
    """Validate a notebook's parameters: every name, type, range and choice, before any long work starts.

    The declared parameters are the annotated assignments of the notebook's `parameters` cell
    (`alpha: float = 0.8  # ...`), which land in the namespace's `__annotations__`. A name that papermill
    injected but the notebook does not declare (a typo) is rejected with a did-you-mean; a value of the
    wrong type, outside `ranges[name]` (inclusive) or not in `choices[name]` is rejected naming the
    parameter; list parameters named in `nonempty` must not be empty. Always checks `profile` and `seed`.
    """
    declared = dict(namespace.get("__annotations__", {}))
    if not declared:
        raise RuntimeError("check_parameters found no annotated parameters: declare them in the parameters cell "
                           "as `name: type = value  # what it is`.")
    # Call it first thing after the parameters cell: every other plain value in the namespace then came
    # from papermill's injected-parameters cell.
    names = {k for k, v in namespace.items() if not k.startswith("_") and k not in _KERNEL_NAMES
             and not callable(v) and type(v).__name__ != "module" and type(v).__module__ != "typing"}
    unknown = sorted(names - set(declared))
    if unknown:
        bad = unknown[0]
        close = difflib.get_close_matches(bad, declared, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise NameError(f"parameter {bad!r} is not a parameter of this notebook.{hint} "
                        f"Its parameters: {', '.join(declared)}.")
    named = [*(ranges or {}), *(choices or {}), *nonempty]
    undeclared = [n for n in named if n not in declared]
    if undeclared:  # a typo in the notebook's own call would silently skip that check
        raise NameError(f"check_parameters was asked to check {undeclared[0]!r}, which the parameters cell does "
                        f"not declare. Its parameters: {', '.join(declared)}.")
    for name, annotation in declared.items():
        if name not in namespace:
            raise NameError(f"parameter {name!r} is declared without a value; give it a default in the "
                            f"parameters cell.")
        value = namespace[name]
        if not _type_ok(value, annotation):
            shown = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
            raise TypeError(f"parameter {name}={value!r} must be of type {shown}, not {type(value).__name__}.")
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"parameter {name}={value!r} must be a finite number, not {v!r}.")
    checks = {"profile": PROFILES, **(choices or {})}
    for name, allowed in checks.items():
        if name in declared:
            value = namespace[name]
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                check_choice(name, v, allowed)
    rng = {"seed": (0, 2**31 - 1), **(ranges or {})}
    for name, (low, high) in rng.items():
        if name in declared and namespace[name] is not None:
            for v in (namespace[name] if isinstance(namespace[name], (list, tuple)) else [namespace[name]]):
                if not (low <= v <= high):
                    raise ValueError(f"parameter {name}={v!r} is outside [{low}, {high}].")
    for name in nonempty:
        if not namespace[name]:
            raise ValueError(f"parameter {name} must not be empty.")


# --- digests, atomic writes and file locks (one home: data, train, claims and the caches use these) --------

def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's contents, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_digest(*tensors: torch.Tensor) -> str:
    """Hex SHA-256 of tensors' dtypes, shapes and values (names exactly the data a model was trained on)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a state dict's names and values (sorted by name), to name a model's weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


_LOCK_WARNED = False
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: mkstemp creates 0600 files, the cache should get the usual mode


@contextmanager
def file_lock(path: str | Path, shared: bool = False) -> Iterator[None]:
    """Hold an advisory lock on `<path>.lock` (exclusive, or shared for readers) for the `with` block.

    Processes that write the same file take the lock first, so only one of them does the work and the
    others wait and then find the result. The operating system releases the lock when its holder exits
    or is killed, so a crashed writer never leaves the lock held. Where the file system has no locks
    (some network mounts) this warns once and goes on unlocked; writes stay atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.with_name(path.name + ".lock")
    try:
        lock = open(name, "a")
    except OSError as e:  # a read-only cache: nothing will be written there, reading needs no lock
        _warn_unlocked(name, e)
        yield
        return
    with lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            except OSError as e:
                _warn_unlocked(name, e)
        yield


def _warn_unlocked(name: Path, error: OSError) -> None:
    global _LOCK_WARNED
    if not _LOCK_WARNED:
        warnings.warn(f"cannot lock {name} ({error}); going on without a lock.")
        _LOCK_WARNED = True


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files `atomic_write` left beside `path` (their writer was killed); call under the lock."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def atomic_write(path: str | Path, content: bytes | str | Callable[[Path], Any]) -> Path:
    """Write `path` so that no reader ever sees a partial file: a unique temporary file beside it, flushed
    to disk, then renamed over it (`os.replace`, atomic on one file system).

    `content` is bytes, text, or a function that writes the temporary path it is given (e.g.
    `lambda p: torch.save(state, p)`). A writer that fails or is killed leaves at most a hidden
    `.<name>.*.tmp` file, never a damaged `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
