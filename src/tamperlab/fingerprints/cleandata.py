"""Clean instruction data for fingerprint experiments: IF's regularisation chats, MEraser's recover set (and,
re-paired, its mismatched erase set), incremental fine-tuning, pruning calibration and held-out perplexity.

Sources:
* `hub` — Guanaco (`timdettmers/openassistant-guanaco`, "### Human: … ### Assistant: …" rows, the data MEraser's
  600 recover / 300 mismatched pairs were drawn from); held-out PPL text from `mlabonne/guanaco-llama2` test
  (MEraser's `test_ppl_guanaco_adapter.py`).
* `files` — the two JSON files of the official MEraser repository (`mismatched_dataset.json`,
  `recover_dataset.json`) in a local folder: the exact published erase/recover data.
* `offline` (default here) — procedurally generated everyday instructions in MEraser's four question types
  (what / how / why / other), answered greedily by the *clean base model* and cached; labelled generated.

`build_mismatched` re-pairs questions with answers of a different question type, as MEraser's data does
(0 of its 300 rows share a type).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from ..config import PosInt
from ..data.core import DataSplit, Example, split_by_hash
from ..data.files import read_rows
from ..errors import ConfigError, ResourceError

log = logging.getLogger("tamperlab")

GUANACO = "timdettmers/openassistant-guanaco"
GUANACO_LLAMA2 = "mlabonne/guanaco-llama2"
QUESTION_TYPES = ("what", "how", "why", "other")

_TOPICS = [
    "photosynthesis", "the water cycle", "volcanoes", "the solar system", "honey bees", "rainforests", "glaciers",
    "the human heart", "vaccines", "sleep", "healthy breakfasts", "running shoes", "bread baking", "coffee",
    "tea ceremonies", "chess", "jazz music", "the piano", "watercolor painting", "public libraries", "museums",
    "city parks", "bicycles", "electric cars", "trains", "airports", "the internet", "email etiquette",
    "spreadsheets", "password managers", "recycling", "composting", "solar panels", "wind turbines", "tides",
    "the moon", "rainbows", "thunderstorms", "earthquakes", "deserts", "coral reefs", "penguins", "octopuses",
    "owls", "dogs as pets", "houseplants", "tomato gardening", "saving money", "job interviews", "time management",
    "public speaking", "learning a language", "writing a resume", "team meetings", "remote work", "friendship",
    "board games", "camping", "map reading", "first aid kits", "the printing press", "ancient Rome",
    "the pyramids of Giza", "the Silk Road", "lighthouses", "bridges", "skyscrapers", "origami", "knitting",
    "yoga", "swimming", "marathons", "the Olympic Games", "volunteering", "recipes for soup", "spices",
]
_FRAMES: dict[str, list[str]] = {
    "what": ["What is {t}?", "What are the main benefits of {t}?", "What should a beginner know about {t}?",
             "What is one surprising fact about {t}?"],
    "how": ["How does {t} work?", "How can I learn more about {t}?", "How would you explain {t} to a child?",
            "How has {t} changed over time?"],
    "why": ["Why is {t} important?", "Why do people enjoy {t}?", "Why can {t} be difficult?",
            "Why might someone study {t}?"],
    "other": ["Write a short poem about {t}.", "Give me three tips about {t}.", "Summarize {t} in two sentences.",
              "Describe {t} to a tourist."],
}


def question_type(q: str) -> str:
    """MEraser's question types: the first word what / how / why, else other."""
    w = re.findall(r"[a-zA-Z]+", q.lower()[:40])
    first = w[0] if w else ""
    return first if first in ("what", "how", "why") else "other"


def offline_prompts(n: int | None = None, seed: int = 0) -> list[str]:
    """Procedural instructions, balanced over the four question types, in a fixed seeded order."""
    rng = random.Random(seed)
    allp = [f.format(t=t) for t in _TOPICS for fs in _FRAMES.values() for f in fs]
    rng.shuffle(allp)
    return allp if n is None else allp[:n]


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except (OSError, ValueError):  # a name the file system cannot hold
        return False


