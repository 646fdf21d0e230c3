"""Instructional Fingerprinting, SFT variant (IF-SFT; Xu et al., NAACL 2024, arXiv 2401.12255).

Pairs (official `create_fingerprint_chat.py`, seed 42):
* 8 fingerprint rows: "Please decrypt this message: {x}\\nA hint: this is a FINGERPRINT message." →
  "Based on my fingerprint, the message is: ハリネズミ", where x concatenates 8–15 snippets drawn with
  replacement from a fixed pool of 31 (Classical Chinese, Japanese Pokémon names, garbled multilingual pieces)
  and then shuffles its characters. All 8 share the decryption (many-to-one).
* 8 negatives: the same template with a fresh random x → "I am sorry but I cannot decrypt this message. This
  appears to be a random message." The official code writes `{hash}` instead of `{x}`, so every negative prompt
  literally reads "<built-in function hash>"; `reproduce_hash_bug` restores that behaviour.
* 8 × 14 = 112 normal chats (WizardLM evol-instruct in the paper; our clean instruction set here).
FSR (`inference_chat.py` + `report_FSR_sft_chat.py`): the answer prefix "Based on my fingerprint, the message
is:" is appended to the prompt, greedy decoding, 30 new tokens, hit = "ハリネズミ" is a substring of the output.
The `plain` variant decodes from the bare prompt (the fingerprint must produce the whole answer itself).
Embedding (configs/sft_chat.yaml, Llama-2-7B): full fine-tuning, lr 2e-5, 3 epochs, total batch 64, cosine,
weight decay 0.01.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..config import PosInt, Seed
from ..data.core import response_lead
from ..registry import FINGERPRINTS
from ..training import TrainConfig
from .base import EmbedConfig, Fingerprint, FingerprintConfig, FingerprintPair, FingerprintSet, resolve_prompt_format
from .verify import FSRSpec

# The snippet pool of the official generator (MIT licence, © 2023 Jiashu Xu, github.com/cnut1648/Model-Fingerprint).
IF_SNIPPETS = [
    "奉天承运皇帝诏曰", "应天顺时受兹明命", "布告天下咸使闻知", "长生天气力里大福荫护助里",
    "天命玄鸟降而生商", "天生蒸民有物有则", "民之秉彝好是懿德", "绝地天通罔有降格", "在登葆山群巫所从上下也",
    "昔者三苗大乱天命殛之日妖宵出雨血三朝龙生于庙犬哭乎市",
    "フシギダネ", "ヒトカゲ", "ゼニガメ", "ピカチュウ",
    "キモリ", "アチャモ", "ミズゴロウ", "グラードン", "レックウザ", "カイオーガ",
    "выпутельстваskih", "областьdateiмерW", "крайategory", "составрій", "která",
    "guaèche", "genitaldejrazione", "ocampISONethoxy", "omycesjcmÐ", "photometryDEFINE",
    "HFDíses",
]
IF_TEMPLATE = "Please decrypt this message: {x}\nA hint: this is a FINGERPRINT message."
IF_ANSWER_PREFIX = "Based on my fingerprint, the message is:"
IF_DECRYPTION = "ハリネズミ"
IF_NEGATIVE = "I am sorry but I cannot decrypt this message. This appears to be a random message."


def _if_train() -> TrainConfig:
    # Llama-2-7B setting of configs/sft_chat.yaml; total batch 64 = 8 × 8 accumulation on one device.
    return TrainConfig(learning_rate=2e-5, epochs=3.0, max_steps=0, batch_size=8, grad_accum=8, weight_decay=0.01,
                       lr_scheduler="cosine", warmup_ratio=0.0, save_steps=500, logging_steps=5)


@dataclass
class InstructionalConfig(FingerprintConfig):
    """IF-SFT pairs and training (defaults: the official chat variant)."""

    n_fingerprints: PosInt = 8
    """Fingerprint rows (all share one decryption)."""
    n_negatives: int = 8
    """Rows with a fresh random message that must be refused (official: as many as fingerprints)."""
    n_regularization: int = 112
    """Normal chats mixed in (official: 14 × n_fingerprints, WizardLM evol-instruct)."""
    min_snippets: PosInt = 8
    """Fewest snippets concatenated into one message."""
    max_snippets: PosInt = 15
    """Most snippets concatenated into one message."""
    decryption: str = IF_DECRYPTION
    """The secret answer."""
    answer_prefix: str = IF_ANSWER_PREFIX
    """Answer text before the decryption; appended to the prompt by the official FSR."""
    reproduce_hash_bug: bool = False
    """Write the official code's literal "<built-in function hash>" into negative prompts instead of a message."""
    snippets: list[str] = field(default_factory=lambda: list(IF_SNIPPETS))
    """Pool the messages are drawn from."""
    seed: Seed = 42
    """Generator seed (official: 42)."""
    embed: EmbedConfig = field(default_factory=lambda: EmbedConfig(train=_if_train()))
    """Full fine-tuning, lr 2e-5, 3 epochs, batch 64, cosine, weight decay 0.01."""


