"""Smoke mode: run any recipe — the 7B GPU paper recipes included — end to end on CPU in seconds.

`tamperlab run RECIPE --smoke` loads the recipe as usual, then `apply` rewrites its typed config with one walk over
the config dataclasses (and the component configs behind `params` dicts):

* every model → a random-init `tiny:<family>` of the same family (llama / qwen2 / mistral, decided from the name,
  since the hub is unreachable), with the real SmolLM2 tokenizer;
* every training stage → 2 optimizer steps at a global batch ≤ 2 (split over the processes of a launch); every
  data size, evaluation size and generation length → a handful (`RULES`);
* hub datasets → their schema fixtures (`data/fixtures/`, served by `data.hub.fixtures_only`), so the paper-scale
  loaders and row mappings run, not the offline packs;
* model judges (beaver-dam, llama-guard) → a tiny random model of the same interface (`JUDGE_STAND_INS`);
* the run name → `<name>-smoke`, so a real run is never overwritten; `smoke: true` in config.yaml, metrics.json
  and at the top of the report. The numbers of a smoke run are meaningless: it proves the code path runs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator

SMOKE_STEPS = 2
"""Optimizer steps of every training stage in smoke mode."""
SMOKE_NEW_TOKENS = 8
"""Upper bound on new tokens of any generation in smoke mode."""
SUFFIX = "-smoke"

Rule = Callable[[Any, Any], Any]
"""(current value, the config object) → smoke value."""


def cap(k: int) -> Rule:
    """At most k (0 keeps meaning "off"/"all" where a field uses it so; min keeps ≤ relations between fields)."""
    return lambda v, _o: v if v is None else min(v, k)


def limit(k: int) -> Rule:
    """At most k, also where 0 means "no limit" (the whole vocabulary, no cap)."""
    return lambda v, _o: k if v == 0 else min(v, k)


def to(value: Any) -> Rule:
    return lambda _v, _o: value


SMOKE_GLOBAL_BATCH = 2
"""Largest global training batch in smoke mode (per process: this ÷ the number of processes, at least 1)."""


def _processes() -> int:
    from .distributed import launched_world_size

    return max(1, launched_world_size())


def _batch_per_process() -> int:
    return max(1, SMOKE_GLOBAL_BATCH // _processes())


def per_process_batch(v: int | None, _o: Any) -> int | None:
    """A training batch (per process) → at most SMOKE_GLOBAL_BATCH ÷ processes, so that a smoke run under
    `accelerate launch` trains on the global batches of the 1-process smoke run and the two can be compared. A
    batch of 1 stays 1 (nothing smaller exists), so its global batch grows with the processes."""
    if v is None:
        return v
    return min(v, _batch_per_process())


def per_hundred(v: int, _o: Any) -> int:
    """Sweep sizes (attack n = 100 … 500) shrink to 1 … 5: still distinct and ordered, so tables keep columns."""
    return max(1, math.ceil(v / 100))


def _steps(v: list[int], _o: Any) -> list[int]:
    return [SMOKE_STEPS] if v else []  # one trajectory point, at the last step


def _sweep_ends(v: list[Any], _o: Any) -> list[Any]:
    """Attack sweeps (n = 100 … 500, p = 0 … 25%) → their first and last setting per (kind, task): every code path
    and a two-point curve remain, at a fraction of the cells."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for a in v:
        groups.setdefault((getattr(a, "kind", a.key), a.task if getattr(a, "uses_task", False) else ""), []).append(a)
    keep = {id(x) for g in groups.values() for x in (g[0], g[-1])}
    return [a for a in v if id(a) in keep]


def _ends(v: list[Any], _o: Any) -> list[Any]:
    """Study variants → the first and the last (each is a whole sub-run; all of them are still validated)."""
    return v if len(v) <= 2 else [v[0], v[-1]]