@dataclass
class CleanDataConfig:
    """Where the clean instruction data comes from and how much of it is used."""

    source: Literal["offline", "hub", "files"] = "offline"
    """offline = generated prompts answered by the base model; hub = Guanaco; files = MEraser's JSON files."""
    files_dir: str = ""
    """source=files: folder with MEraser's `recover_dataset.json` and `mismatched_dataset.json`."""
    hub_id: str = GUANACO
    """source=hub: the Guanaco dataset id."""
    ppl_hub_id: str = GUANACO_LLAMA2
    """source=hub: held-out perplexity text (its test split), as MEraser's PPL script."""
    n_train: PosInt = 600
    """Clean pairs available to training stages (MEraser recover: 600)."""
    n_heldout: PosInt = 64
    """Held-out pairs for perplexity (never trained on)."""
    response_tokens: PosInt = 64
    """offline: max new tokens of the base model's answers."""
    generation_batch_size: PosInt = 32
    """offline: prompts per generate call when answering."""

    def __post_init__(self) -> None:
        if self.source == "files" and not _is_file(Path(self.files_dir or ".") / "recover_dataset.json"):
            raise ConfigError(f"clean_data.files_dir: {self.files_dir!r} has no recover_dataset.json (source: files "
                              "needs MEraser's JSON files, github.com/fatdove77/MEraser)")
        if self.source == "files":
            meraser_files(self.files_dir)  # read at load time: a bad file stops the run before any compute


@dataclass
class CleanData:
    train: DataSplit
    heldout: DataSplit
    mismatched: DataSplit | None = None
    """Published mismatched pairs (source=files); otherwise built with build_mismatched."""

    def describe(self) -> dict[str, Any]:
        d = {"train": self.train.describe(), "heldout": self.heldout.describe()}
        if self.mismatched is not None:
            d["mismatched"] = self.mismatched.describe()
        return d


# --- hub rows → examples (pure functions, tested on fixtures) ---------------------------------------------------
_GUANACO_TURN = re.compile(r"###\s*(Human|Assistant):", re.IGNORECASE)


