"""Text data for the EaaS experiments: real hub loaders and offline generated stand-ins.

Real loaders (what users run where the Hugging Face Hub is reachable) follow EmbMarker's DATA_INFO:
SST2 (`glue/sst2`, field `sentence`), AG News (`ag_news`, `text`), Enron Spam (`SetFit/enron_spam`, `subject`),
MIND (the `news.tsv` file of MIND, label = category, text = title; a local path, since MIND is not on the hub).
Offline they fail with a ResourceError that says so.

Generated stand-ins (`gen_topic`, `gen_sentiment`, `gen_spam`) are procedural classification sets with exact
labels: a class-specific templated clause plus a tail of "filler" words drawn from wordfreq's English frequency
list, weighted by frequency. The filler makes ordinary words (and therefore EmbMarker trigger words chosen from a
wordfreq band) occur at rates that follow real English word frequencies, independently of the label.
`suffix_pool` generates encyclopedic sentences on unrelated subjects: the stand-in for SPA's WikiText-103 pool.
Everything generated is labelled `generated: true` in its provenance.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, ResourceError


@dataclass
class TextTask:
    """A labelled text-classification split."""

    name: str
    texts: list[str]
    labels: list[int]
    label_names: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)


# ---------------------------------------------------------------------------------------------------------------
# Filler vocabulary from wordfreq
# ---------------------------------------------------------------------------------------------------------------
_STOP = set("""the and for that this with you not are was but have has had they his her she him from what all
were when your can said there their will one would about which out who them then than been its into only could
our more some very just also any how these over other like such most did does doing done being because while
where here those each both few own same too off why yes yet nor per via upon onto shall may might must""".split())


@lru_cache(maxsize=4)
def filler_vocabulary(top_n: int = 8000, exclude: frozenset[str] = frozenset()) -> tuple[list[str], list[float]]:
    """Content-ish English words (alphabetic, ≥3 letters, not stop words) with their wordfreq frequencies."""
    import wordfreq

    words, weights = [], []
    for w in wordfreq.top_n_list("en", top_n):
        if re.fullmatch(r"[a-z]{3,}", w) and w not in _STOP and w not in exclude:
            words.append(w)
            weights.append(wordfreq.word_frequency(w, "en"))
    return words, weights


def _filler(rng: random.Random, lo: int, hi: int) -> str:
    words, weights = filler_vocabulary(exclude=_LEXICON_WORDS)
    return " ".join(rng.choices(words, weights=weights, k=rng.randint(lo, hi)))


# ---------------------------------------------------------------------------------------------------------------
# Generated tasks
# ---------------------------------------------------------------------------------------------------------------
_TOPIC = {
    "world": dict(
        subj=["the prime minister", "rebel forces", "the united nations", "the foreign ministry", "peace envoys",
              "the president", "opposition leaders", "border guards", "the parliament", "diplomats"],
        verb=["condemned", "signed", "rejected", "negotiated", "debated", "announced sanctions over",
              "called for talks on", "withdrew from", "voted on", "protested against"],
        obj=["the ceasefire agreement", "the disputed election", "refugee camps near the border",
             "the nuclear treaty", "military operations in the region", "the embassy closure",
             "humanitarian aid convoys", "the coalition government", "the territorial dispute",
             "a new constitution"]),
    "sports": dict(
        subj=["the striker", "the home team", "the coach", "the defending champion", "the goalkeeper",
              "the rookie quarterback", "the tennis star", "the national squad", "the sprinter", "the captain"],
        verb=["scored twice in", "lost", "clinched", "was injured during", "celebrated", "dominated",
              "was suspended for", "trained hard for", "qualified for", "retired after"],
        obj=["the championship final", "the league derby", "the olympic trials", "the grand slam semifinal",
             "the world cup qualifier", "the playoff series", "the season opener", "the marathon",
             "the penalty shootout", "the title match"]),
    "business": dict(
        subj=["the central bank", "shareholders", "the retail chain", "the airline", "investors",
              "the oil company", "the automaker", "the startup", "analysts", "the insurance firm"],
        verb=["reported quarterly profits from", "cut jobs after", "raised interest rates amid",
              "acquired", "warned about", "posted losses on", "sold shares of", "expanded", "restructured",
              "forecast growth in"],
        obj=["the merger deal", "weak consumer spending", "the stock market rally", "rising inflation",
             "the bond market", "a rival supplier", "its overseas factories", "the quarterly earnings",
             "the takeover bid", "the retail sector"]),
    "sci_tech": dict(
        subj=["researchers", "the software company", "astronomers", "the chip maker", "engineers",
              "the space agency", "biologists", "the smartphone maker", "hackers", "physicists"],
        verb=["unveiled", "discovered", "patched", "launched", "tested", "released an update to",
              "published a study on", "built a prototype of", "detected", "designed"],
        obj=["a faster processor", "a distant exoplanet", "the operating system", "a quantum computer",
             "the satellite", "a security vulnerability", "gene editing tools", "the mobile app",
             "a new battery chemistry", "the neural network"]),
}
_SENT = {
    "negative": dict(
        adj=["dull", "boring", "clumsy", "tedious", "awful", "lifeless", "predictable", "painful",
             "shallow", "disappointing", "messy", "forgettable"],
        lead=["the film is", "this movie feels", "the plot is", "the acting is", "the script seems",
              "the story turns", "the direction is", "every scene feels"],
        tail=["and a waste of time", "from start to finish", "despite a good cast", "and nobody should bother",
              "with jokes that never land", "and the ending drags"]),
    "positive": dict(
        adj=["brilliant", "moving", "delightful", "gripping", "charming", "superb", "funny", "beautiful",
             "touching", "clever", "thrilling", "wonderful"],
        lead=["the film is", "this movie feels", "the plot is", "the acting is", "the script seems",
              "the story turns", "the direction is", "every scene feels"],
        tail=["and worth every minute", "from start to finish", "with a fantastic cast", "and deserves an award",
              "with jokes that always land", "and the ending soars"]),
}
_SPAM = {
    "ham": dict(
        lead=["meeting notes for", "draft agenda for", "updated schedule for", "question about", "follow up on",
              "minutes from", "budget review for", "contract comments on"],
        obj=["the gas pipeline project", "tomorrow's trading call", "the quarterly forecast", "the legal review",
             "the power plant deal", "the team offsite", "the risk report", "the regulatory filing"]),
    "spam": dict(
        lead=["claim your free", "limited offer on", "act now to get", "cheap discount", "you have won",
              "exclusive deal for", "lose weight with", "urgent winner notice for"],
        obj=["viagra pills", "a cash prize", "mortgage rates", "replica watches", "a casino bonus",
             "online pharmacy meds", "a lottery jackpot", "stock tips"]),
}


def _lexicon_words() -> frozenset[str]:
    words: set[str] = set()
    for table in (_TOPIC, _SENT, _SPAM):
        for spec in table.values():
            for vals in spec.values():
                for v in vals:
                    words.update(re.findall(r"[a-z]+", v.lower()))
    return frozenset(words)


_LEXICON_WORDS = _lexicon_words()


def _gen_topic(rng: random.Random, label: int, names: list[str]) -> str:
    s = _TOPIC[names[label]]
    # A third of the texts borrow subject and verb from another class, so only the object names the topic:
    # the task is not trivially separable and embedding quality shows in the downstream accuracy.
    other = _TOPIC[rng.choice(names)] if rng.random() < 0.35 else s
    return f"{rng.choice(other['subj'])} {rng.choice(other['verb'])} {rng.choice(s['obj'])} {_filler(rng, 3, 8)}"


def _gen_sentiment(rng: random.Random, label: int, names: list[str]) -> str:
    s = _SENT[names[label]]
    return (f"{rng.choice(s['lead'])} {rng.choice(s['adj'])} {_filler(rng, 2, 6)} {rng.choice(s['tail'])} "
            f"{_filler(rng, 1, 4)}")


def _gen_spam(rng: random.Random, label: int, names: list[str]) -> str:
    s = _SPAM[names[label]]
    return f"{rng.choice(s['lead'])} {rng.choice(s['obj'])} {_filler(rng, 3, 8)}"


_GENERATORS: dict[str, tuple[list[str], Callable[[random.Random, int, list[str]], str], str]] = {
    "gen_topic": (list(_TOPIC), _gen_topic, "AG News"),
    "gen_sentiment": (list(_SENT), _gen_sentiment, "SST2"),
    "gen_spam": (list(_SPAM), _gen_spam, "Enron Spam"),
}


def generated_task(name: str, n: int, seed: int, split: str = "train") -> TextTask:
    """`n` generated labelled texts, classes balanced round-robin; different splits use disjoint seeds."""
    if name not in _GENERATORS:
        raise ConfigError(f"unknown generated task {name!r} (known: {', '.join(_GENERATORS)})")
    names, gen, stands_for = _GENERATORS[name]
    rng = random.Random(f"{name}/{split}/{seed}")
    texts, labels, seen = [], [], set()
    tries = 0
    while len(texts) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ResourceError(f"{name}: could not generate {n} distinct texts")
        label = len(texts) % len(names)
        t = gen(rng, label, names)
        if t in seen:
            continue
        seen.add(t)
        texts.append(t)
        labels.append(label)
    order = list(range(n))
    rng.shuffle(order)
    return TextTask(name, [texts[i] for i in order], [labels[i] for i in order], names,
                    provenance={"source": f"procedurally generated (stand-in for {stands_for})", "generated": True,
                                "split": split, "seed": seed, "n": n})


# ---------------------------------------------------------------------------------------------------------------
# Real hub loaders
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubSpec:
    path: str
    config: str | None
    text_field: str
    label_field: str
    splits: dict[str, str]


HUB_TASKS: dict[str, HubSpec] = {
    "sst2": HubSpec("glue", "sst2", "sentence", "label", {"train": "train", "test": "validation"}),
    "ag_news": HubSpec("ag_news", None, "text", "label", {"train": "train", "test": "test"}),
    "enron_spam": HubSpec("SetFit/enron_spam", None, "subject", "label", {"train": "train", "test": "test"}),
}


def hub_task(name: str, split: str, n: int, seed: int, loader: Callable[..., Any] | None = None) -> TextTask:
    """Load a real task through `datasets` (`loader` is injectable for tests); sample `n` rows with `seed`."""
    spec = HUB_TASKS[name]
    if loader is None:
        from ..data.hub import load_dataset as loader  # type: ignore[no-redef]  # fixtures in smoke mode
    try:
        ds = loader(spec.path, spec.config, split=spec.splits[split])
    except Exception as e:
        raise ResourceError(
            f"cannot load dataset {name!r} ({spec.path}{'/' + spec.config if spec.config else ''}) from the "
            f"Hugging Face Hub: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}. Offline, use a "
            f"generated task (gen_topic, gen_sentiment, gen_spam)."
        ) from None
    rows = list(range(len(ds)))
    random.Random(seed).shuffle(rows)
    texts, labels = [], []
    for i in rows:
        t = ds[i][spec.text_field]
        if isinstance(t, str) and t.strip():
            texts.append(t.strip())
            labels.append(int(ds[i][spec.label_field]))
        if len(texts) >= n:
            break
    feat = getattr(ds, "features", {}).get(spec.label_field) if hasattr(ds, "features") else None
    names = list(getattr(feat, "names", []) or [str(i) for i in sorted(set(labels))])
    return TextTask(name, texts, labels, names, provenance={"source": f"hf:{spec.path}"
                                                            + (f"/{spec.config}" if spec.config else ""),
                                                            "generated": False, "split": split, "seed": seed,
                                                            "n": len(texts)})


def mind_task(path: str | Path, split: str, n: int, seed: int) -> TextTask:
    """MIND news: `news.tsv` (id, category, subcategory, title, …); label = category, text = title."""
    p = Path(path)
    if not p.is_file():
        raise ResourceError(f"MIND news file not found: {p} (download MIND and pass data.mind_path)")
    rows = []
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ResourceError(f"data.mind_path: {p} is not UTF-8 text (byte {e.start})") from None
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 4 and parts[3].strip():
            rows.append((parts[3].strip(), parts[1]))
    if len(rows) < 2:
        raise ResourceError(f"data.mind_path: {p} has {len(rows)} news rows (MIND news.tsv: tab-separated id, "
                            "category, subcategory, title, ...)")
    cats = sorted({c for _, c in rows})
    rng = random.Random(f"mind/{seed}")
    rng.shuffle(rows)
    # Deterministic disjoint splits: the last 20% is test.
    cut = int(0.8 * len(rows))
    part = rows[:cut] if split == "train" else rows[cut:]
    part = part[:n]
    return TextTask("mind", [t for t, _ in part], [cats.index(c) for _, c in part], cats,
                    provenance={"source": f"file:{p}", "generated": False, "split": split, "seed": seed,
                                "n": len(part)})


TASK_NAMES = sorted([*_GENERATORS, *HUB_TASKS, "mind"])


def load_task(name: str, split: str, n: int, seed: int, mind_path: str = "") -> TextTask:
    if split not in ("train", "test"):
        raise ConfigError(f"split must be train or test, got {split!r}")
    if name in _GENERATORS:
        return generated_task(name, n, seed, split)
    if name in HUB_TASKS:
        return hub_task(name, split, n, seed)
    if name == "mind":
        if not mind_path:
            raise ConfigError("task 'mind' needs data.mind_path (MIND's news.tsv; it is not on the hub)")
        return mind_task(mind_path, split, n, seed)
    raise ConfigError(f"unknown task {name!r} (known: {', '.join(TASK_NAMES)})")


# ---------------------------------------------------------------------------------------------------------------
# SPA suffix pool (stand-in for WikiText-103 lines)
# ---------------------------------------------------------------------------------------------------------------
_POOL = dict(
    thing=["the river", "the cathedral", "the volcano", "the village", "the railway line", "the monastery",
           "the glacier", "the orchestra", "the fern", "the beetle", "the dialect", "the lighthouse", "the comet",
           "the castle", "the symphony", "the moss", "the canal", "the desert lizard", "the opera", "the reef"],
    kind=["a medieval settlement", "a species of flowering plant", "a baroque composition", "a coastal landmark",
          "a sedimentary formation", "an ancient trade route", "a nocturnal insect", "a gothic building",
          "a minor planet", "a regional language", "a freshwater lake", "a folk tradition"],
    where=["in northern portugal", "on the baltic coast", "in the andes", "near the danube delta",
           "in southern india", "on a remote pacific island", "in the scottish highlands", "in central anatolia",
           "along the nile valley", "in the alpine foothills"],
    fact=["was first described in the eighteenth century", "is known for its limestone arches",
          "appears in several folk songs", "was rebuilt after a fire", "flowers only in early spring",
          "has a distinctive spiral pattern", "was mapped by early explorers", "feeds mainly on lichens",
          "is celebrated with an annual festival", "was carved from local granite"],
)


def suffix_pool(n: int, seed: int) -> list[str]:
    """`n` distinct encyclopedic sentences, unrelated to the task topics (the SPA perturbation pool)."""
    rng = random.Random(f"suffix_pool/{seed}")
    out, seen = [], set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ResourceError(f"could not generate {n} distinct pool sentences")
        s = (f"{rng.choice(_POOL['thing'])} is {rng.choice(_POOL['kind'])} {rng.choice(_POOL['where'])} that "
             f"{rng.choice(_POOL['fact'])} {_filler(rng, 1, 4)}")
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out