def _one_target_each(v: list[Any], o: Any) -> list[Any]:
    """Fingerprints × removals → every removal on one fingerprint, round robin: each removal's and each
    fingerprint's code path still runs, in a third of the cells."""
    names = [f.name for f in o.fingerprints]
    for i, r in enumerate(v):
        r.targets = (r.targets or names[i % len(names):] + names[: i % len(names)])[:1]
    return v


def _label_first(v: str, o: Any) -> str:
    return v or o.key  # freeze the size-derived label (harmful-n100) before n shrinks


def _init_from(v: str, _o: Any) -> str:
    return smoke_name(v) if v else v


def _monitor(v: int, _o: Any) -> int:
    return min(v, 1)


def _tiny_family(v: str, _o: Any) -> str:
    return "tiny:" + model_family(v)


def _one_epoch(v: list[float], _o: Any) -> list[float]:
    """Swept epoch counts → at most 1 each (a tiny dataset × 20 epochs is 20 steps per trial)."""
    return sorted({min(float(e), 1.0) for e in v})


def _each_at_most(k: int) -> Rule:
    """A swept list of sizes → each value capped at k, duplicates merged (trials keep the smoke budget)."""
    return lambda v, _o: sorted({min(x, k) for x in v})


def _two_seeds(v: list[int], _o: Any) -> list[int]:
    """`seeds: [0, 1, 2]` → [0, 1]: two seeds still run the per-seed layout and the aggregation over seeds (one
    would turn a repeated run into a plain one), without a grid × 3 seeds' hundreds of stages."""
    return v[:2]


def _judge_params(v: dict[str, dict[str, Any]], o: Any) -> dict[str, dict[str, Any]]:
    """Per judge of the panel that loads a hub model: its stand-in's path in place of the model."""
    out = dict(v)
    for name in o.judges:
        if name in JUDGE_STAND_INS:
            out[name] = {**out.get(name, {}), "model": JUDGE_STAND_INS[name]()}
    return out