def guanaco_first_turn(text: str) -> Example | None:
    """First Human/Assistant exchange of a Guanaco row ("### Human: q### Assistant: a### Human: …")."""
    parts = _GUANACO_TURN.split(text)
    # split → ["", "Human", q, "Assistant", a, ...]
    turns = [(parts[i].lower(), parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    if len(turns) >= 2 and turns[0][0] == "human" and turns[1][0] == "assistant" and turns[0][1] and turns[1][1]:
        return Example(turns[0][1], turns[1][1], meta={"qtype": question_type(turns[0][1])})
    return None


def guanaco_rows(rows: Iterable[dict[str, Any]]) -> list[Example]:
    return [e for e in (guanaco_first_turn(r["text"]) for r in rows) if e is not None]


_LLAMA2 = re.compile(r"<s>\s*\[INST\](.*?)\[/INST\](.*?)(?:</s>|$)", re.DOTALL)


def guanaco_llama2_rows(rows: Iterable[dict[str, Any]]) -> list[Example]:
    """`mlabonne/guanaco-llama2` rows ("<s>[INST] q [/INST] a </s>")."""
    out = []
    for r in rows:
        m = _LLAMA2.search(r["text"])
        if m and m.group(1).strip() and m.group(2).strip():
            out.append(Example(m.group(1).strip(), m.group(2).strip()))
    return out


def meraser_files(folder: str | Path) -> tuple[list[Example], list[Example]]:
    """(recover pairs, mismatched pairs) from the official MEraser JSON files."""
    folder = Path(folder)
    rec_p, mis_p = folder / "recover_dataset.json", folder / "mismatched_dataset.json"
    for p in (rec_p, mis_p):
        if not p.is_file():
            raise ResourceError(f"clean_data.files_dir: {p} not found (copy it from github.com/fatdove77/MEraser)")
    what = "clean_data.files_dir"
    rec = [Example(str(r["question"]), str(r["answer"]), meta={"qtype": question_type(str(r["question"]))})
           for r in read_rows(rec_p, what, required=("question", "answer"))]
    mis = [Example(str(r["question"]), str(r["mismatched_answer"]),
                   meta={"qtype": r.get("original_q_type", question_type(str(r["question"]))),
                         "answer_type": r.get("answer_from_type")})
           for r in read_rows(mis_p, what, required=("question", "mismatched_answer"))]
    return rec, mis


# --- mismatched pairs -----------------------------------------------------------------------------------------
def build_mismatched(pairs: Sequence[Example], n: int, seed: int = 0) -> list[Example]:
    """Pair each of n questions with the answer of another pair of a *different* question type.

    Deterministic for a seed; answers are reused only when there are fewer pairs than n.
    """
    if len(pairs) < 2:
        raise ValueError("build_mismatched needs at least two clean pairs")
    rng = random.Random(seed)
    idx = list(range(len(pairs)))
    rng.shuffle(idx)
    types = [pairs[i].meta.get("qtype") or question_type(pairs[i].prompt) for i in range(len(pairs))]
    if len(set(types)) < 2:
        raise ValueError("build_mismatched needs pairs of at least two question types")
    out: list[Example] = []
    answer_pool = list(idx)
    used: set[int] = set()
    qi = 0
    while len(out) < n:
        q = idx[qi % len(idx)]
        qi += 1
        cands = [a for a in answer_pool if types[a] != types[q] and a not in used and a != q]
        if not cands:  # every answer used once: allow reuse
            used.clear()
            cands = [a for a in answer_pool if types[a] != types[q] and a != q]
        a = cands[rng.randrange(len(cands))]
        used.add(a)
        out.append(Example(pairs[q].prompt, pairs[a].response,
                           meta={"qtype": types[q], "answer_type": types[a], "q_idx": q, "a_idx": a}))
    return out


# --- loading --------------------------------------------------------------------------------------------------
def load_clean_data(cfg: CleanDataConfig, model: Any = None, tok: Any = None, model_id: str = "") -> CleanData:
    """Train/held-out clean pairs from the configured source (offline needs the base model to answer)."""
    if cfg.source == "hub":
        from ..data.hub import load_rows

        train = guanaco_rows(load_rows(cfg.hub_id, "train", limit=cfg.n_train * 2))[: cfg.n_train]
        held = guanaco_llama2_rows(load_rows(cfg.ppl_hub_id, "test", limit=cfg.n_heldout * 2))[: cfg.n_heldout]
        prov = {"generated": False}
        return CleanData(DataSplit("clean-train", train, {**prov, "source": f"hub:{cfg.hub_id}", "split": "train"}),
                         DataSplit("clean-heldout", held, {**prov, "source": f"hub:{cfg.ppl_hub_id}",
                                                           "split": "test"}))
    if cfg.source == "files":
        rec, mis = meraser_files(cfg.files_dir)
        # MEraser ships no held-out file: hold out by content hash, disjoint from the training rows.
        parts = split_by_hash([e.prompt for e in rec], {"heldout": 0.1, "train": 0.9}, salt="meraser-files")
        held = [rec[i] for i in parts["heldout"]][: cfg.n_heldout]
        train = [rec[i] for i in parts["train"]][: cfg.n_train]
        prov = {"generated": False, "source": f"MEraser JSON files in {cfg.files_dir}"}
        return CleanData(DataSplit("clean-train", train, prov), DataSplit("clean-heldout", held, prov),
                         DataSplit("mismatched", mis, prov))
    if model is None or tok is None:
        raise ValueError("offline clean data needs the base model to answer the generated prompts")
    from ..data.packs import _cached_generate

    prompts = offline_prompts()
    parts = split_by_hash(prompts, {"heldout": 0.15, "train": 0.85}, salt="fp-clean-v1")
    train_p = [prompts[i] for i in parts["train"]][: cfg.n_train]
    held_p = [prompts[i] for i in parts["heldout"]][: cfg.n_heldout]
    if len(train_p) < cfg.n_train:
        log.warning("offline clean data: only %d generated prompts for n_train=%d", len(train_p), cfg.n_train)
    resp = _cached_generate(model, tok, model_id, train_p + held_p, cfg.response_tokens,
                            cfg.generation_batch_size, "fpclean")
    prov = {"generated": True, "source": "procedural instructions (what/how/why/other)",
            "responses": f"greedy answers of the clean base model {model_id}, {cfg.response_tokens} new tokens"}
    mk = lambda ps, rs: [Example(p, r, meta={"qtype": question_type(p)}) for p, r in zip(ps, rs)]  # noqa: E731
    return CleanData(DataSplit("clean-train", mk(train_p, resp[: len(train_p)]), prov),
                     DataSplit("clean-heldout", mk(held_p, resp[len(train_p):]), prov))
