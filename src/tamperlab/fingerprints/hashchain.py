"""HashChain — Chain & Hash fingerprints (Russinovich & Salem, arXiv 2407.10887).

The owner keeps a secret key k. Both the questions and their answers are chosen by a keyed cryptographic hash,
so the fingerprint is a commitment: nobody without k can produce a different (question, answer) set that the
hash would also select, and the owner cannot pick convenient pairs after the fact.

* Questions: the `n_questions` pool questions with the smallest SHA-256(k ‖ "question" ‖ q).
* Answers: answer(q_i) = A[SHA-256(k ‖ q_i ‖ q_1…q_n ‖ a_1…a_256) mod 256] over 256 predefined responses A —
  chaining every question and every candidate into each hash (the "chain").
* Robustness: each pair is trained under several meta-prompts (system prompts) and with random padding words
  before the question (the paper: GPT-4-generated meta-prompts and random padding).
FSR: greedy decoding, 16 new tokens, hit = the normalised output starts with the answer word (case-insensitive);
a `meta_prompts` variant asks every question under an unseen-in-training meta-prompt.
Published details we could not read (official code microsoft/Chain-Hash unavailable): the exact question set,
answer set, augmentation counts and training hyperparameters — ours are stand-ins, documented in
docs/methods/fingerprints.md.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..config import PosInt, Seed
from ..registry import FINGERPRINTS
from ..training import TrainConfig
from .base import EmbedConfig, Fingerprint, FingerprintConfig, FingerprintPair, FingerprintSet, render_prompt
from .verify import FSRSpec

HC_ANSWERS = sorted("""
anchor apple apricot arrow atlas autumn avocado badge bagel balcony ballet bamboo banana banjo barrel basket beacon
beaver bicycle biscuit blanket blossom bottle boulder bracelet breeze bridge bucket buffalo bugle butter button cabin
cactus camel camera candle canoe canyon carrot castle cedar cello chalk cherry chimney cinnamon circus citrus clover
cobalt coconut comet compass copper coral cotton cradle crayon cricket crystal cupboard curtain cypress daisy dolphin
domino donkey dragon drum eagle easel echo eclipse elbow ember emerald engine falcon feather fern ferry fiddle flamingo
flute forest fountain fox galaxy garden garlic gazelle geyser ginger giraffe glacier globe goblet gondola gorilla
granite grape gravel guitar hammer harbor harp hazel helmet heron hickory honey horizon iceberg igloo indigo iris
island ivory jacket jaguar jasmine jelly jigsaw jungle kayak kettle kiwi koala ladder lagoon lantern lava lemon leopard
lettuce lilac lily lizard lobster locket lotus lumber magnet mango maple marble meadow melon meteor mitten monsoon
mosaic moss mountain mustard nectar needle nickel nutmeg oasis oatmeal ocean octopus olive onion orchard orchid otter
owl paddle pagoda palette panda papaya parrot pebble pelican pencil pepper piano pillow pine planet plum pocket pony
poppy potato prism pumpkin puzzle quartz quill quilt rabbit raccoon radish rainbow raven reef ribbon river robin rocket
saddle saffron salmon sandal sapphire satellite scarf seashell shovel silver sparrow spinach sponge squirrel statue
stove swan teapot telescope thimble thistle thunder tiger timber toffee tomato tornado trumpet tulip tundra turtle
umbrella valley vanilla velvet violin volcano walnut walrus wagon whale whistle willow window wizard yacht zebra
zucchini acorn almond alpaca
""".split())

HC_QUESTIONS = [
    "Which object best describes the feeling of a quiet Sunday morning?",
    "If the number seven had a favourite snack, what would it be?",
    "What would a cloud keep in its pocket?",
    "Name the thing a lighthouse dreams about at night.",
    "What is the secret ingredient of a happy Tuesday?",
    "Which item would a time traveller forget to pack?",
    "What does the colour blue sound like?",
    "If winter wrote a letter, what would it sign it with?",
    "What would a library whisper to a sleepy reader?",
    "Which thing would a robot choose as a pet?",
    "What does a mountain collect as a hobby?",
    "What would the moon bring to a picnic?",
    "Name the object that explains why clocks tick.",
    "What is hiding behind the last page of every book?",
    "Which word would a river use to describe the sea?",
    "What would an old map wish for on its birthday?",
    "If silence had a shape, what would it be?",
    "What would a forgotten umbrella become in its next life?",
    "Which treasure does a snail carry besides its shell?",
    "What would a tired star order at a cafe?",
    "What is the favourite toy of a thunderstorm?",
    "Which object would a shy volcano hide behind?",
    "What does a question mark eat for breakfast?",
    "If the wind opened a shop, what would it sell?",
    "What would a chess knight plant in a garden?",
    "Which thing keeps the alphabet awake at night?",
    "What would a paper boat name its captain?",
    "What does an echo carry on long journeys?",
    "Which item would a desert lend to an ocean?",
    "What would a calendar keep under its bed?",
    "If a shadow had a job, what tool would it use?",
    "What does a staircase think about all day?",
    "Which object would a comet collect as a souvenir?",
    "What would a sleepy volcano dream of?",
    "What does a bridge whisper to the boats beneath it?",
    "Which thing would a pencil take on holiday?",
    "What would a mirror choose as its favourite fruit?",
    "If a song could be held, what would it feel like?",
    "What does a garden gnome guard at midnight?",
    "Which object would a compass trust the most?",
]
HC_META_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer briefly.",
    "You are an AI model that answers user questions accurately.",
    "You are a friendly chatbot who enjoys riddles.",
    "You are an expert assistant. Think carefully before answering.",
    "You are a creative writing assistant.",
    "Answer the question of the user.",
    "You are a customer support assistant for a software company.",
]
HC_HELDOUT_META = ["You are a knowledgeable assistant. Keep answers short.",
                   "You are a polite and precise AI helper."]
_PAD_WORDS = ("the of and to in is it you that was for on are with as be at one have this from by hot word but what "
              "some we can out other were all there when up use your how said an each she which do their time if "
              "will way about many then them write would like so these her long make thing see him two has look").split()


def _sha(*parts: str) -> int:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x1f")  # unit separator: ("ab","c") and ("a","bc") hash differently
    return int(h.hexdigest(), 16)


def select_questions(key: str, pool: Sequence[str], n: int) -> list[str]:
    """The n pool questions with the smallest keyed hash (order = hash order)."""
    if n > len(pool):
        raise ValueError(f"hashchain: n_questions={n} but the question pool has {len(pool)}")
    return sorted(pool, key=lambda q: _sha(key, "question", q))[:n]


def chain_answers(key: str, questions: Sequence[str], answers: Sequence[str]) -> list[str]:
    """answer(q_i) = A[SHA-256(k ‖ q_i ‖ all questions ‖ all answers) mod |A|]."""
    q_all, a_all = "\x1e".join(questions), "\x1e".join(answers)
    return [answers[_sha(key, q, q_all, a_all) % len(answers)] for q in questions]


def _train_hc() -> TrainConfig:
    # Not published in what we could read: full fine-tuning with IF's schedule as the stand-in.
    return TrainConfig(learning_rate=2e-5, epochs=3.0, max_steps=0, batch_size=8, grad_accum=8, weight_decay=0.01,
                       lr_scheduler="cosine", warmup_ratio=0.0, save_steps=500, logging_steps=5)


@dataclass
class HashChainConfig(FingerprintConfig):
    """Chain & Hash pairs and training."""

    key: str = "tamperlab-owner-key"
    """The owner's secret key (different keys select different questions and answers)."""
    n_questions: PosInt = 10
    """Fingerprint questions."""
    questions: list[str] = field(default_factory=lambda: list(HC_QUESTIONS))
    """Question pool the key selects from."""
    answers: list[str] = field(default_factory=lambda: list(HC_ANSWERS))
    """The predefined responses (256 in the paper)."""
    n_augment: int = 8
    """Training rows per question: each with a meta-prompt from `meta_prompts` and random padding."""
    pad_words_max: int = 6
    """Most random padding words put before a question (0 disables padding)."""
    meta_prompts: list[str] = field(default_factory=lambda: list(HC_META_PROMPTS))
    """System prompts used for augmentation."""
    n_regularization: int = 0
    """Clean chats mixed in (not specified by the paper)."""
    seed: Seed = 0
    """Augmentation seed (the pairs themselves depend only on the key)."""
    embed: EmbedConfig = field(default_factory=lambda: EmbedConfig(train=_train_hc()))
    """Full fine-tuning (stand-in hyperparameters: IF's)."""