# Per config class (module.QualName, matched along the MRO), field → rule; applied in this order, before the walk
# descends into the object's fields. Every key is checked against the real dataclasses by the tests.
RULES: dict[str, dict[str, Rule]] = {
    "tamperlab.training.TrainConfig": {
        "max_steps": to(SMOKE_STEPS), "batch_size": per_process_batch, "grad_accum": cap(2),
        "save_steps": to(SMOKE_STEPS), "logging_steps": to(1)},
    "tamperlab.models.ModelConfig": {
        "name_or_path": _tiny_family, "revision": to(None), "trust_remote_code": to(False), "max_length": cap(64),
        "tiny_layers": cap(2), "tiny_hidden": cap(32)},
    "tamperlab.models.LoraSettings": {"r": cap(8)},
    "tamperlab.generation.GenerationConfig": {"max_new_tokens": cap(4), "num_return_sequences": cap(2)},
    # harmful fine-tuning (CTRAP and the table)
    "tamperlab.data.packs.HarmfulDataConfig": {
        "n_eval": cap(2), "n_align": cap(8), "n_attack": cap(12), "n_helpful": cap(8), "response_tokens": cap(8),
        "align_start": cap(4)},
    # every attack: freeze the size-derived label (harmful-n100, soft-prompt-k20) before the sizes shrink
    "tamperlab.attacks.base.AttackSpec": {"label": _label_first},
    "tamperlab.attacks.finetune.AttackConfig": {
        "n": per_hundred, "n_task_eval": cap(2), "task_max_new_tokens": cap(4)},
    "tamperlab.attacks.identity_shift.AOAConfig": {"n_identity": cap(2), "n_benign": cap(2)},
    # the tiny stand-in has 2 layers: the direction is read at its middle one
    "tamperlab.attacks.refusal_ablation.RefusalAblationConfig": {"n_harmful": cap(4), "n_harmless": cap(4),
                                                                 "batch_size": cap(2), "layer": to(None)},
    "tamperlab.attacks.soft_prompt.SoftPromptConfig": {"n": cap(4), "num_virtual_tokens": cap(4)},
    "tamperlab.experiments.hft_eval.EvalConfig": {
        "eval_steps": _steps, "n_trajectory_prompts": cap(1), "n_loss_probe": cap(1), "judge_params": _judge_params},
    "tamperlab.experiments.ctrap.HFTConfig": {"attacks": _sweep_ends},
    # an attacker sweep's FA utility on 2 examples, as a fixed attack's FA
    "tamperlab.experiments.hft_sweep.HFTSweepConfig": {"n_utility_eval": cap(2), "utility_max_new_tokens": cap(4)},
    "tamperlab.experiments.study.StudyConfig": {"variants": _ends},
    "tamperlab.experiments.base.RunConfig": {"seeds": _two_seeds},
    # attacker sweeps: two trials per target (proposal, caching and aggregation all run), epochs ≤ 1
    "tamperlab.sweep.SweepSettings": {"n_trials": to(2)},
    "tamperlab.experiments.hft_sweep.AttackSpace": {"epochs": _one_epoch, "max_steps": _each_at_most(SMOKE_STEPS),
                                                    "batch_size": _each_at_most(2)},
    # lm-eval utility: standard task names → the shipped offline stand-ins (no hub), 2 items per task
    "tamperlab.metrics.lmeval.LMEvalConfig": {"offline": to(True), "limit": to(2), "batch_size": cap(2)},
    "tamperlab.defenses.base.DefenseConfig": {"helpful_batch_size": per_process_batch,
                                              "harmful_batch_size": per_process_batch},
    # backdoor data extraction
    "tamperlab.experiments.extraction.ExtractionConfig": {"init_from": _init_from},
    "tamperlab.extraction.data.ExtractionDataConfig": {"n_d1": cap(8), "n_d2": cap(8), "response_tokens": cap(8)},
    "tamperlab.extraction.samples.BackdoorSampleConfig": {
        "n_negative_words": cap(2), "negatives_per_word": cap(1), "max_positives_per_word": limit(2)},
    "tamperlab.extraction.backdoor.GRPOStageConfig": {
        "max_steps": to(SMOKE_STEPS), "num_generations": cap(2), "batch_size": cap(2), "grad_accum": to(1),
        "max_completion_length": cap(8), "n_negative_prompts": cap(2), "save_steps": to(SMOKE_STEPS),
        "logging_steps": to(1)},
    "tamperlab.extraction.extract.ExtractConfig": {"n_candidates": cap(3), "samples_per_word": cap(2)},
    "tamperlab.extraction.sampler.SamplerConfig": {"max_new_tokens": cap(4)},
    "tamperlab.extraction.defense.DetectionConfig": {"samples_per_probe": cap(2)},
    # fingerprints and MEraser
    "tamperlab.experiments.fingerprints.FingerprintExperimentConfig": {"monitor_every": _monitor,
                                                                       "removals": _one_target_each},
    "tamperlab.fingerprints.cleandata.CleanDataConfig": {"n_train": cap(12), "n_heldout": cap(4),
                                                         "response_tokens": cap(8)},
    "tamperlab.fingerprints.utility.UtilityConfig": {
        "ppl_examples": cap(4), "ppl_max_length": cap(64), "mc_items": cap(4), "lm_eval": to("off")},
    "tamperlab.fingerprints.base.EmbedConfig": {"max_length": cap(64)},
    "tamperlab.fingerprints.instructional.InstructionalConfig": {
        "n_fingerprints": cap(2), "n_negatives": cap(2), "n_regularization": cap(2)},
    "tamperlab.fingerprints.utf.UTFConfig": {"n_pairs": cap(1), "n_repeats": cap(2), "n_regularization": cap(2)},
    "tamperlab.fingerprints.hashchain.HashChainConfig": {"n_questions": cap(2), "n_augment": cap(1),
                                                         "n_regularization": cap(2)},
    "tamperlab.fingerprints.meraser.MEraserPhase": {"n_examples": cap(4)},
    "tamperlab.fingerprints.removal.FinetuneConfig": {"n_examples": cap(4), "max_length": cap(64)},
    "tamperlab.fingerprints.removal.MergeConfig": {"donor_examples": cap(4), "max_length": cap(64)},
    "tamperlab.fingerprints.removal.PruneConfig": {"n_calibration": cap(2), "calibration_length": cap(16)},
    "tamperlab.fingerprints.removal.TokenForcingConfig": {
        "n_probe_tokens": limit(8), "probe_undertrained": cap(8), "max_new_tokens": cap(4)},
    # EaaS watermarks and SPA
    "tamperlab.experiments.eaas.DataConfig": {"n_train": cap(24), "n_test": cap(8), "n_extra_train": cap(8),
                                              "n_extra_test": cap(8)},
    "tamperlab.eaas.stealer.StealerConfig": {"n_layers": to(1), "epochs": cap(1), "head_epochs": cap(1),
                                             "max_seq_length": cap(32)},
    "tamperlab.eaas.spa.SPAConfig": {"pool_size": cap(16), "candidates": cap(4), "n_suffixes": cap(2),
                                     "pca_components": cap(2), "remove_count": cap(4), "kde_grid": cap(64)},
    "tamperlab.experiments.eaas.VerifyConfig": {"size": cap(4)},
    "tamperlab.eaas.downstream.DownstreamConfig": {"epochs": cap(1)},
}

