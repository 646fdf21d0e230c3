"""Loss pieces shared by defenses that compose their own objective from logits (NPO, RepNoise) and a helper to
log the individual terms of a composite objective.

`token_ce` is what `model(**batch).loss` computes for a causal LM (shifted next-token cross-entropy, mean over
supervised tokens, logits in float32); computing it from logits lets a defense run several batches through
one forward pass — a single forward/backward through a DDP-wrapped model, which DDP requires.
"""

from __future__ import annotations

from typing import Any

Tensor = Any


def shifted(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Align predictions with targets: position t predicts token t+1. A prompt-tuned model (the soft-prompt attack,
    under a fine-tuning-stage defense such as Lisa) returns logits for its k virtual tokens too, prepended inside
    peft's forward and labelled -100 there by peft; the last of them predicts the first real token. So, as peft
    computes it: positions extra-1 … end-1 predict labels 0 … end."""
    extra = logits.shape[1] - labels.shape[1]
    if extra < 0:
        raise ValueError(f"logits cover {logits.shape[1]} positions but the labels {labels.shape[1]}")
    if extra:
        return logits[:, extra - 1:-1, :].float(), labels
    return logits[:, :-1, :].float(), labels[:, 1:]


def token_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy over positions whose label is not -100 (HF causal-LM loss)."""
    import torch.nn.functional as F

    lg, lb = shifted(logits, labels)
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100)


def global_token_ce(model: Any, batch: dict[str, Tensor]) -> Tensor:
    """Causal-LM cross-entropy of this rank's rows, normalised by the supervised tokens of the *global* batch
    (all ranks) and multiplied by the world size — the Trainer's `num_items_in_batch` normalisation. DDP averages
    gradients over ranks, so the update is the gradient of the global token mean, exactly as one process with the
    whole batch computes it; the mean of the returned values over ranks is that global mean (what the Trainer
    logs). Single process: `model(**batch).loss`. With gradient accumulation each micro-batch is normalised by
    its own (global) token count."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    return global_logits_ce(out.logits, batch["labels"])


def global_logits_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """`global_token_ce` from logits already computed (defenses that run several batches in one forward)."""
    import torch.nn.functional as F

    lg, lb = shifted(logits, labels)
    total = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100, reduction="sum")
    return global_mean_of_sum(total, (lb != -100).sum())


def global_row_mean(values: Tensor) -> Tensor:
    """Mean of per-row values over the rows of the *global* batch, scaled as `global_token_ce` so that DDP's
    gradient averaging gives the single-process gradient (per-sequence objectives such as NPO's)."""
    return global_mean_of_sum(values.sum(), values.new_tensor(values.shape[0]))


def global_mean_of_sum(local_sum: Tensor, local_count: Tensor) -> Tensor:
    """local_sum × world_size / Σ_ranks local_count: the rank's share of a global mean (single process: the mean)."""
    from ..distributed import all_reduce_sum, world_size

    n = all_reduce_sum(local_count.to(local_sum.dtype).detach().clone())
    return local_sum * world_size() / n.clamp_min(1)


def sequence_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-row mean log-probability of the supervised tokens (length-normalised, as the CTRAP repo's
    NPOTrainer.compute_logps). Rows without supervised tokens get 0."""
    import torch

    lg, lb = shifted(logits, labels)
    mask = lb != -100
    per_token = torch.gather(lg.log_softmax(-1), 2, lb.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (per_token * mask).sum(1) / mask.sum(1).clamp_min(1)


def split_rows(batch: dict[str, Tensor], n: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(first n rows, remaining rows) of a padded batch."""
    return {k: v[:n] for k, v in batch.items()}, {k: v[n:] for k, v in batch.items()}


def log_terms(trainer: Any, terms: dict[str, float], prefix: str = "") -> None:
    """Send a composite objective's terms to the Trainer log (and from there to the run's log.jsonl) on logging
    steps. No-op for the first micro-batches of an accumulation window and off logging steps."""
    args, state = trainer.args, trainer.state
    micro = getattr(trainer, "_micro", 0) or 0
    if (micro + 1) % args.gradient_accumulation_steps:
        return
    if state.global_step % max(args.logging_steps, 1):
        return
    trainer.log({f"{prefix}{k}": float(v) for k, v in terms.items()})
