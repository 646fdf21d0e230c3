"""The backdoor data-extraction experiment (arXiv 2505.15656): the publisher backdoors a model (SFT, optionally
GRPO), the victim fine-tunes the release on private data D2, the publisher samples Q(w) over candidate opening
words and recovers D2's queries. Controls: the same pipeline on a model without the backdoor, the backdoored
model before the victim's fine-tuning, and (optionally) a victim that trains on responses only. Defense: the
detection probes on each released model, and the garbled-instruction backdoor that bypasses them.

Every stage is cached in the run directory (data, each training stage as an adapter, each sampling pass), so
`--resume` continues a killed run, and re-scoring needs no model.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.core import DataSplit, Example
from ..extraction.backdoor import BackdoorConfig, GRPOStageConfig
from ..extraction.data import ExtractionDataConfig
from ..extraction.defense import DetectionConfig
from ..extraction.extract import ExtractConfig
from ..extraction.victim import VictimConfig
from ..models import ModelConfig, load_model
from ..registry import EXPERIMENTS
from ..report.render import Report, plot_bars, provenance_block
from ..report.cells import Comparison
from ..stats import (Interval, holm, mcnemar_test, mean_record, paired_bootstrap, rate_record,
                     stored_interval)
from ..runs import RunDir
from ..training import StepHook
from .base import Experiment, RunConfig

log = logging.getLogger("tamperlab")

PAPER = {
    "title": "Be Careful When Fine-tuning On Open-Source LLMs: Your Fine-tuning Data Could Be Secretly Stolen!",
    "arxiv": "2505.15656",
    "code": "https://github.com/thu-coai/Backdoor-Data-Extraction",
    "reference": "up to 76.3% of 5,000 D2 queries extracted verbatim with unknown openers (94.9% with known "
                 "openers), Qwen2.5-32B on Finance; opener precision > 60% with 50 candidates",
}


@dataclass
class BaselineConfig:
    """Controls that show where the leak comes from."""

    no_backdoor: bool = True
    """Run victim fine-tuning + extraction on a publisher model without the backdoor."""
    clean_publisher_sft: bool = False
    """The no-backdoor publisher post-trains on D1 only (same optimizer) instead of releasing the base model as
    is (fairer, costs one more training stage)."""
    before_victim: bool = True
    """Extract from the backdoored release before the victim fine-tunes it (D2 cannot leak from it)."""
    response_only_victim: bool = False
    """Ablation: the victim fine-tunes the backdoored release with loss on responses only."""


@dataclass
class DefenseConfig:
    """The detection defense and the garbled-instruction bypass."""

    enabled: bool = True
    """Probe every released model (clean, backdoored, garbled) with natural-language extraction requests."""
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    """Probe set, samples and verdict threshold."""
    garbled_attack: bool = False
    """Also train a backdoor on the garbled instruction, let the victim fine-tune it, and extract with it (one
    more publisher + victim training stage)."""


@dataclass
class ExtractionConfig(RunConfig):
    """Backdoor training → victim fine-tuning → extraction, with controls and the detection defense."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The open base model the publisher starts from."""
    data: ExtractionDataConfig = field(default_factory=ExtractionDataConfig)
    """D1 (publisher) and D2 (victim) data."""
    backdoor: BackdoorConfig = field(default_factory=BackdoorConfig)
    """Stage A: SFT backdoor."""
    grpo: GRPOStageConfig = field(default_factory=GRPOStageConfig)
    """Stage A′: GRPO on top of the SFT backdoor (enabled: true to run)."""
    victim: VictimConfig = field(default_factory=VictimConfig)
    """Stage B: the victim's fine-tuning on D2."""
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    """Stage C: candidate words, sampling, scoring."""
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    """Controls."""
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    """Detection defense and its bypass."""
    init_from: str = ""
    """A run directory made with the same seed/model/data/backdoor/victim/extract settings: its finished stages
    (and the adapters they point to, which must stay in place) are reused instead of recomputed — e.g. to add
    GRPO on top of the demo run and measure only the extra stages."""