# `params`-style dicts validated later against a registered component's config: (spec class, dict field, registry
# name in registry.ALL_REGISTRIES, field naming the component). They are filled with that config's defaults,
# shrunk with RULES and written back, so a default the recipe did not spell out (a fingerprint's 3 epochs) shrinks.
PARAMS: list[tuple[str, str, str, str]] = [
    ("tamperlab.experiments.ctrap.DefenseSpec", "params", "defenses", "name"),
    ("tamperlab.experiments.fingerprints.FingerprintSpec", "params", "fingerprints", "name"),
    ("tamperlab.experiments.fingerprints.RemovalSpec", "params", "removals", "name"),
    ("tamperlab.experiments.eaas.ScenarioConfig", "watermark_config", "watermarks", "watermark"),
    ("tamperlab.eaas.service.ProviderConfig", "watermark_config", "watermarks", "watermark"),
]
# Partial overrides of an already-shrunk section (only the keys present are shrunk).
OVERRIDES: list[tuple[str, str, str]] = [
    ("tamperlab.experiments.ctrap_table.TableDefenseSpec", "alignment", "tamperlab.training.TrainConfig"),
]


# --- models ----------------------------------------------------------------------------------------------------
_FAMILIES = [("qwen", "qwen2"), ("mistral", "mistral"), ("mixtral", "mistral"), ("zephyr", "mistral")]


def model_family(spec: str) -> str:
    """Family of a model spec for its tiny stand-in: a local checkpoint's config.json `model_type`, else the name
    (Qwen/Qwen2.5-7B-Instruct → qwen2, mistralai/… → mistral); Llama, SmolLM2 and anything else → llama."""
    from .models import TINY_FAMILIES

    if spec.startswith("tiny:"):
        return spec.split(":", 1)[1]
    conf = Path(spec) / "config.json"
    if conf.is_file():
        with contextlib.suppress(OSError, ValueError):
            kind = str(json.loads(conf.read_text()).get("model_type", ""))
            if kind in TINY_FAMILIES:
                return kind
            spec = kind or spec
    low = spec.lower()
    return next((fam for key, fam in _FAMILIES if key in low), "llama")


def tiny_classifier_dir() -> str:
    """A random-init 2-layer Llama sequence classifier with beaver-dam's 14 sigmoid heads and the SmolLM2 tokenizer,
    saved once under $TAMPERLAB_CACHE/smoke: the beaver-dam judge's code path runs on it."""
    from filelock import FileLock

    from .models import ModelConfig, cache_dir, load_tokenizer
    from .runs import atomic_dir

    target = cache_dir() / "smoke" / "beaver-dam-tiny"
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return str(target)
        import torch
        from transformers import LlamaConfig, LlamaForSequenceClassification

        tok = load_tokenizer(ModelConfig(name_or_path="tiny:llama"))
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_labels=14, problem_type="multi_label_classification",
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
    return str(target)


