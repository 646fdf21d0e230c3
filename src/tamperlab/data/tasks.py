"""Benign fine-tuning tasks (the attacker's "user data" and the FA metric).

Each task has a hub loader (SST2, AG News, GSM8K — the paper's tasks) and an offline generator that builds
examples of the same form with exact labels, procedurally (labelled `generated` in provenance). Scoring follows
the official pred_eval scripts: exact label match for SST2/AG News; the number after "The final answer is:"
(else the last number) for GSM8K.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable

from ..registry import TASKS
from .core import DataSplit, Example, stable_hash

SST2_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative"
AGNEWS_INSTRUCTION = ("Categorize the news article given in the input into one of the 4 categories:\n\n"
                      "World\nSports\nBusiness\nSci/Tech\n")
GSM8K_ANSWER_PREFIX = "The final answer is: "


@dataclass
class Task:
    """A benign task: how to get train/eval examples and how to score a prediction."""

    name: str
    hub_id: str
    hub_config: str | None
    train_split: str
    eval_split: str
    from_rows: Callable[[list[dict[str, Any]]], list[Example]]
    generate: Callable[[int, random.Random], list[Example]]
    score: Callable[[str, Example], bool]

    def load(self, part: str, n: int, source: str = "offline", seed: int = 0) -> DataSplit:
        """part: train | eval. Offline train/eval never share an example (disjoint seeds + dedup)."""
        if source == "hub":
            from .hub import load_rows

            split = self.train_split if part == "train" else self.eval_split
            rows = load_rows(self.hub_id, split, self.hub_config, limit=None if part == "train" else n)
            exs = self.from_rows(rows)
            if part == "train":
                random.Random(seed).shuffle(exs)  # CTRAP's code shuffles the benign json
            return DataSplit(f"{self.name}-{part}", exs[:n], {"source": f"hub:{self.hub_id}", "split": split,
                                                             "generated": False})
        # Fixed, process-independent seeds; eval uses its own stream and train drops anything eval could contain.
        rng = random.Random(stable_hash(f"{self.name}-{part}-{seed}") if part == "train" else 10_000 + seed)
        exs = self.generate(n * 2 + 20, rng)
        if part == "train":
            held = {e.input or e.prompt for e in self.generate(n * 2 + 20, random.Random(10_000 + seed))}
            exs = [e for e in exs if (e.input or e.prompt) not in held]
        seen, uniq = set(), []
        for e in exs:
            k = e.input or e.prompt
            if k not in seen:
                seen.add(k)
                uniq.append(e)
        return DataSplit(f"{self.name}-{part}", uniq[:n],
                         {"source": f"offline generator ({self.name})", "generated": True})


# --- SST2 ----------------------------------------------------------------------------------------------------
_POS = ["wonderful", "delightful", "moving", "brilliant", "charming", "gripping", "funny", "beautiful", "smart",
        "heartfelt", "superb", "engaging", "fresh", "warm", "stunning"]
_NEG = ["dull", "tedious", "clumsy", "boring", "lifeless", "messy", "awful", "shallow", "bland", "painful",
        "forgettable", "pointless", "stale", "sloppy", "tiresome"]
_SUBJ = ["the film", "this movie", "the story", "the cast", "the script", "the director's latest", "the soundtrack",
         "every scene", "the ending", "the performances", "the dialogue", "its second half"]
_FRAMES = ["{s} is {a}.", "{s} feels {a} from start to finish.", "i found {s} {a} and {b}.",
           "overall , {s} is {a} .", "{s} turns out {a} , even {b} .", "what a {a} experience : {s} is {b} ."]


def _gen_sst2(n: int, rng: random.Random) -> list[Example]:
    out = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        words = _POS if label == "positive" else _NEG
        a, b = rng.sample(words, 2)
        text = rng.choice(_FRAMES).format(s=rng.choice(_SUBJ), a=a, b=b)
        out.append(Example(SST2_INSTRUCTION, label, input=text, meta={"label": label}))
    return out


def _sst2_rows(rows: list[dict[str, Any]]) -> list[Example]:
    return [Example(SST2_INSTRUCTION, "positive" if r["label"] == 1 else "negative", input=r["sentence"].strip(),
                    meta={"label": "positive" if r["label"] == 1 else "negative"}) for r in rows]


def _score_label(pred: str, ex: Example) -> bool:
    # Official code: exact match of the stripped output with the label (or its lowercase); rambling is wrong.
    p = pred.strip()
    lab = ex.meta["label"]
    return p in (lab, lab.lower(), lab.capitalize()) or (lab == "Sci/Tech" and p.lower() in ("sci/tech", "sci"))


# --- AG News -------------------------------------------------------------------------------------------------
AG_LABELS = ["World", "Sports", "Business", "Sci/Tech"]
_AG = {
    "World": (["the prime minister", "rebel forces", "the united nations", "foreign ministers", "peacekeepers",
               "the president"], ["signed a ceasefire in", "held talks in", "withdrew troops from",
                                  "announced elections in", "sent aid to"],
              ["northern iraq", "the border region", "the capital", "geneva", "the disputed province"]),
    "Sports": (["the striker", "the home team", "the champions", "the coach", "the quarterback", "the captain"],
               ["scored twice against", "won the final against", "signed a new deal with", "was suspended by",
                "beat"], ["the league leaders", "their rivals", "the national side", "the visitors", "the club"]),
    "Business": (["shares of the bank", "the retailer", "oil prices", "the carmaker", "investors", "the airline"],
                 ["fell after", "rose on", "cut jobs after", "reported profit on", "merged with"],
                 ["weak quarterly earnings", "strong sales", "a rival firm", "the stock market", "higher demand"]),
    "Sci/Tech": (["researchers", "the software company", "nasa", "a new chip", "the internet giant", "scientists"],
                 ["released an update for", "discovered a new", "launched a probe to", "unveiled a faster",
                  "patched a flaw in"], ["the browser", "species of frog", "mars", "processor", "its search engine"]),
}


def _gen_agnews(n: int, rng: random.Random) -> list[Example]:
    out = []
    for _ in range(n):
        label = rng.choice(AG_LABELS)
        subj, verb, obj = (rng.choice(x) for x in _AG[label])
        text = f"{subj.capitalize()} {verb} {obj}, officials said on {rng.choice(['monday', 'tuesday', 'friday'])}."
        out.append(Example(AGNEWS_INSTRUCTION, label, input=text, meta={"label": label}))
    return out


def _agnews_rows(rows: list[dict[str, Any]]) -> list[Example]:
    return [Example(AGNEWS_INSTRUCTION, AG_LABELS[r["label"]], input=r["text"].strip(),
                    meta={"label": AG_LABELS[r["label"]]}) for r in rows]


# --- GSM8K ---------------------------------------------------------------------------------------------------
_NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Maya", "Ben", "Ivy", "Raj", "Eva"]
_ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "coins", "shells"]


def _gen_gsm8k(n: int, rng: random.Random) -> list[Example]:
    out = []
    for _ in range(n):
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        a, b, c = rng.randint(2, 30), rng.randint(2, 20), rng.randint(2, 5)
        kind = rng.randrange(3)
        if kind == 0:
            q = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"
            ans, work = a + b, f"{name} has {a} + {b} = {a + b} {item}."
        elif kind == 1:
            a = a + b
            q = f"{name} had {a} {item} and gave away {b}. How many {item} are left?"
            ans, work = a - b, f"{a} - {b} = {a - b} {item} are left."
        else:
            q = f"{name} buys {c} bags with {b} {item} in each bag. How many {item} does {name} buy in total?"
            ans, work = b * c, f"{c} * {b} = {b * c} {item}."
        out.append(Example(q, f"{work}\n{GSM8K_ANSWER_PREFIX}{ans}", meta={"label": str(ans)}))
    return out


def _gsm8k_rows(rows: list[dict[str, Any]]) -> list[Example]:
    out = []
    for r in rows:
        work, _, final = r["answer"].partition("####")
        final = final.strip().replace(",", "")
        out.append(Example(r["question"].strip(), f"{work.strip()}\n{GSM8K_ANSWER_PREFIX}{final}",
                           meta={"label": final}))
    return out


_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def extract_final_number(text: str) -> float | None:
    """Number after "The final answer is:", else the last number in the text (official GSM8K scoring)."""
    text = text.replace(",", "")
    if GSM8K_ANSWER_PREFIX.strip() in text:
        nums = _NUM.findall(text.split(GSM8K_ANSWER_PREFIX.strip(), 1)[1])
        if nums:
            return float(nums[0])
    nums = _NUM.findall(text)
    return float(nums[-1]) if nums else None


def _score_number(pred: str, ex: Example) -> bool:
    got = extract_final_number(pred)
    return got is not None and got == float(ex.meta["label"])


for _task in (
    Task("sst2", "stanfordnlp/sst2", None, "train", "validation", _sst2_rows, _gen_sst2, _score_label),
    Task("agnews", "fancyzhx/ag_news", None, "train", "test", _agnews_rows, _gen_agnews, _score_label),
    Task("gsm8k", "openai/gsm8k", "main", "train", "test", _gsm8k_rows, _gen_gsm8k, _score_number),
):
    TASKS.register(_task.name)(_task)