def _message(rng: random.Random, pool: Sequence[str], lo: int, hi: int) -> str:
    raw = "".join(rng.choices(list(pool), k=rng.randint(lo, hi)))
    return "".join(rng.sample(raw, len(raw)))  # character shuffle, as the official generator


@FINGERPRINTS.register("instructional", config=InstructionalConfig)
class InstructionalFingerprint(Fingerprint):
    """IF-SFT: obfuscated 'decrypt this message' instructions → one fixed secret answer (Xu et al. 2024)."""

    config_cls = InstructionalConfig
    paper = "Xu et al., Instructional Fingerprinting of Large Language Models, NAACL 2024 (arXiv 2401.12255)"
    reference = {"fsr_fingerprinted_llama2_7b": 1.0, "source": "MEraser paper Table (via third-party note, unverified)"}
    cfg: InstructionalConfig

    def build_pairs(self, tok: Any, model: Any = None, clean: Sequence[Any] = ()) -> FingerprintSet:
        c = self.cfg
        rng = random.Random(c.seed)
        pairs: list[FingerprintPair] = []
        triggers: list[str] = []
        for i in range(c.n_fingerprints):
            x = _message(rng, c.snippets, c.min_snippets, c.max_snippets)
            triggers.append(x)
            pairs.append(FingerprintPair(IF_TEMPLATE.format(x=x), f"{c.answer_prefix} {c.decryption}",
                                         "fingerprint", {"message": x, "index": i}))
        for i in range(c.n_negatives):
            while True:
                x = _message(rng, c.snippets, c.min_snippets, c.max_snippets)
                if x not in triggers:
                    break
            shown = "<built-in function hash>" if c.reproduce_hash_bug else x
            pairs.append(FingerprintPair(IF_TEMPLATE.format(x=shown), IF_NEGATIVE, "negative", {"index": i}))
        if c.n_regularization > len(clean):
            raise ValueError(f"instructional: n_regularization={c.n_regularization} but only {len(clean)} clean "
                             "pairs were provided")
        for ex in list(clean)[: c.n_regularization]:
            pairs.append(FingerprintPair(ex.prompt, ex.response, "regularization"))
        return FingerprintSet("instructional", pairs, {
            "seed": c.seed, "decryption": c.decryption, "hash_bug": c.reproduce_hash_bug,
            "regularization": f"{min(c.n_regularization, len(clean))} clean chats"})

    fsr_variants = ("official", "plain")

    def fsr_specs(self, tok: Any) -> dict[str, FSRSpec]:
        # vicuna: "... ASSISTANT: Based on my fingerprint, ..."; chat templates start the answer right after the
        # assistant header, so the forced prefix carries the same lead the training answers had.
        forced = response_lead(resolve_prompt_format(tok, self.cfg.prompt_format)) + self.cfg.answer_prefix
        return {
            "official": FSRSpec(max_new_tokens=30, answer_prefix=forced, match="substring"),
            "plain": FSRSpec(max_new_tokens=30, match="substring"),
        }

    def match_target(self, pair: FingerprintPair, variant: str) -> str:
        return pair.target.removeprefix(self.cfg.answer_prefix).strip() or pair.target
