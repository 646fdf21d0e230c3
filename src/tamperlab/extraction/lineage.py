"""Model lineage: base model → publisher stages → victim stage, each saved as a LoRA adapter or full weights.

A stage trained with LoRA saves only its adapter; loading a lineage loads the base model and merges the
adapters in order (`merge_and_unload`), so the "released" model M1 is a plain model again and the victim trains
its own adapter on top, as a victim would on a downloaded checkpoint. A full fine-tuning stage (the paper's
setting, `lora.enabled: false`) saves full safetensors weights, and later stages start from that directory.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

from ..models import ModelConfig, load_adapter, load_model, save_model

log = logging.getLogger("tamperlab")

Lineage = list[dict[str, str]]
"""[{"kind": "adapter" | "full", "path": ..., "stage": ...}, ...] — applied in order on top of the base model."""


def load_lineage(base: ModelConfig, lineage: Sequence[dict[str, str]], seed: int = 0) -> tuple[Any, Any]:
    """The model after every stage of `lineage` (adapters merged), in eval mode."""
    fulls = [i for i, st in enumerate(lineage) if st["kind"] == "full"]
    start = fulls[-1] if fulls else -1
    cfg = base if start < 0 else dataclasses.replace(base, name_or_path=lineage[start]["path"])
    model, tok = load_model(cfg, seed=seed)
    for st in lineage[start + 1:]:
        model = load_adapter(model, st["path"], trainable=False).merge_and_unload()
    model.eval()
    return model, tok


def save_stage(model: Any, tok: Any, out_dir: Path, stage: str) -> dict[str, str]:
    """Save a trained stage (adapter for a peft model, else full weights) and describe it for the lineage."""
    from peft import PeftModel

    kind = "adapter" if isinstance(model, PeftModel) else "full"
    save_model(model, tok, out_dir)
    log.info("saved %s (%s) → %s", stage, kind, out_dir)
    # Absolute, so a later run reusing this stage (init_from) finds it from any working directory.
    return {"kind": kind, "path": str(Path(out_dir).resolve()), "stage": stage}
