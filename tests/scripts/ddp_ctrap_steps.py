"""Run under `accelerate launch --num_processes 2 --cpu`: a few CTRAP alignment steps on a tiny model with
DDP (gloo). Writes, from rank 0, whether the replicas still hold identical weights and whether they moved."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctrap.helpers import harmful_pairs, helpful, refusals  # noqa: E402

from tamperlab.defenses.base import AlignmentData  # noqa: E402
from tamperlab.defenses.ctrap import CTRAPConfig, CTRAPDefense  # noqa: E402
from tamperlab.models import ModelConfig, load_model  # noqa: E402
from tamperlab.training import TrainConfig, run_training  # noqa: E402


def main(out: str) -> None:
    model, tok = load_model(ModelConfig(name_or_path="tiny:llama"), seed=0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    defense = CTRAPDefense(CTRAPConfig(alpha=0.5, lam=0.5, helpful_batch_size=2, harmful_batch_size=2))
    data = AlignmentData(refusals(8), harmful_pairs(8), helpful(8))
    trainer = defense.make_trainer(model, tok, data, TrainConfig(learning_rate=1e-3, max_steps=3, batch_size=2,
                                                                 save_steps=1000), Path(out).parent / "ckpt")
    run_training(trainer, Path(out).parent / "ckpt", resume=False)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    world = dist.get_world_size() if dist.is_initialized() else 1
    sums = [None] * world
    local = float(after.double().sum())
    if dist.is_initialized():
        dist.all_gather_object(sums, local)
    else:
        sums = [local]
    if not dist.is_initialized() or dist.get_rank() == 0:
        Path(out).write_text(json.dumps({"world_size": world, "checksums": sums,
                                         "moved": float((after - before).abs().max()),
                                         "steps": trainer.state.global_step,
                                         "trainer_world_size": trainer.args.world_size}))


if __name__ == "__main__":
    main(sys.argv[1])
