"""Forward-only trap diagnostics of an `hft` run's models: where the collapse-trap token appears in each model's own
answers and with what probability, by response position (metrics/trap_diagnostics.py), for the aligned model and
the models after the run's first harmful and first benign attack.

Shared by the `hft` experiment (`eval.trap_diagnostics: true`, the CTRAP demo) and the settings study (one row per
variant), so both measure the same thing from the same stored answers and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..runs import RunDir


def evaluations(cfg: Any, path: Path, key: str, results: dict[str, Any]) -> list[tuple[str, Path | None, str]]:
    """(evaluation, adapter dir or None, samples stage) of defense `key`'s aligned model and of its first harmful
    and first benign attack. An attack's model is its highest checkpoint, used only when that checkpoint is the
    final step (its trainer_state global_step = the steps the attack trained) and holds a LoRA adapter: an earlier
    checkpoint would describe a different model than the stored answers came from."""
    out: list[tuple[str, Path | None, str]] = [("aligned", path / "models" / key, f"samples-aligned-{key}")]
    for kind in ("harmful", "benign"):
        atk = next((a for a in cfg.attacks if getattr(a, "kind", None) == kind), None)
        if atk is None or atk.key not in results.get("attacks", {}):
            continue
        ckpts = sorted((path / "checkpoints" / f"attack-{key}-{atk.key}").glob("checkpoint-*"),
                       key=lambda p: int(p.name.rsplit("-", 1)[-1]))
        adapter = None
        if ckpts and (ckpts[-1] / "adapter_config.json").exists():
            state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
            if state.get("global_step") == results["attacks"][atk.key]["train"]["steps"]:
                adapter = ckpts[-1]
        out.append((f"after {kind} FT", adapter, f"samples-attack-{key}-{atk.key}"))
    return out


def diagnose_run(cfg: Any, path: Path, results: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """{defense key: {evaluation: summary}} for the defenses `keys` of the hft run at `path` (config `cfg`, its
    per-defense `results`), each on the answers its evaluation stored; the trap is the run's one trap text
    (`cfg.eval.trap_text`, resolved from the trap-planting defenses)."""
    from ..defenses.base import TRAP_TEXT
    from ..metrics.trap_diagnostics import diagnose
    from ..models import load_adapter, load_model

    trap_text = getattr(cfg.eval, "trap_text", "") or TRAP_TEXT
    run = RunDir(path)
    out: dict[str, Any] = {}
    for key in keys:
        out[key] = {}
        for evaluation, adapter, stage in evaluations(cfg, path, key, results[key]):
            if not run.has_stage(stage):
                continue  # evaluate_aligned: false
            if adapter is None:
                out[key][evaluation] = {"skipped": "no LoRA checkpoint of the final attacked model"}
                continue
            rows = run.load_stage(stage)
            base, tok = load_model(cfg.model, cfg.seed)
            model = load_adapter(base, adapter, trainable=False)
            out[key][evaluation] = diagnose(model, tok, [r["prompt"] for r in rows], [r["output"] for r in rows],
                                            trap_text, cfg.model.prompt_format, cfg.model.max_length)
    return out
