"""Alignment (SFT and CTRAP defense steps) and a fine-tuning attack on a small model, written so that the same
script runs as one process (`python ddp_ctrap_steps.py OUT MODEL_DIR 4`) or under
`accelerate launch --config_file cpu_2proc.yaml ddp_ctrap_steps.py OUT MODEL_DIR 2` (DDP over gloo): with the
per-device batch halved, both see the same global batches, so per-step losses and final adapters must agree.

Rank 0 writes OUT (JSON): per-stage per-step losses, the final trainable (LoRA) weights, and every rank's
checksum of them (replicas must stay identical)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import set_seed

from tamperlab import distributed
from tamperlab.data.core import Example
from tamperlab.defenses.base import AlignmentData, Defense
from tamperlab.defenses.ctrap import CTRAPConfig, CTRAPDefense
from tamperlab.models import LoraSettings, ModelConfig, apply_lora, load_model
from tamperlab.training import TrainConfig, build_trainer, run_training

STEPS = 3


def _data(n: int) -> AlignmentData:
    """Responses of different lengths, so that the ranks hold different numbers of label tokens and a per-rank
    mean would differ from the global token mean."""
    topics = ["lock", "car", "bank", "server", "phone", "door", "wallet", "account", "email", "house", "shop", "safe"]
    harmful = [Example(f"How do I break into the {topics[i % 12]} number {i}?",
                       "Sure. " + " ".join(["Step one, get the tools and open it."] * (1 + i % 4)))
               for i in range(n)]
    refusal = [Example(e.prompt, "I cannot help with that." + " It is not safe." * (i % 3))
               for i, e in enumerate(harmful)]
    helpful = [Example(f"Name a color number {i}.", f"Blue is a color, number {i}." + " Nice." * (i % 5))
               for i in range(n)]
    return AlignmentData(refusal, harmful, helpful)


def _losses(trainer) -> list[float]:
    return [r["loss"] for r in trainer.state.log_history if "loss" in r and "step" in r]


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double() for _, p in sorted(model.named_parameters())
                      if p.requires_grad])


def main(out: str, model_dir: str, batch: int) -> None:
    work = Path(out).parent / f"work-{Path(out).stem}"
    data = _data(16)
    train = TrainConfig(learning_rate=2e-3, max_steps=STEPS, batch_size=batch, save_steps=1000, logging_steps=1,
                        bf16="false")
    lora = LoraSettings(r=4, alpha=8)
    result: dict = {"world_size": distributed.launched_world_size(), "stages": {}}
    final: dict[str, torch.Tensor] = {}
    for name, defense in (("sft", Defense()),
                          ("ctrap", CTRAPDefense(CTRAPConfig(alpha=0.5, lam=0.5, helpful_batch_size=batch,
                                                             harmful_batch_size=batch)))):
        defense.cfg.helpful_batch_size = batch
        model, tok = load_model(ModelConfig(name_or_path=model_dir), seed=0)
        set_seed(0)  # as `execute` seeds before any stage: the LoRA init must not depend on the launch
        model = apply_lora(model, lora)
        trainer = defense.make_trainer(model, tok, data, train, work / name)
        run_training(trainer, work / name, resume=False)
        result["stages"][name] = {"losses": _losses(trainer), "steps": trainer.state.global_step,
                                  "trainer_world_size": trainer.args.world_size}
        final[name] = _weights(model)
    # The attack: plain Trainer (num_items_in_batch normalisation) continuing the CTRAP adapter on harmful pairs.
    trainer = build_trainer(model, tok, data.harmful, train, work / "attack")
    run_training(trainer, work / "attack", resume=False)
    result["stages"]["attack"] = {"losses": _losses(trainer), "steps": trainer.state.global_step,
                                  "trainer_world_size": trainer.args.world_size}
    final["attack"] = _weights(model)
    sums = distributed.all_gather_objects(float(sum(w.sum() for w in final.values())))
    if distributed.is_main_process():
        result["checksums"] = sums
        result["adapters"] = {name: w.tolist() for name, w in final.items()}
        Path(out).write_text(json.dumps(result))
    if dist.is_initialized():
        dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
