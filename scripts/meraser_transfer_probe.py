"""How strong must a transferable MEraser erase LoRA be? Trains erase LoRAs on the clean base model of a finished
fingerprint run with the given overrides and plugs each into every fingerprinted model of that run.

    python scripts/meraser_transfer_probe.py runs/demo_fingerprints \
        --variant 'epochs=3' --variant 'train.learning_rate=4e-3'

Each variant is a comma-separated list of `key=value` overrides of the run's `meraser_transfer` erase phase
(dotted keys reach into `train.` / `lora.`). Prints FSR under every definition, the control rate and held-out
PPL per fingerprinted model. Measurement only: nothing in the run directory is changed (adapters go to --work).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished `fingerprints` run directory")
    ap.add_argument("--variant", action="append", default=[], help="erase overrides, e.g. 'epochs=3'")
    ap.add_argument("--removal", default="meraser_transfer", help="label of the removal whose erase phase is varied")
    ap.add_argument("--work", type=Path, default=None, help="where the probe adapters go (default: a temp dir)")
    args = ap.parse_args()

    from tamperlab.experiments.base import load_recipe
    from tamperlab.fingerprints.base import FingerprintSet
    from tamperlab.fingerprints.removal import RemovalContext
    from tamperlab.fingerprints.utility import perplexity
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
        for kv in filter(None, variant.split(",")):
            k, v = kv.split("=", 1)
            _set(params.setdefault("erase", {}), k.strip(), yaml.safe_load(v))
        removal = REMOVALS.entry(spec.name)
        from tamperlab.fingerprints.base import make_config

        rm = removal.obj(make_config(removal.config, params, "probe"))
        row: dict[str, Any] = {"variant": variant or "(as in the run)"}
        for name, (fp, pairs) in fps.items():
            ctx = RemovalContext(tok=tok, clean=clean, work_dir=work / f"v{i}" / name, shared_dir=work / f"v{i}",
                                 load_base=lambda: exp._base()[0], seed=exp.cfg.seed)
            model = exp._load_fingerprinted(run, name)
            stage = next(iter(rm.apply(model, ctx)))
            res = fp.verify(stage.model, tok, pairs, progress=False, control=True)
            ppl = perplexity(stage.model, tok, clean.heldout.examples[: exp.cfg.utility.ppl_examples])["ppl"]
            row[name] = {v: (r.fsr, r.control["rate"] if r.control else None) for v, r in res.items()}
            row[name]["ppl"] = round(ppl, 3)
            row["erase_loss"] = (stage.info.get("train") or {}).get("train_loss")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
