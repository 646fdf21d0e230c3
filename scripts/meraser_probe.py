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
    from tamperlab.fingerprints.utility import evaluate_utility
    from tamperlab.registry import REMOVALS
    from tamperlab.runs import RunDir

    cfg = yaml.safe_load((args.run / "config.yaml").read_text())
    exp = load_recipe(cfg)
    run = RunDir(args.run)
    spec = next(r for r in exp.cfg.removals if r.key == args.removal)
    base, tok = exp._base()
    clean = exp.clean_data(run, None)
    fps = {f.name: (f.build(), FingerprintSet.from_dict(run.load_stage(f"pairs-{f.name}")))
           for f in exp.cfg.fingerprints}
    work = args.work or Path(tempfile.mkdtemp(prefix="transfer-probe-"))
    del base

    for i, variant in enumerate(args.variant or [""]):
        params = copy.deepcopy(spec.params)
        for kv in filter(None, _split(variant)):
            k, v = kv.split("=", 1)
            _set(params, k.strip(), yaml.safe_load(v))
        removal = REMOVALS.entry(spec.name)
        from tamperlab.fingerprints.base import make_config

        rm = removal.obj(make_config(removal.config, params, "probe"))
        row: dict[str, Any] = {"variant": variant or "(as in the run)"}
        for name, (fp, pairs) in fps.items():
            if args.fingerprints and name not in args.fingerprints.split(","):
                continue
            ctx = RemovalContext(tok=tok, clean=clean, work_dir=work / f"v{i}" / name, shared_dir=work / f"v{i}",
                                 load_base=lambda: exp._base()[0], seed=exp.cfg.seed)
            model = exp._load_fingerprinted(run, name)
            for stage in rm.apply(model, ctx):
                res = fp.verify(stage.model, tok, pairs, progress=False, control=True)
                util = evaluate_utility(stage.model, tok, clean.heldout.examples, exp.cfg.utility)
                row[f"{name} · {stage.name}"] = {
                    **{v: (r.fsr, r.control["rate"] if r.control else None) for v, r in res.items()},
                    "ppl": round(util["ppl"], 3), "acc": round(util["acc"], 3),
                    "train_loss": (stage.info.get("train") or {}).get("train_loss")}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
