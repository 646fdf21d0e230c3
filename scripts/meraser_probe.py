"""Calibrate a MEraser removal on a finished fingerprint run: re-run one of its MEraser rows (`--removal`, e.g.
meraser_transfer or meraser_chat) with overrides on every fingerprinted model of the run, and print FSR, control,
PPL and accuracy after each stage.

    python scripts/meraser_probe.py runs/demo_fingerprints \
        --variant 'erase.epochs=3' --variant 'erase.train.learning_rate=4e-3'
    python scripts/meraser_probe.py runs/demo_fingerprints --removal meraser_chat \
        --variant 'recover.lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]'

Each variant is a comma-separated list of `key=value` overrides of the removal's params (dotted keys; values are
YAML). Measurement only: nothing in the run directory is changed (adapters go to --work).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *head, last = dotted.split(".")
    for k in head:
        d = d.setdefault(k, {})
    d[last] = value


def _split(variant: str) -> list[str]:
    """Split on commas outside brackets (list values contain commas)."""
    out, depth, cur = [], 0, ""
    for ch in variant:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished `fingerprints` run directory")
    ap.add_argument("--variant", action="append", default=[], help="overrides, e.g. 'erase.epochs=3'")
    ap.add_argument("--removal", default="meraser_transfer", help="label of the run's removal row to re-run")
    ap.add_argument("--fingerprints", default="", help="comma-separated subset of the run's fingerprints")
    ap.add_argument("--work", type=Path, default=None, help="where the probe adapters go (default: a temp dir)")
    args = ap.parse_args()

    from tamperlab.experiments.base import load_recipe
    from tamperlab.fingerprints.base import FingerprintSet
    from tamperlab.fingerprints.removal import RemovalContext
    from tamperlab.models import load_tokenizer
    from tamperlab.registry import REMOVALS
    from tamperlab.runs import RunDir

    exp = load_recipe(yaml.safe_load((args.run / "config.yaml").read_text()))
    run = RunDir(args.run)
    spec = next((r for r in exp.cfg.removals if r.key == args.removal), None)
    if spec is None:
        ap.error(f"--removal {args.removal}: the run has {[r.key for r in exp.cfg.removals]}")
    tok = load_tokenizer(exp.cfg.model)
    clean = exp.clean_data(run, None)  # cached by the run
    wanted = set(filter(None, args.fingerprints.split(",")))
    fps = {f.name: (f.build(), FingerprintSet.from_dict(run.load_stage(f"pairs-{f.name}")))
           for f in exp.cfg.fingerprints if not wanted or f.name in wanted}
    work = args.work or Path(tempfile.mkdtemp(prefix="meraser-probe-"))

    for i, variant in enumerate(args.variant or [""]):
        params = copy.deepcopy(spec.params)
        for kv in filter(None, _split(variant)):
            k, v = kv.split("=", 1)
            _set(params, k.strip(), yaml.safe_load(v))
        removal = REMOVALS.build(spec.name, params, f"--variant {variant!r}")
        row: dict[str, Any] = {"variant": variant or "(as in the run)"}
        for name, (fp, pairs) in fps.items():
            ctx = RemovalContext(tok=tok, clean=clean, work_dir=work / f"v{i}" / name, shared_dir=work / f"v{i}",
                                 load_base=lambda: exp._base()[0], seed=exp.cfg.seed)
            for stage in removal.apply(exp._load_fingerprinted(run, name), ctx):
                ev = exp._evaluate(stage.model, tok, fp, pairs, clean)  # exactly what the run records
                row[f"{name} · {stage.name}"] = {
                    **{v: (r["fsr"], (r.get("control") or {}).get("rate")) for v, r in ev["fsr"].items()},
                    "ppl": round(ev["utility"]["ppl"], 3), "acc": round(ev["utility"]["acc"], 3),
                    "train_loss": (stage.info.get("train") or {}).get("train_loss")}
                print(json.dumps(row), flush=True)

if __name__ == "__main__":
    main()