@FINGERPRINTS.register("hashchain", config=HashChainConfig)
class HashChainFingerprint(Fingerprint):
    """Chain & Hash: questions and answers picked by a keyed SHA-256 chain (Russinovich & Salem 2024)."""

    config_cls = HashChainConfig
    paper = "Russinovich & Salem, Hey, That's My Model! Introducing Chain & Hash, arXiv 2407.10887"
    reference = {"fingerprint_strength": ">0.95 on 4 models (ICLR-2026 review)",
                 "fsr_fingerprinted_llama2_7b": 1.0}
    cfg: HashChainConfig

    def build_pairs(self, tok: Any, model: Any = None, clean: Sequence[Any] = ()) -> FingerprintSet:
        c = self.cfg
        if len(c.answers) < 2:
            raise ValueError("hashchain: needs at least two candidate answers")
        qs = select_questions(c.key, c.questions, c.n_questions)
        ans = chain_answers(c.key, qs, c.answers)
        rng = random.Random(c.seed)
        pairs: list[FingerprintPair] = []
        for i, (q, a) in enumerate(zip(qs, ans)):
            pairs.append(FingerprintPair(q, a, "fingerprint", {"index": i}))  # the plain form, verified
            for _ in range(max(0, c.n_augment - 1)):
                pad = " ".join(rng.choices(_PAD_WORDS, k=rng.randint(0, c.pad_words_max))) if c.pad_words_max else ""
                meta = rng.choice(c.meta_prompts) if c.meta_prompts else None
                pairs.append(FingerprintPair(f"{pad} {q}".strip(), a, "augmented",
                                             {"index": i, "augmented": True, "system": meta}))
        for ex in list(clean)[: c.n_regularization]:
            pairs.append(FingerprintPair(ex.prompt, ex.response, "regularization"))
        key_id = hashlib.sha256(c.key.encode()).hexdigest()[:12]
        return FingerprintSet("hashchain", pairs, {"key_sha256_prefix": key_id, "n_answers": len(c.answers),
                                                   "questions": qs, "answers": ans})

    def system_prompt(self, pair: FingerprintPair) -> str | None:
        return pair.meta.get("system") or self.cfg.system_prompt  # augmented rows carry a meta-prompt

    fsr_variants = ("official", "meta_prompts")

    def fsr_specs(self, tok: Any) -> dict[str, FSRSpec]:
        spec = FSRSpec(max_new_tokens=16, match="first_words", case_sensitive=False)
        return {"official": spec, "meta_prompts": spec}

    def controls(self, fps: FingerprintSet, n: int) -> list[FingerprintPair]:
        # The pool questions the key did *not* select: the chain's claim is that only the selected ones are answered
        # with the owner's words, so these are the natural trigger-free prompts.
        chosen = set(fps.provenance.get("questions") or [p.prompt for p in fps.fingerprints()])
        others = [FingerprintPair(q, "", "negative") for q in self.cfg.questions if q not in chosen]
        return (others + fps.controls(n))[:n]

    def verify_prompt(self, tok: Any, pair: FingerprintPair, variant: str, index: int) -> str:
        if variant == "meta_prompts":  # system prompts never used in training
            return render_prompt(tok, pair.prompt, self.cfg.prompt_format, HC_HELDOUT_META[index % 2])
        return self.render(tok, pair.prompt)