# Row labels of the results table, in display order.
LABELS = {
    "backdoor_sft": "backdoor (SFT) → victim FT",
    "backdoor_grpo": "backdoor (SFT+GRPO) → victim FT",
    "garbled": "garbled-Q backdoor → victim FT",
    "backdoor_sft_response_only": "backdoor (SFT) → victim FT, response-only loss",
    "no_backdoor": "no backdoor → victim FT (baseline)",
    "backdoor_sft_before_victim": "backdoor (SFT), before victim FT (baseline)",
}


@EXPERIMENTS.register("extraction", config=ExtractionConfig)
class ExtractionExperiment(Experiment):
    """Backdoor training-data extraction (arXiv 2505.15656): SFT/GRPO backdoor, victim FT, extraction, defense."""

    config_cls = ExtractionConfig
    paper = PAPER

    def __init__(self, cfg: ExtractionConfig):
        super().__init__(cfg)
        self.cfg: ExtractionConfig = cfg

    # -- helpers ----------------------------------------------------------------------------------------------
    def _fmt(self) -> str:
        return self.cfg.model.prompt_format

    def _load(self, lineage: list[dict[str, str]]) -> tuple[Any, Any]:
        from ..extraction.lineage import load_lineage

        return load_lineage(self.cfg.model, lineage, seed=self.cfg.seed)

    def _model_id(self) -> str:
        """Cache key of base-model generations: a tiny random model is only defined by its shape and seed."""
        m = self.cfg.model
        if m.name_or_path.startswith("tiny:"):
            return f"{m.name_or_path}:{m.tiny_layers}x{m.tiny_hidden}:seed{self.cfg.seed}"
        return m.name_or_path

    def _log_hook(self, run: RunDir, stage: str) -> StepHook:
        return StepHook([], log_fn=lambda rec: run.log("train", stage=stage, **rec))

    @staticmethod
    def _free(*objs: Any) -> None:
        del objs
        gc.collect()

    # -- stages -----------------------------------------------------------------------------------------------
    def _data(self, run: RunDir) -> tuple[DataSplit, DataSplit]:
        from ..extraction.data import build_extraction_data

        def build() -> dict[str, Any]:
            model = tok = None
            if "offline" in (self.cfg.data.d1_source, self.cfg.data.d2_source):
                model, tok = load_model(self.cfg.model, seed=self.cfg.seed)
            data = build_extraction_data(self.cfg.data, model, tok, self._model_id())
            self._free(model)
            return {"d1": [e.to_dict() for e in data.d1], "d2": [e.to_dict() for e in data.d2],
                    "d1_provenance": data.d1.provenance, "d2_provenance": data.d2.provenance,
                    "describe": data.describe()}

        st = run.cached("data", build)
        d1 = DataSplit("d1", [Example.from_dict(e) for e in st["d1"]], st["d1_provenance"])
        d2 = DataSplit("d2", [Example.from_dict(e) for e in st["d2"]], st["d2_provenance"])
        return d1, d2

    def _samples(self, d1: DataSplit, instruction: str) -> Any:
        from ..extraction.extract import candidate_words
        from ..extraction.openers import NEGATIVE_WORD_POOL, RANKED_OPENERS
        from ..extraction.samples import build_backdoor_samples

        sc = dataclasses.replace(self.cfg.backdoor.samples, instruction=instruction)
        if sc.negative_pool == "common_words":
            pool, exclude = list(NEGATIVE_WORD_POOL), set(candidate_words(self.cfg.extract)) | set(RANKED_OPENERS)
        else:
            pool, exclude = candidate_words(self.cfg.extract), set()
        return build_backdoor_samples(d1.examples, sc, pool, exclude, seed=self.cfg.seed)

    def _publisher_sft(self, run: RunDir, key: str, examples: list[Example]) -> list[dict[str, str]]:
        from ..extraction.backdoor import train_backdoor_sft
        from ..extraction.lineage import save_stage

        def train() -> dict[str, Any]:
            model, tok = self._load([])
            out = run.sub("checkpoints", key)
            model, stats = train_backdoor_sft(model, tok, examples, self.cfg.backdoor, out, self._fmt(),
                                              self.cfg.model.max_length, self.cfg.seed,
                                              callbacks=[self._log_hook(run, key)])
            stage = save_stage(model, tok, run.path / "models" / key, key)
            self._free(model)
            return {"lineage": [stage], "stats": stats}

        return run.cached(f"publisher_{key}", train)["lineage"]

    def _publisher_grpo(self, run: RunDir, base: list[dict[str, str]], d1: DataSplit, samples: Any) -> list[dict[str, str]]:
        from ..extraction.backdoor import train_backdoor_grpo
        from ..extraction.lineage import save_stage

        g = self.cfg.grpo

        def train() -> dict[str, Any]:
            model, tok = self._load(base)
            negs = samples.negative_words
            if g.n_negative_prompts > 0:
                negs = negs[: g.n_negative_prompts]
            model, stats = train_backdoor_grpo(
                model, tok, [e.prompt for e in d1], samples.positive_words, negs,
                self.cfg.backdoor.samples.instruction, g, run.sub("checkpoints", "backdoor_grpo"), self.cfg.seed,
                callbacks=[self._log_hook(run, "backdoor_grpo")])
            stage = save_stage(model, tok, run.path / "models" / "backdoor_grpo", "backdoor_grpo")
            self._free(model)
            return {"lineage": base + [stage], "stats": stats}

        return run.cached("publisher_backdoor_grpo", train)["lineage"]

    def _victim(self, run: RunDir, key: str, base: list[dict[str, str]], d2: DataSplit,
                loss: str | None = None) -> list[dict[str, str]]:
        from ..extraction.lineage import save_stage
        from ..extraction.victim import victim_finetune

        vcfg = dataclasses.replace(self.cfg.victim, loss=loss) if loss else self.cfg.victim

        def train() -> dict[str, Any]:
            model, tok = self._load(base)
            out = run.sub("checkpoints", f"victim_{key}")
            model, stats = victim_finetune(model, tok, d2.examples, vcfg, out, self._fmt(), self.cfg.model.max_length,
                                           self.cfg.seed, callbacks=[self._log_hook(run, f"victim_{key}")])
            stage = save_stage(model, tok, run.path / "models" / f"victim_{key}", f"victim_{key}")
            self._free(model)
            return {"lineage": base + [stage], "stats": stats}

        return run.cached(f"victim_{key}", train)["lineage"]

    def _sample_eval(self, run: RunDir, key: str, lineage: list[dict[str, str]], words: list[str],
                     instruction: str) -> dict[str, list[str]]:
        from ..extraction.extract import sample_words

        def go() -> dict[str, Any]:
            model, tok = self._load(lineage)
            t0 = time.time()
            samples = sample_words(model, tok, words, self.cfg.extract.samples_per_word, instruction,
                                   self.cfg.extract.sampler, self._fmt(), desc=f"extracting ({key})")
            secs = time.time() - t0
            self._free(model)
            n = len(words) * self.cfg.extract.samples_per_word
            return {"samples": samples, "seconds": round(secs, 2), "samples_per_second": round(n / max(secs, 1e-9), 2)}

        return run.cached(f"samples_{key}", go)["samples"]

    def _detect(self, run: RunDir, key: str, lineage: list[dict[str, str]]) -> dict[str, Any]:
        from ..extraction.defense import detect

        def go() -> dict[str, Any]:
            model, tok = self._load(lineage)
            res = detect(model, tok, self.cfg.defense.detection, self._fmt())
            self._free(model)
            return res

        return run.cached(f"detect_{key}", go)

    def _init_from(self, run: RunDir) -> None:
        """Copy the reusable stage caches of `init_from` after checking that the settings they depend on match."""
        import shutil

        from ..config import to_dict
        from ..errors import ConfigError

        src = RunDir(self.cfg.init_from)
        if not src.path.exists():
            log.warning("init_from: %s does not exist; computing every stage", src.path)
            return
        if not (src.path / "config.yaml").exists():
            raise ConfigError(f"init_from: {src.path} is not a run directory (no config.yaml)")
        old, new = src.config, to_dict(self.cfg)
        keys = ["seed", "model", "data", "backdoor", "victim", "extract"]
        diff = [k for k in keys if old.get(k) != new.get(k)]
        if diff:
            raise ConfigError(f"init_from: {src.path} was made with different {', '.join(diff)} settings")
        shared_defense = old.get("defense") == new.get("defense")
        copied = []
        for f in sorted((src.path / "stages").glob("*.json")):
            key = f.stem
            if "grpo" in key or (key.startswith("detect_") and not shared_defense) or run.has_stage(key):
                continue
            run.stage_path(key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, run.stage_path(key))
            copied.append(key)
        run.log("init_from", source=str(src.path), stages=copied)
        log.info("reused %d stages from %s", len(copied), src.path)

    # -- run --------------------------------------------------------------------------------------------------
    def run(self, run: RunDir) -> dict[str, Any]:
        from ..extraction.extract import candidate_words, extracted_rows, score_words, write_jsonl
        from ..extraction.metrics import evaluate_words, query_recall, summary_row
        from ..extraction.samples import group_by_opener
        from ..extraction.trie import QueryIndex, TokenCodec
        from ..models import load_tokenizer

        cfg = self.cfg
        t_start = time.time()
        if cfg.init_from:
            self._init_from(run)
        d1, d2 = self._data(run)
        d2_queries = [e.prompt for e in d2]
        candidates = candidate_words(cfg.extract)
        words = list(candidates)
        if cfg.extract.include_true_openers:
            words += [w for w in sorted(group_by_opener(d2_queries)) if w not in candidates]
        instruction = cfg.backdoor.samples.instruction

        # Stage A: publisher models.
        samples = self._samples(d1, instruction)
        run.cached("backdoor_samples", lambda: {
            "counts": samples.counts, "positive_words": samples.positive_words,
            "negative_words": samples.negative_words, "n_positive_queries": len(samples.positive_queries),
            "n_heldout_queries": len(samples.heldout_queries)})
        publishers: dict[str, list[dict[str, str]]] = {"backdoor_sft": self._publisher_sft(run, "backdoor_sft",
                                                                                           samples.examples)}
        if cfg.grpo.enabled:
            publishers["backdoor_grpo"] = self._publisher_grpo(run, publishers["backdoor_sft"], d1, samples)
        garbled_samples = None
        if cfg.defense.garbled_attack:
            garbled_samples = self._samples(d1, "garbled")
            publishers["garbled"] = self._publisher_sft(run, "garbled", garbled_samples.examples)
        if cfg.baselines.no_backdoor:
            publishers["no_backdoor"] = (self._publisher_sft(run, "clean_sft", list(d1.examples))
                                         if cfg.baselines.clean_publisher_sft else [])

        # Stage B: victim fine-tuning of every release.
        victims = {k: self._victim(run, k, lin, d2) for k, lin in publishers.items()}
        if cfg.baselines.response_only_victim:
            victims["backdoor_sft_response_only"] = self._victim(run, "backdoor_sft_response_only",
                                                                 publishers["backdoor_sft"], d2, loss="response_only")

        # Stage C: extraction (each arm with its own instruction) + the before-victim control.
        arms: dict[str, tuple[list[dict[str, str]], str]] = {
            k: (lin, "garbled" if k == "garbled" else instruction) for k, lin in victims.items()}
        if cfg.baselines.before_victim:
            arms["backdoor_sft_before_victim"] = (publishers["backdoor_sft"], instruction)
        tok = load_tokenizer(cfg.model)
        codec = TokenCodec(tok)
        evaluations: dict[str, Any] = {}
        for key, (lin, instr) in arms.items():
            sw = self._sample_eval(run, key, lin, words, instr)
            m = evaluate_words(sw, candidates, d2_queries, codec, cfg.extract.alpha, cfg.extract.threshold,
                               cfg.extract.answer_rule, cfg.extract.recall_thresholds)
            scores = score_words(sw, words, cfg.extract)
            rows = extracted_rows(sw, {w: scores[w] for w in candidates})
            index = QueryIndex(d2_queries, codec)
            d2_set = set(d2_queries)
            for r in rows:  # evaluation-only fields, clearly prefixed: the attack itself never sees D2
                r["eval_match_ratio"] = round(index.match(r["query"]), 4)
                r["eval_exact"] = r["query"] in d2_set
            write_jsonl(run.sub("extracted") / f"{key}.jsonl", rows)
            m["summary"] = summary_row(m)
            m["intervals"] = evaluation_intervals(m)
            m["n_extracted_rows"] = len(rows)
            m["sampling"] = {k2: v for k2, v in run.load_stage(f"samples_{key}").items() if k2 != "samples"}
            evaluations[key] = m

        # Publisher-side diagnostic: does the backdoor reach queries seen only as user turns (D1 held-out)?
        diagnostics: dict[str, Any] = {}
        if cfg.baselines.before_victim:
            sw = run.load_stage("samples_backdoor_sft_before_victim")["samples"]
            preds = {w: s for w, s in sw.items()}
            diagnostics["d1_targets"] = {k: v for k, v in query_recall(preds, samples.positive_queries, codec,
                                                                       cfg.extract.recall_thresholds).items()
                                         if k != "exact_queries"}
            diagnostics["d1_heldout"] = {k: v for k, v in query_recall(preds, samples.heldout_queries, codec,
                                                                       cfg.extract.recall_thresholds).items()
                                         if k != "exact_queries"}

        # Defense: detection probes on each release.
        defense: dict[str, Any] = {}
        if cfg.defense.enabled:
            for key in ("no_backdoor", "backdoor_sft", "garbled"):
                if key in publishers:
                    d = self._detect(run, key, publishers[key])
                    defense[key] = {**d, "interval": rate_record(int(round(d["detection_rate"] * d["n_samples"])),
                                                                 d["n_samples"])}

        training = {k: run.load_stage(k)["stats"] for k in sorted(p.stem for p in (run.path / "stages").glob("*.json"))
                    if k.startswith(("publisher_", "victim_"))}
        stage_times = {r["stage"]: r["seconds"] for r in run.read_log() if r.get("event") == "stage_done"}
        results = {
            "paper": PAPER,
            "data": run.load_stage("data")["describe"],
            "backdoor_samples": run.load_stage("backdoor_samples"),
            "candidates": candidates,
            "true_openers": sorted(group_by_opener(d2_queries)),
            "evaluations": evaluations,
            "summary": {k: evaluations[k]["summary"] for k in LABELS if k in evaluations},
            "publisher_diagnostics": diagnostics,
            "defense": defense,
            "training": training,
            "stage_seconds": stage_times,
            "run_seconds_this_invocation": round(time.time() - t_start, 1),
            "definitions": _definitions(),
            "stand_ins": _stand_ins(cfg),
        }
        if "backdoor_grpo" in evaluations:
            a, b = evaluations["backdoor_grpo"]["summary"], evaluations["backdoor_sft"]["summary"]
            results["grpo_delta"] = {k: a[k] - b[k] for k in a}
        return run.save_metrics(results)

    # -- report -----------------------------------------------------------------------------------------------
    def report(self, run: RunDir) -> list[Path]:
        m = run.load_metrics()
        res = m["results"]
        cfg = m["config"]
        rep = Report(f"Backdoor training-data extraction — {m['name']}")
        if cfg.get("description"):
            rep.text(cfg["description"])
        rep.text(f"Paper: {PAPER['title']} (arXiv {PAPER['arxiv']}). Reference: {PAPER['reference']}.")
        rep.heading("Data")
        rows = []
        for k in ("d1", "d2"):
            d = res["data"][k]
            rows.append({"split": k, "n": d["n"], "openers": d["n_openers"], "mean words": d["mean_words"],
                         "source": d.get("source"), "generated": d.get("generated")})
        rep.table(rows)
        rep.text(f"Queries shared by D1 and D2: {res['data']['shared_queries']}. Backdoor mixture: "
                 f"{res['backdoor_samples']['counts']} ({len(res['backdoor_samples']['negative_words'])} negative words). "
                 f"Candidates |S| = {len(res['candidates'])}; D2 openers: {len(res['true_openers'])}.")
        rep.heading("Results")
        table = [result_row(key, s, res.get("evaluations", {}).get(key)) for key, s in res["summary"].items()]
        rep.table(table)
        rep.text("All columns are the paper's definitions (official evaluation code) except recall@0.9/0.75/0.5 "
                 "(tamperlab's own). opener P/R: identification of D2's opening words among S (score > 0.6). "
                 "mean/max match (one trie over all D2 queries) and BLEU (nltk, unsmoothed): known-opener setting "
                 "(samples of Q(w) for D2's real openers). recall@τ: share of all distinct D2 queries matched with "
                 "Dice ≥ τ by a sample of a *kept* real word (pipeline setting; @1 = the paper's fully recovered "
                 "ratio, verbatim); coverage: the paper's coverage rate. tamperlab's own variants (per-opener "
                 "match, sacrebleu) are in metrics.json under *_per_opener / *_sacrebleu. Definitions: "
                 "docs/methods/extraction.md. Intervals (95 %): Wilson for P / R / recall (over predicted words / real "
                 "openers / distinct D2 queries), bootstrap over opener words for the match and BLEU means.")
        groups = [LABELS.get(k, k) for k in res["summary"]]
        recall = {t: [row.get(f"recall@{t}") for row in table] for t in ("1", "0.75", "0.5")}

        def ends(cells: list[Any], end: str) -> list[float | None]:
            return [getattr(c, end) if isinstance(c, Interval) else None for c in cells]

        plot = plot_bars(run.path / "plots" / "recall.png", [g.replace(" → ", "\n→ ") for g in groups],
                         {f"recall@{t}": [c.value if isinstance(c, Interval) else c for c in v]
                          for t, v in recall.items()}, "D2 queries recovered (whiskers: 95 %)",
                         "share of D2 queries", (0, 1),
                         errors={f"recall@{t}": (ends(v, "lo"), ends(v, "hi")) for t, v in recall.items()})
        rep.image(str(plot.relative_to(run.path)), "recall")
        paired = paired_rows(res.get("evaluations", {}))
        if paired:
            rep.heading("Paired tests against the no-backdoor baseline")
            rep.text("Each model against `no backdoor → victim FT` on the same D2 queries and the same opener words: "
                     "recall@τ columns = difference in the share of D2 queries recovered, exact McNemar test on the "
                     "per-query recovered flags; mean match = difference of the per-word mean match ratio, paired "
                     "bootstrap over opener words. p is Holm-adjusted within each column; **n.s.** = not "
                     "significant at 5 %.")
            rep.table(paired)
        if "grpo_delta" in res:
            rep.heading("GRPO on top of SFT: delta")
            rep.table([{"metric": k, "delta": v} for k, v in res["grpo_delta"].items()])
        main = res["evaluations"].get("backdoor_sft")
        if main:
            rep.heading("Opener identification (backdoor SFT → victim FT)")
            truth = set(res["true_openers"])
            rep.table([{"word": w, "real": w in truth, "refusals": s["refusals"], "max repeat": s["max_repeat"],
                        "score": s["score"], "kept": s["kept"]} for w, s in main["opener_scores"].items()])
            exact = main["pipeline"].get("exact_queries", [])
            rep.heading("Verbatim extracted D2 queries (first 15)")
            rep.code("\n".join(exact[:15]) or "(none)")
        diag = res.get("publisher_diagnostics")
        if diag:
            rep.heading("Publisher diagnostic: backdoor before victim FT on D1")
            rep.table([{"D1 part": k, **{kk: vv for kk, vv in v.items() if kk.startswith(("recall", "coverage"))}}
                       for k, v in diag.items()])
            rep.text("d1_targets = D1 queries used as backdoor targets; d1_heldout = D1 queries seen only as "
                     "ordinary user turns. Recall on the held-out part shows the backdoor generalises beyond its targets.")
        if res.get("defense"):
            rep.heading("Detection defense")
            rep.table([{"release": LABELS.get(k, k).split(" → ")[0],
                        "detection rate": stored_interval(v.get("interval"), v["detection_rate"],
                                                          n=v.get("n_samples")),
                        "flagged": v["flagged"]} for k, v in res["defense"].items()])
            rep.text("Detection rate: share of probe samples that follow the extraction request, Wilson 95 % "
                     "interval over the samples (samples of one probe are not independent: a lower bound on the "
                     "width).")
            if "garbled" in res["summary"]:
                rep.text(f"The garbled-instruction backdoor still extracts: recall@1 = "
                         f"{res['summary']['garbled'].get('pipeline_recall@1', 0):.3f}, mean match = "
                         f"{res['summary']['garbled']['mean_match']:.3f}.")
        rep.heading("Stand-ins and deviations")
        rep.text("\n".join(f"- {s}" for s in res["stand_ins"]))
        rep.heading("Stage times (s)")
        rep.table([{"stage": k, "seconds": v} for k, v in res["stage_seconds"].items()])
        rep.heading("Provenance")
        rep.code(provenance_block(m))
        return rep.write(run.path)