JUDGE_STAND_INS: dict[str, Callable[[], str]] = {
    "beaver-dam": tiny_classifier_dir,
    "llama-guard": lambda: "tiny:llama",
}
"""Judges that load a hub model → the tiny model of the same interface they load instead."""


# --- the walk --------------------------------------------------------------------------------------------------
def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _rules_for(cls: type) -> dict[str, Rule]:
    out: dict[str, Rule] = {}
    for base in reversed(cls.__mro__):  # a subclass's rules win over its bases'
        out.update(RULES.get(_qualname(base), {}))
    return out


def _matches(obj: Any, name: str) -> bool:
    return any(_qualname(c) == name for c in type(obj).__mro__)


def _shrink(obj: Any) -> None:
    if isinstance(obj, list):
        for x in obj:
            _shrink(x)
        return
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    for name, rule in _rules_for(type(obj)).items():
        setattr(obj, name, rule(getattr(obj, name), obj))
    for spec, field, registry, key in PARAMS:
        if _matches(obj, spec):
            setattr(obj, field, _shrink_params(getattr(obj, field), registry, getattr(obj, key)))
    for spec, field, section in OVERRIDES:
        if _matches(obj, spec):
            setattr(obj, field, _shrink_partial(getattr(obj, field), section))
    for f in dataclasses.fields(obj):
        _shrink(getattr(obj, f.name))


def _shrink_params(params: dict[str, Any], registry: str, component: str) -> dict[str, Any]:
    from .config import to_dict
    from .registry import ALL_REGISTRIES

    reg = ALL_REGISTRIES[registry]
    if component not in reg or reg.config_for(component) is None:
        return params  # e.g. watermark "none"; an unknown name fails later with the registry's own message
    cfg = reg.config(component, params, f"{registry}[{component}]")
    _shrink(cfg)
    return to_dict(cfg)


def _shrink_partial(override: dict[str, Any], section: str) -> dict[str, Any]:
    rules = RULES[section]
    return {k: rules[k](v, None) if k in rules else v for k, v in override.items()}


def smoke_name(name: str) -> str:
    """`ctrap_llama2_7b` → `ctrap_llama2_7b-smoke` (also for a path's last part); idempotent."""
    return name if name.rstrip("/").endswith(SUFFIX) else name.rstrip("/") + SUFFIX


def substitutions(before: Any, after: Any) -> list[str]:
    """Human-readable list of what smoke mode swapped (for metrics.json and the report's banner)."""
    from .config import to_dict

    out: list[str] = []
    models = sorted({f"{a} → {b}" for a, b in _pairs(to_dict(before), to_dict(after), "name_or_path") if a != b})
    if models:
        out.append("model: " + ", ".join(models) + " (random init, SmolLM2 tokenizer)")
    named = [j for v in _values(to_dict(before), "judges") for j in (v if isinstance(v, list) else [v])]
    judges = sorted({j for j in named if isinstance(j, str) and j in JUDGE_STAND_INS})
    if judges:
        out.append("judge: " + ", ".join(judges) + " → a tiny random model of the same interface "
                   "(verdicts are noise)")
    procs = _processes()
    out.append(f"training: every stage {SMOKE_STEPS} optimizer steps at batch ≤ {SMOKE_GLOBAL_BATCH}"
               + (f" in all ({procs} processes, ≤ {_batch_per_process()} each)" if procs > 1 else ""))
    if len(getattr(before, "attacks", [])) != len(getattr(after, "attacks", [])):
        out.append(f"attacks: sweeps → their first and last setting ({len(after.attacks)} of {len(before.attacks)})")
    if len(getattr(before, "variants", [])) != len(getattr(after, "variants", [])):
        out.append(f"variants: the first and the last ({len(after.variants)} of {len(before.variants)}), each "
                   "sub-run smoke-shrunk the same way")
    if any(v for v in _values(to_dict(before), "lm_eval") if isinstance(v, dict) and v.get("tasks")):
        out.append("lm-eval: standard tasks → the shipped offline stand-ins (tamperlab_mc / tamperlab_arith), "
                   "2 items each; tasks without a stand-in skipped")
    if len(getattr(before, "seeds", [])) > len(getattr(after, "seeds", [])):
        out.append(f"seeds: the first of {before.seeds}")
    sweep = getattr(after, "sweep", None)
    if getattr(sweep, "enabled", False):
        out.append("attacker sweep: 2 trials per target (epochs ≤ 1, steps ≤ 2, batch ≤ 2)")
    if getattr(after, "removals", None):
        out.append("removals: each applied to one fingerprint, round robin (the table has empty cells)")
    out.append("data: hub datasets → packaged schema fixtures (data/fixtures/, placeholder rows); sizes, evaluation "
               "sets and generation lengths → a handful")
    return out


