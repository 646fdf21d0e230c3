"""Run directories: `runs/<name>/` with resolved config, log.jsonl, metrics.json, stage caches and checkpoints.

Every write is atomic (temp file + rename), so a killed run never leaves a half-written JSON; a resume removes
the temporaries a kill left behind. Expensive stages are cached under `stages/<key>.json` and skipped on `--resume`;
training stages also resume from their last complete Trainer checkpoint (`checkpoints/<key>/`). A stage may be
*versioned*: `cached(key, fn, inputs=...)` records the hash of the config slice it depends on
(`stage_inputs/<key>.json`) and recomputes it — never resuming its old checkpoints — when that slice changes, so
the recipe of an experiment whose stages are all versioned may grow or change on `--resume`
(docs/methods/multiprocess.md, "Stage cache"). A run lock (`<output_dir>/.<name>.lock`) keeps a second process
from writing a live run (and `--force` from deleting it).

Under a multi-process launch only the main process writes (run directory, config, log, stages, metrics); the other
ranks wait at a barrier and read what it wrote (see tamperlab.distributed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import yaml

from . import distributed
from .errors import TamperlabError

log = logging.getLogger("tamperlab")


def _file_mode() -> int:
    """0666 minus the umask (0644 usually): what open() would give; mkstemp's own 0600 would hide results from
    the other users of a shared machine."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()
TEMP_GLOBS = (".*.tmp", "*.tmp")
"""Names of the temporaries atomic writes use (files `.NAME.XXXX.tmp`, model folders `NAME.tmp`)."""


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> None:
    """Write via a temp file + rename (UTF-8, whatever the locale). Under a multi-process launch only the main
    process writes (the other ranks hold the same content and read it after a barrier)."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")), mode=mode)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a power cut after os.replace could otherwise lose it)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, write: Callable[[Any], None], mode: int | None = None) -> None:
    """The one way results reach disk. `write(f)` fills a temp file (opened "wb") in the destination's folder,
    which is flushed, fsynced and renamed over the final name: a kill or an error at any point leaves the
    previous file intact and never a cut file under the final name (the temporary goes; one a SIGKILL leaves
    is removed by the next resume). `mode`: the file's permissions (default: what open() gives; 0o600 for
    secrets — set before any byte is written). Main process only."""
    if not distributed.is_main_process():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy a file into place atomically (a kill mid-copy never leaves a cut copy under `dst`)."""
    with open(src, "rb") as s:
        atomic_write_bytes(dst, lambda f: shutil.copyfileobj(s, f))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A folder written as a whole (saved models, tokenizers, adapters): the body fills the yielded temp folder
    `NAME.tmp` beside `path`, which then replaces `path`. An error in the body leaves `path` as it was and removes
    the temporary (one a kill leaves is removed by the next resume, TEMP_GLOBS). Callers under a multi-process
    launch call it on the main process only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(path.name + ".old.tmp")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():  # a folder cannot be renamed over a non-empty one: move the old aside, then drop it
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


class CorruptFileError(TamperlabError):
    """A result file that exists but cannot be read back (cut, garbled, not JSON/YAML)."""


def read_json(path: str | Path) -> Any:
    """Parse a JSON file the run wrote (stages, records, metrics). Writes are atomic, so a file that does not parse
    was damaged from outside (a full disk, a copy, a hand edit): CorruptFileError naming it, not a traceback. The
    stage cache catches it and recomputes the stage; metrics and config readers let it reach the user."""
    try:
        return json.loads(Path(path).read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _corrupt(path, e) from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file the run wrote (config.yaml), with the same rule as read_json."""
    try:
        return yaml.safe_load(Path(path).read_bytes())
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise _corrupt(path, e) from None


def _corrupt(path: str | Path, e: Exception) -> CorruptFileError:
    first = " ".join((str(e).splitlines() or [type(e).__name__])[0].split())[:200]
    return CorruptFileError(f"{path} is corrupt ({type(e).__name__}: {first}); restore or delete it (a deleted stage "
                            "file is recomputed on --resume), or start over with --force")


def plain(obj: Any) -> Any:
    """A JSON-able structure as it reads back from disk (tuples → lists, numpy → Python, paths → str): what
    config.yaml and the stage files hold, so that comparisons with them are exact."""
    return json.loads(json.dumps(obj, default=_json_default))


def inputs_hash(inputs: Any) -> str:
    """sha256 of the canonical JSON of a stage's inputs (sorted keys, no whitespace): equal for equal configs
    whatever their key order."""
    text = json.dumps(plain(inputs), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, default=_json_default)
    return text if len(text) <= width else text[: width - 1] + "…"


def inputs_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted paths where two input records differ, each as `path: old → new` (dicts walked key by key, lists
    of records item by item, e.g. `attacks.1: added`; anything else compared whole)."""
    if isinstance(old, list) and isinstance(new, list) and any(isinstance(x, dict) for x in [*old, *new]):
        old, new = dict(enumerate(old)), dict(enumerate(new))
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in dict.fromkeys([*old, *new]):
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"{path}: added")
            elif k not in new:
                out.append(f"{path}: removed")
            else:
                out += inputs_diff(old[k], new[k], path)
        return out
    return [] if old == new else [f"{prefix or 'inputs'}: {_short(old)} → {_short(new)}"]