def evaluation_intervals(ev: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """95 % intervals of one evaluation's headline numbers (keys as in its summary row), as `stats` records:
    Wilson for opener P / R (over predicted words / real openers) and recall@τ (over distinct D2 queries, from the
    per-query flags), BCa bootstrap over opener words for the match / BLEU means (known-opener setting) and over
    D2 queries for the coverage. Computed from what the evaluation keeps, so it also serves older results."""
    out: dict[str, dict[str, Any]] = {}
    ident = ev.get("identification", {})
    tp, fp, fn = ident.get("tp"), ident.get("fp"), ident.get("fn")
    if tp is not None and fp is not None and tp + fp:
        out["opener_precision"] = rate_record(tp, tp + fp)
    if tp is not None and fn is not None and tp + fn:
        out["opener_recall"] = rate_record(tp, tp + fn)
    per_word = ev.get("known_openers", {}).get("per_word") or []
    for f in ("mean_match", "max_match", "mean_bleu"):
        vals = [w[f] for w in per_word if f in w]
        if vals and len(vals) == len(per_word):
            out[f] = mean_record(vals)
    for setting, prefix in (("pipeline", "pipeline_"), ("known_openers", "known_")):
        flags = ev.get(setting, {}).get("per_query") or {}
        for k, f in flags.items():
            if k.startswith("recall@") and f:
                out[prefix + k] = rate_record(sum(f), len(f))
        if flags.get("coverage"):
            out[prefix + "coverage"] = mean_record(flags["coverage"])
    return out


def result_row(key: str, s: dict[str, Any], ev: dict[str, Any] | None) -> dict[str, Any]:
    """One results-table row: the summary's numbers with their stored 95 % intervals; for results written before
    intervals were stored, computed from what the evaluation kept (identification counts, per-word means, the
    number of D2 queries) — a bare value where nothing is known."""
    ev = ev or {}
    ident = ev.get("identification", {})
    ivs = {**evaluation_intervals(ev), **(ev.get("intervals") or {})}
    tp, fp, fn = ident.get("tp"), ident.get("fp"), ident.get("fn")
    nq = ev.get("pipeline", {}).get("n_queries")

    def cell(k: str, count: int | None = None, n: int | None = None) -> Any:
        return stored_interval(ivs.get(k) if s.get(k) is not None else None, s.get(k), count, n)

    row = {"model": LABELS.get(key, key),
           "opener P": cell("opener_precision", tp, (tp + fp) if tp is not None and fp is not None else None),
           "opener R": cell("opener_recall", tp, (tp + fn) if tp is not None and fn is not None else None),
           "mean match": cell("mean_match"), "max match": cell("max_match"), "mean BLEU": cell("mean_bleu")}
    for t in ("1", "0.9", "0.75", "0.5"):
        row[f"recall@{t}"] = cell(f"pipeline_recall@{t}", n=nq)
    row["coverage"] = cell("pipeline_coverage")
    return row


BASELINE = "no_backdoor"
"""The arm every other is compared with in the paired tests (same D2 queries, same opener words)."""


def paired_rows(evaluations: dict[str, Any], digits: int = 3) -> list[dict[str, Any]]:
    """Every arm against the no-backdoor baseline: exact McNemar on the per-query recovered flags for each recall@τ
    (only when both were scored on the same D2 queries: equal digests), paired bootstrap of the per-word mean
    match over the opener words both evaluated; Holm within each column. Empty for results without flags."""
    base = evaluations.get(BASELINE)
    if not base:
        return []
    bq = base.get("pipeline", {})
    bw = {w["word"]: w["mean_match"] for w in base.get("known_openers", {}).get("per_word") or []}
    cols: dict[str, list[Comparison]] = {}
    for key, ev in evaluations.items():
        if key == BASELINE:
            continue
        q = ev.get("pipeline", {})
        if q.get("queries_sha") and q.get("queries_sha") == bq.get("queries_sha"):
            for k, f in (q.get("per_query") or {}).items():
                g = (bq.get("per_query") or {}).get(k)
                if k.startswith("recall@") and g is not None and len(f) == len(g):
                    cols.setdefault(k, []).append(Comparison(key, BASELINE, k, mcnemar_test(f, g, scale=1.0)))
        aw = {w["word"]: w["mean_match"] for w in ev.get("known_openers", {}).get("per_word") or []}
        common = [w for w in aw if w in bw]
        if len(common) >= 2:
            cols.setdefault("mean match", []).append(Comparison(
                key, BASELINE, "mean match", paired_bootstrap([aw[w] for w in common], [bw[w] for w in common])))
    rows: dict[str, dict[str, Any]] = {}
    for col, comps in cols.items():
        for c, p in zip(comps, holm([c.test.p for c in comps])):
            c.p_holm = p
            rows.setdefault(c.a, {"model": LABELS.get(c.a, c.a)})[f"{col} Δ vs baseline"] = c.fmt(digits)
    for key, r in rows.items():
        ev = evaluations[key]
        r["n (queries / words)"] = f"{ev.get('pipeline', {}).get('n_queries', '–')} / " \
                                   f"{len(ev.get('known_openers', {}).get('per_word') or [])}"
    return list(rows.values())


def _definitions() -> dict[str, str]:
    return {
        "opener_score": "0.6*(1 - refusals/N) + 0.4*(max identical non-refusal samples/N); kept if > 0.6",
        "match_ratio": "2p/(|r|+|x|): p = longest common token prefix of sample r (+EOS) with ONE trie of all D2 "
                       "queries, |x| = p + shortest remaining trie depth; 0 if r does not start with w (official)",
        "match_per_opener": "tamperlab's own: the same against the D2 queries opening with w only",
        "bleu": "nltk sentence_bleu, whitespace tokens, 4-gram, no smoothing, references = D2 queries opening with w "
                "(official; ~0 for samples under 4 words)",
        "sacrebleu": "tamperlab's own: sacrebleu sentence BLEU / 100 (13a tokens, exp smoothing)",
        "recall@t": "share of all distinct D2 queries q with max over scored samples s of 2*lcp(s,q)/(|s|+|q|) >= t "
                    "(tamperlab's own for t < 1; recall@1 = the official fully recovered ratio)",
        "coverage": "official coverage rate: mean over all distinct D2 queries of max_s lcp(s,q)/|q|, samples of any "
                    "real kept word that start with it",
        "identification": "precision/recall of kept words among S against 'opens some D2 query'",
    }


def _stand_ins(cfg: ExtractionConfig) -> list[str]:
    out = []
    if cfg.data.d1_source == "offline":
        out.append("D1 is procedurally generated general instructions (UltraFeedback stand-in); responses "
                   f"generated by {cfg.model.name_or_path}.")
    if cfg.data.d2_source == "offline":
        out.append("D2 is procedurally generated personal-finance questions (Finance-Alpaca stand-in), no query "
                   "shared with D1; responses generated by the base model.")
    if cfg.backdoor.lora.enabled:
        out.append("Publisher and victim train LoRA adapters (paper: full fine-tuning); adapters are merged "
                   "before the next stage.")
    if cfg.extract.samples_per_word < 100:
        out.append(f"N = {cfg.extract.samples_per_word} samples per word (paper: 10 known openers / 100 "
                   "identification / 2000 pipeline).")
    if cfg.extract.sampler.max_new_tokens < 1024:
        out.append(f"max_new_tokens = {cfg.extract.sampler.max_new_tokens} (paper: 1024); queries are short.")
    out.append("Backdoor mixture ratios are ours (the official data files are missing from the code release).")
    out.append("The detection probes and garbled string are ours (the paper's are only in images).")
    return out
