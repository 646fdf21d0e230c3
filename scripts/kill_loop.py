"""Crash-safety evidence: SIGKILL a run at random moments, resume it each time, and check that it ends with the
metrics of an uninterrupted run (train_loss included).

    python scripts/kill_loop.py --kills 20 --out /tmp/killloop [--recipe tests/fixtures/tiny_ctrap.yaml] [--seed 0]

1. One uninterrupted reference run (its wall time sets the range of the kill delays).
2. Episodes: a fresh run (own pack cache, so data generation is exercised too) is started, killed with SIGKILL
   after a random delay, restarted with `--resume`, killed again ..., until it completes; its metrics.json is then
   compared with the reference. Every other kill is aimed at a checkpoint save: the loop polls the run's
   checkpoint folders and kills the moment a checkpoint without its trainer_state.json (one being written) shows up,
   falling back to the random delay. Episodes repeat until `--kills` kills have been delivered.
3. Prints (and writes to OUT/summary.json) kills per stage, kills during checkpoint writes, episodes, and how many
   resumed runs matched the reference (exactly, and within 1e-6).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "tests" / "fixtures" / "tiny_ctrap.yaml"
VOLATILE = {"wall_seconds", "provenance", "resumed_from", "seconds", "time"}
"""metrics.json keys that legitimately differ between an interrupted and an uninterrupted run."""


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "TAMPERLAB_CACHE": str(cache),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _cmd(recipe: Path, out: Path, name: str, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "tamperlab.cli", "run", str(recipe), "--output-dir", str(out), "--name", name]
    return cmd + (["--resume"] if resume else [])


def comparable(metrics: dict[str, Any]) -> Any:
    """metrics.json without the run's name and the volatile keys."""
    out = strip_volatile(metrics)
    out.pop("name", None)
    out.get("config", {}).pop("name", None)
    return out


def strip_volatile(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_volatile(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip_volatile(v) for v in obj]
    return obj


def max_difference(a: Any, b: Any, path: str = "") -> tuple[float, str]:
    """(largest absolute difference between numbers, where); inf when the structures differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return float("inf"), f"{path}: keys {sorted(set(a) ^ set(b))}"
        return max((max_difference(a[k], b[k], f"{path}.{k}") for k in a), default=(0.0, path))
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return float("inf"), f"{path}: lengths"
        return max((max_difference(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))),
                   default=(0.0, path))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)), path
    return (0.0, path) if a == b else (float("inf"), f"{path}: {a!r} != {b!r}")


def _stage_of(run: Path) -> str:
    """The stage the run was in: the last stage finished, from its log."""
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except OSError:
        return "start"
    done = [json.loads(x).get("stage") for x in lines if '"stage_done"' in x]
    return f"after {done[-1]}" if done else "data"


def _incomplete_checkpoints(run: Path) -> set[Path]:
    return {c for c in (run / "checkpoints").glob("*/checkpoint-*")
            if c.is_dir() and not (c / "trainer_state.json").exists()}


def _writing_checkpoint(run: Path, stale: set[Path]) -> bool:
    """A checkpoint folder without its trainer_state.json that this process started (not one a previous kill left,
    which the resume deletes)."""
    return bool(_incomplete_checkpoints(run) - stale)


def run_episode(recipe: Path, out: Path, name: str, cache: Path, t_ref: float, rng: random.Random,
                budget: int, log: list[dict[str, Any]]) -> int:
    """Kill/resume one fresh run until it completes (or `budget` kills were spent and it then completes)."""
    kills, resume = 0, False
    run = out / name
    while True:
        proc = subprocess.Popen(_cmd(recipe, out, name, resume), env=_env(cache), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        aim_save = kills < budget and kills % 2 == 1
        # A resumed run has less left to do than the reference: draw within 70% of its time so most draws land.
        delay = rng.uniform(1.0, 0.7 * t_ref) if kills < budget else float("inf")
        t0, killed, at_save = time.time(), False, False
        stale = _incomplete_checkpoints(run)
        while proc.poll() is None:
            if time.time() - t0 >= delay or (aim_save and _writing_checkpoint(run, stale)):
                at_save = _writing_checkpoint(run, stale)
                stage = _stage_of(run)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
                break
            time.sleep(0.005 if aim_save else 0.05)
        if killed:
            kills += 1
            log.append({"episode": name, "after_s": round(time.time() - t0, 2), "stage": stage,
                        "during_checkpoint_write": at_save})
            print(f"  kill {len(log)}: {name} at {time.time() - t0:.1f}s ({stage}; checkpoint write: {at_save})",
                  flush=True)
            resume = True
            continue
        err = proc.stderr.read() if proc.stderr else ""
        if proc.returncode != 0:
            raise SystemExit(f"{name}: the resumed run failed (exit {proc.returncode}):\n{err[-3000:]}")
        return kills


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--per-episode", type=int, default=6, help="kills per run before it is let finish")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    ref = subprocess.run(_cmd(args.recipe, args.out, "reference", False) + ["--force"],
                         env=_env(args.out / "cache-reference"), capture_output=True, text=True)
    if ref.returncode != 0:
        raise SystemExit(f"reference run failed:\n{ref.stderr[-3000:]}")
    t_ref = time.time() - t0
    reference = comparable(json.loads((args.out / "reference" / "metrics.json").read_text()))
    print(f"reference run: {t_ref:.1f}s", flush=True)

    log: list[dict[str, Any]] = []
    episodes: list[dict[str, Any]] = []
    while len(log) < args.kills:
        name = f"episode{len(episodes)}"
        budget = min(args.per_episode, args.kills - len(log))
        n = run_episode(args.recipe, args.out, name, args.out / f"cache-{name}", t_ref, rng, budget, log)
        got = comparable(json.loads((args.out / name / "metrics.json").read_text()))
        diff, where = max_difference(reference, got)
        leftovers = [str(p) for pat in (".*.tmp", "*.tmp") for p in (args.out / name).rglob(pat)]
        episodes.append({"name": name, "kills": n, "identical": got == reference, "max_abs_diff": diff,
                         "where": where, "train_losses": _train_losses(got), "temporaries_left": leftovers})
        print(f"{name}: {n} kills, identical={got == reference}, max |diff| {diff:.3g} ({where})", flush=True)

    ref_losses = _train_losses(reference)
    summary = {
        "recipe": str(args.recipe), "seed": args.seed, "reference_seconds": round(t_ref, 1),
        "kills": len(log), "kills_during_checkpoint_write": sum(k["during_checkpoint_write"] for k in log),
        "kills_by_stage": _count(k["stage"] for k in log), "episodes": len(episodes),
        "episodes_identical": sum(e["identical"] for e in episodes),
        "episodes_within_1e-6": sum(e["max_abs_diff"] <= 1e-6 for e in episodes),
        "reference_train_losses": ref_losses,
        "train_loss_equal": sum(e["train_losses"] == ref_losses for e in episodes),
        "temporaries_left": sum(len(e["temporaries_left"]) for e in episodes),
        "kill_log": log, "episode_log": episodes,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("kill_log", "episode_log")}, indent=2))
    return summary


def _train_losses(metrics: dict[str, Any]) -> dict[str, float]:
    """Every train_loss in metrics.json (alignment and attack stages), by path."""
    out: dict[str, float] = {}

    def walk(o: Any, path: str) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "train_loss":
                    out[path] = v
                else:
                    walk(v, f"{path}.{k}" if path else k)

    walk(metrics.get("results", {}), "")
    return out


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


if __name__ == "__main__":
    main()