def _diff_summary(old: Any, new: Any, limit: int = 4) -> str:
    diff = inputs_diff(old, new)
    if not diff:
        return "inputs record unreadable"
    more = f"; and {len(diff) - limit} more" if len(diff) > limit else ""
    return "; ".join(diff[:limit]) + more


def _git_hash() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def provenance() -> dict[str, Any]:
    """Versions, machine and git hash, recorded in every metrics.json."""
    versions = {}
    for mod in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "sentence_transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            pass
    from . import __version__

    info: dict[str, Any] = {
        "tamperlab": __version__,
        "git_hash": _git_hash(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
    }
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        pass
    return info


def remove_temporaries(root: str | Path) -> list[Path]:
    """Delete the temporaries a killed process left under root (they are never read); returns what went."""
    gone = []
    for pattern in TEMP_GLOBS:
        for p in sorted(Path(root).rglob(pattern)):
            if not p.exists():  # inside a folder removed a moment ago
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            gone.append(p)
    return gone


_CORRUPT, _ON_DISK = "corrupt", "on disk"
"""Outcomes of RunDir._load_or_discard, broadcast to every rank (which then reads the payload itself)."""


class RunBusyError(TamperlabError):
    """Another live process holds the run's lock."""


class RunLock:
    """An exclusive, non-blocking lock on one run (`<output_dir>/.<name>.lock`, beside the run directory so that
    `--force` cannot delete it). The OS releases it when the holder dies, so a SIGKILLed run never blocks its own
    `--resume`. Only the main process locks: the other ranks of a launch belong to the same run."""

    def __init__(self, path: str | Path):
        from filelock import FileLock

        path = Path(path)
        self.path = path.parent / f".{path.name}.lock"
        self._lock = FileLock(str(self.path), timeout=0)

    def __enter__(self) -> "RunLock":
        from filelock import Timeout

        if not distributed.is_main_process():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise RunBusyError(f"run {self.path.parent / self.path.name[1:-5]} is in use by another live process "
                               f"(lock {self.path}); wait for it to finish or choose another run name") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock.is_locked:
            self._lock.release()


class RunDir:
    """One experiment's output folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.started = time.time()

    # -- creation -------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any], resume: bool = False, force: bool = False,
               versioned: bool = False) -> "RunDir":
        """Make (or, with resume, reopen; with force, replace) the run directory. Under a multi-process launch the
        main process does it and the others wait; an error on the main process is raised on every rank.

        A resume with a different recipe is refused, unless `versioned` (the experiment versions every stage by
        its inputs, `Experiment.versioned_stages`): then the new recipe replaces config.yaml and the log's
        `run_start` event keeps the previous one (`previous_config`) and the changed keys (`recipe_changed`)."""
        changed = distributed.run_collectively(lambda: cls._create_files(Path(path), config, resume, force,
                                                                         versioned))
        run = cls(path)
        run.log("run_start", resume=resume, world_size=distributed.launched_world_size(), **changed)
        return run

    @staticmethod
    def _create_files(path: Path, config: dict[str, Any], resume: bool, force: bool,
                      versioned: bool) -> dict[str, Any]:
        cfg_file = path / "config.yaml"
        new = plain(config)
        changed: dict[str, Any] = {}
        if path.exists() and any(path.iterdir()):
            if force:
                shutil.rmtree(path)
            elif not resume:
                raise TamperlabError(
                    f"run directory {path} already exists; pass --resume to continue it or --force to start over"
                )
            elif cfg_file.exists():
                old = read_yaml(cfg_file)
                if old != new and not versioned:
                    raise TamperlabError(
                        f"--resume: the recipe differs from the one {path} was started with ({cfg_file}); "
                        "use a new run name or --force"
                    )
                if old != new:
                    changed = {"recipe_changed": inputs_diff(old, new), "previous_config": old}
                    log.info("--resume with a changed recipe (%s): stages whose inputs changed are recomputed, "
                             "the others loaded", _diff_summary(old, new))
            for p in remove_temporaries(path):
                log.info("removed a temporary left by a killed run: %s", p)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_file, yaml.safe_dump(new, sort_keys=False))
        return changed

    # -- files ----------------------------------------------------------------------------------------------
    def sub(self, *parts: str) -> Path:
        p = self.path.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def config(self) -> dict[str, Any]:
        return read_yaml(self.path / "config.yaml")

    def log(self, event: str, **fields: Any) -> None:
        if not distributed.is_main_process():
            return
        rec = {"time": round(time.time(), 3), "event": event, **fields}
        with open(self.path / "log.jsonl", "a") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")

    def read_log(self) -> list[dict[str, Any]]:
        p = self.path / "log.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        return out

    # -- resumable stages -----------------------------------------------------------------------------------
    def stage_path(self, key: str) -> Path:
        return self.path / "stages" / f"{key}.json"

    def stage_inputs_path(self, key: str) -> Path:
        """The inputs record of a versioned stage: {inputs_sha256, inputs, payload_sha256}. Kept outside stages/
        so that `stages/*.json` stays the payloads alone."""
        return self.path / "stage_inputs" / f"{key}.json"

    def checkpoint_dir(self, key: str) -> Path:
        """Where a training stage keeps its Trainer checkpoints (its resume point): `checkpoints/<key>/`."""
        return self.path / "checkpoints" / key

    def has_stage(self, key: str) -> bool:
        return self.stage_path(key).exists()

    def load_stage(self, key: str) -> Any:
        return read_json(self.stage_path(key))

    def stage_record(self, key: str) -> dict[str, Any] | None:
        """The stage's inputs record, or None (an unversioned stage, or one stored before stages were versioned)."""
        p = self.stage_inputs_path(key)
        return read_json(p) if p.exists() else None

    def save_stage(self, key: str, value: Any, inputs: Any = None) -> None:
        """Store a stage's payload; with `inputs`, versioned.

        The record holds the sha256 of the payload it describes, and a stage counts as finished only when the
        payload file has that hash: a record and a payload from different writes never pass for a finished stage,
        whatever the kill point. The record is written first (each write atomic), so a kill between the two leaves
        an unfinished stage, never a new payload beside an old record. Without inputs any stale record goes
        first, so the payload is never read against another payload's record."""
        text = json.dumps(value, indent=2, sort_keys=False, default=_json_default) + "\n"
        if inputs is not None:
            self._write_inputs_record(key, inputs, hashlib.sha256(text.encode("utf-8")).hexdigest())
        elif distributed.is_main_process():
            self.stage_inputs_path(key).unlink(missing_ok=True)
        atomic_write_text(self.stage_path(key), text)

    def _write_inputs_record(self, key: str, inputs: Any, payload_sha256: str | None) -> None:
        atomic_write_json(self.stage_inputs_path(key), {"inputs_sha256": inputs_hash(inputs), "inputs": plain(inputs),
                                                        "payload_sha256": payload_sha256})

    def cached(self, key: str, fn: Callable[[], Any], inputs: Any = None,
               outputs: Sequence[str | Path] = ()) -> Any:
        """Return the stored result of stage `key`, or compute it with `fn()` and store it atomically.

        `inputs`: the JSON-able slice of the config the stage depends on (None = the stage is keyed by its name
        only). A stored stage is loaded when its recorded inputs hash equals this one; otherwise it is recomputed
        (one log line names what changed) and its Trainer checkpoints (`checkpoints/<key>/`, written under the
        old inputs) are deleted first, so a training stage never resumes a stale checkpoint. A stage stored before
        stages were versioned (no record) is loaded as before, with a warning. An interrupted stage (record without
        its payload) resumes its checkpoints only when it was started under the same inputs.

        `outputs`: files or folders the stage writes besides its payload (saved models, adapters, arrays, a
        watermark secret): deleted with the checkpoints when the inputs change, so fn never reuses, and no later
        stage reads, what the old inputs produced.

        Multi-process: the main process decides (and clears stale checkpoints) and every rank takes its decision;
        every rank runs fn (it trains with DDP, generates sharded), the main process stores the result and any
        files fn wrote, and a barrier follows, so all ranks see the same stages at the next check (a stage found on
        one rank and missing on another would desynchronise the collectives)."""
        if inputs is None:
            if self.has_stage(key):
                if distributed.run_collectively(lambda: self._load_or_discard(key)) == _ON_DISK:
                    log.info("stage %s: cached, skipping", key)
                    return self.load_stage(key)
        elif distributed.run_collectively(lambda: self._prepare_versioned(key, inputs, outputs)):
            return self.load_stage(key)
        t0 = time.time()
        value = fn()
        self.save_stage(key, value, inputs)
        self.log("stage_done", stage=key, seconds=round(time.time() - t0, 2))
        log.info("stage %s: done in %.1f s", key, time.time() - t0)
        distributed.barrier()
        return value

    def _load_or_discard(self, key: str) -> str:
        """Main process: the stored payload of an unversioned stage, or _CORRUPT after deleting a payload that does
        not parse (damaged outside tamperlab: every write is atomic), so the stage is computed again."""
        try:
            self.load_stage(key)
        except CorruptFileError as e:
            log.warning("stage %s: %s — recomputing it", key, e)
            self.log("stage_corrupt", stage=key, error=str(e))
            self.stage_path(key).unlink(missing_ok=True)
            return _CORRUPT
        return _ON_DISK

    def _prepare_versioned(self, key: str, inputs: Any, outputs: Sequence[str | Path] = ()) -> bool:
        """Main process: True when the stored stage is to be loaded; else clear what the old inputs left and
        record that the stage is being computed under these inputs (a kill now leaves an unfinished stage)."""
        digest = inputs_hash(inputs)
        try:
            record = self.stage_record(key)
        except CorruptFileError as e:  # its inputs are unknown: treat it as written under other inputs
            log.warning("stage %s: %s — recomputing it", key, e)
            record = {"inputs_sha256": None, "inputs": None}
        payload = self.stage_path(key).read_bytes() if self.has_stage(key) else None
        if payload is not None and record is None:
            if self._load_or_discard(key) == _CORRUPT:
                return False
            log.warning("stage %s: stored before stages were versioned (no inputs record), loaded as it is; to "
                        "recompute it, delete %s and %s", key, self.stage_path(key), self.checkpoint_dir(key))
            return True
        finished = (payload is not None and record is not None
                    and record.get("payload_sha256") == hashlib.sha256(payload).hexdigest())
        if finished and record.get("inputs_sha256") == digest:  # type: ignore[union-attr]
            log.info("stage %s: cached, skipping", key)
            return True
        ckpt = self.checkpoint_dir(key)
        if record is not None and record.get("inputs_sha256") != digest:
            what = _diff_summary(record.get("inputs"), plain(inputs))
            log.info("stage %s: inputs changed (%s), recomputing", key, what)
            self.log("stage_inputs_changed", stage=key, changed=inputs_diff(record.get("inputs"), plain(inputs)),
                     previous_sha256=record.get("inputs_sha256"), sha256=digest)
            for old in (ckpt, *map(Path, outputs)):
                if old.is_dir() and not old.is_symlink():
                    log.info("stage %s: deleting %s (written under the old inputs)", key, old)
                    shutil.rmtree(old)
                elif old.exists() or old.is_symlink():
                    log.info("stage %s: deleting %s (written under the old inputs)", key, old)
                    old.unlink()
        elif record is None and ckpt.exists() and any(ckpt.iterdir()):
            log.warning("stage %s: resuming %s, written before stages were versioned (its inputs are unknown)",
                        key, ckpt)
        self._write_inputs_record(key, inputs, None)
        return False

    # -- metrics --------------------------------------------------------------------------------------------
    def save_metrics(self, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
        config = self.config
        # A smoke run (tiny model, fixture data, 2 steps) says so first: its numbers are meaningless.
        smoke = {"smoke": True, "smoke_substitutions": config.get("smoke_substitutions", [])} \
            if config.get("smoke") else {}
        payload = {
            **smoke,
            "name": self.path.name,
            "config": config,
            **extra,
            "results": metrics,
            "provenance": provenance(),
            "wall_seconds": round(time.time() - self.started, 1),
        }
        atomic_write_json(self.path / "metrics.json", payload)
        self.log("metrics_written")
        return payload

    def load_metrics(self) -> dict[str, Any]:
        p = self.path / "metrics.json"
        if not p.exists():
            raise TamperlabError(f"{self.path} has no metrics.json (did the run finish?)")
        return read_json(p)