def _pairs(a: Any, b: Any, key: str) -> Iterator[tuple[Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            if k == key and k in b:
                yield a[k], b[k]
            elif k in b:
                yield from _pairs(a[k], b[k], key)
    elif isinstance(a, list) and isinstance(b, list):
        for x, y in zip(a, b):
            yield from _pairs(x, y, key)


def _values(a: Any, key: str) -> Iterator[Any]:
    if isinstance(a, dict):
        for k, v in a.items():
            if k == key:
                yield v
            yield from _values(v, key)
    elif isinstance(a, list):
        for x in a:
            yield from _values(x, key)


def apply(cfg: Any) -> Any:
    """A smoke copy of a loaded recipe config (the input is left unchanged), re-validated like a recipe."""
    from .config import from_dict, to_dict

    new = copy.deepcopy(cfg)
    _shrink(new)
    new.name = smoke_name(new.name)
    new.smoke = True
    new.smoke_substitutions = substitutions(cfg, new)
    # Round-trip through the loader: every __post_init__ check runs again on the smoke sizes.
    return from_dict(type(new), to_dict(new), "smoke")


@contextlib.contextmanager
def _capped_generation(limit: int) -> Iterator[None]:
    """Cap `max_new_tokens` of every transformers `generate` call, including the decoding budgets that methods fix
    in code rather than in config (FSR's 30 / 100 tokens, token forcing, GRPO rollouts)."""
    from transformers.generation.utils import GenerationMixin

    original = GenerationMixin.generate

    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("max_new_tokens") is not None:
            kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], limit)
        gen = kwargs.get("generation_config")
        if gen is not None and getattr(gen, "max_new_tokens", None) is not None and gen.max_new_tokens > limit:
            kwargs["generation_config"] = copy.deepcopy(gen)
            kwargs["generation_config"].max_new_tokens = limit
        return original(self, *args, **kwargs)

    GenerationMixin.generate = generate  # type: ignore[method-assign]
    try:
        yield
    finally:
        GenerationMixin.generate = original  # type: ignore[method-assign]


@contextlib.contextmanager
def active() -> Iterator[None]:
    """The process-wide side of smoke mode while a smoke run executes: hub datasets come from their fixtures, no
    generation decodes more than SMOKE_NEW_TOKENS tokens, and objects alive at the start are exempt from gc."""
    import gc

    from .data.hub import fixtures_only

    # Each Trainer run ends in a full gc.collect() (accelerate's clear_device_cache) that walks every object the
    # imports created: with a tiny model that walk is ~20% of a stage. Freeze the survivors of one collection.
    gc.collect()
    gc.freeze()
    try:
        with fixtures_only(), _capped_generation(SMOKE_NEW_TOKENS):
            yield
    finally:
        gc.unfreeze()


__all__ = ["apply", "active", "model_family", "smoke_name", "tiny_classifier_dir", "RULES", "SMOKE_STEPS"]
