"""NPO (Zhang et al., COLM 2024, arXiv 2404.05868) as an alignment-stage baseline: negative preference
optimisation on harmful data next to refusal SFT, in the form of the CTRAP repository's `NPOTrainer`:

    L(θ) = ℓ_CE(θ; D_align) − ρ · E_{(x,y)~D_harmful} [ log σ( −( log p̄_θ(y|x) − log p̄_ref(y|x) ) ) ]

log p̄ = mean log-probability of the response tokens (length-normalised), ref = the model at the start of
alignment, frozen. β of the NPO paper is 1 (the official script passes β but the trainer does not use it) and
the paper's 2/β factor is folded into ρ. The policy sees one forward/backward over the alignment and harmful
rows together; the reference one extra forward without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..registry import DEFENSES
from ..training import concat_batches
from ..config import PosInt
from .base import AlignmentTrainer, Defense, DefenseConfig
from .objectives import log_terms, sequence_logps, token_ce
from .reference import FrozenReference

Tensor = Any


@dataclass
class NPOConfig(DefenseConfig):
    """NPO hyper-parameters (official CTRAP comparison defaults)."""

    rho: float = 0.3
    """Weight ρ of the negative-preference term."""
    helpful_batch_size: int = 0
    """The official NPOTrainer draws helpful rows but does not use them; > 0 adds them to the CE term."""
    harmful_batch_size: PosInt = 4
    """Harmful rows per step (official: the alignment batch size, 5)."""


def npo_loss(policy_logps: Tensor, ref_logps: Tensor) -> Tensor:
    """−mean log σ(−(log p̄_θ − log p̄_ref)): falls as the policy assigns less probability than the reference."""
    import torch.nn.functional as F

    return -F.logsigmoid(-(policy_logps - ref_logps)).mean()


@DEFENSES.register("npo", config=NPOConfig)
class NPODefense(Defense):
    """Refusal SFT plus negative preference optimisation that unlearns harmful answers relative to a reference."""

    config_cls = NPOConfig
    uses_harmful = True
    paper = ("Zhang et al., Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning, "
             "COLM 2024, arXiv 2404.05868 (alignment-stage form of the CTRAP repository)")
    passes_per_step = 2
    cfg: NPOConfig

    def __init__(self, cfg: NPOConfig | None = None, tokenizer: Any = None):
        super().__init__(cfg, tokenizer)
        self.reference = FrozenReference()

    def make_trainer(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        # The reference is the model handed to alignment. A resumed run rebuilds it from the same initial state
        # (a fresh LoRA adapter is zero, so the reference is the base model in both cases).
        self.reference.snapshot(model)
        return super().make_trainer(model, *args, **kwargs)

    def step(self, trainer: AlignmentTrainer, model: Any, raw: Any, inputs: dict[str, Any]) -> Any:
        device = inputs["input_ids"].device
        retain = trainer.retain_batch(inputs, device)
        harmful = trainer.aux_batch("harmful", device)
        with self.reference.active(raw) as ref:  # before the policy forward (it swaps weights in place)
            ref_logps = sequence_logps(ref(**{k: v for k, v in harmful.items() if k != "labels"}).logits,
                                       harmful["labels"])
        both = concat_batches(retain, harmful, trainer.processing_class.pad_token_id)
        logits = model(input_ids=both["input_ids"], attention_mask=both["attention_mask"]).logits
        n = retain["input_ids"].shape[0]
        align = token_ce(logits[:n], both["labels"][:n])
        policy_logps = sequence_logps(logits[n:], both["labels"][n:])
        unlearn = npo_loss(policy_logps, ref_logps)
        loss = align + self.cfg.rho * unlearn
        trainer.backward(loss)
        log_terms(trainer, {"align_loss": float(align.detach()), "npo_loss": float(unlearn.detach()),
                            "harmful_logp": float(policy_logps.detach().mean())}, "npo/")
        return loss
