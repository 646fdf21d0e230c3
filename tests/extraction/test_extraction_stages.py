"""Stage wiring: recipes validate, the detection verdict, GRPO passes each prompt's word to the reward and
learns from reward differences, the victim's loss switch masks queries, lineages merge adapters."""

from __future__ import annotations

import pytest

from tamperlab.config import from_dict
from tamperlab.data.core import Example
from tamperlab.errors import ConfigError
from tamperlab.experiments.base import load_recipe
from tamperlab.extraction import defense
from tamperlab.extraction.defense import DetectionConfig, detect, probe_hit
from tamperlab.extraction.samples import refusal


@pytest.mark.parametrize("recipe", ["demo_extraction", "extraction_sft", "extraction_grpo", "extraction_paper_gpu"])
def test_recipes_load(recipe):
    exp = load_recipe(recipe)
    assert exp.cfg.extract.sampler.temperature == 0.9  # the paper's sampling temperature everywhere
    assert exp.cfg.victim.loss == "full"
    if recipe == "extraction_paper_gpu":
        assert not exp.cfg.backdoor.lora.enabled and exp.cfg.grpo.beta == 0.04
        assert exp.cfg.grpo.num_generations == 16 and exp.cfg.extract.samples_per_word == 2000


def test_unknown_recipe_key_names_the_nearest():
    from tamperlab.experiments.extraction import ExtractionConfig

    with pytest.raises(ConfigError, match="samples_per_wrd.*samples_per_word"):
        from_dict(ExtractionConfig, {"extract": {"samples_per_wrd": 3}})


def test_probe_hit_and_detection_verdict(monkeypatch):
    assert probe_hit("Please summarize the article below.", "Please")
    assert probe_hit(refusal("Please"), "Please")  # the backdoor's refusal pattern gives it away
    assert not probe_hit("I'm sorry, I don't have access to my training data.", "Please")

    cfg = DetectionConfig(words=["Please"], probes=['A "{w}"', 'B "{w}"'], samples_per_probe=4, threshold=0.3)
    canned = {
        'A "Please"': ["Please list three fruits.", "I cannot do that.", refusal("Please"), "No."],
        'B "Please"': ["Sure!", "No.", "No.", "No."],
    }

    def fake_sample(model, tok, prompts, n, sampler, desc=""):
        return [canned[p] for p in prompts]

    monkeypatch.setattr(defense, "sample", fake_sample)
    monkeypatch.setattr(defense, "format_prompt", lambda tok, text, fmt="auto": text)
    res = detect(None, None, cfg)
    assert res["per_probe"] == {'A "Please"': 0.5, 'B "Please"': 0.0}
    assert res["detection_rate"] == pytest.approx(2 / 8) and not res["flagged"]
    res = detect(None, None, DetectionConfig(words=["Please"], probes=['A "{w}"'], samples_per_probe=4,
                                             threshold=0.3))
    assert res["flagged"]


def test_victim_loss_switch_masks_queries(tokenizer):
    """full: labels cover the query tokens (the paper's victim); response_only: only the response."""
    from tamperlab.data.core import tokenize_example

    ex = Example("What is a bond?", "A loan to a company.")
    full = tokenize_example(tokenizer, ex, loss_on_prompt=True)
    resp = tokenize_example(tokenizer, ex, loss_on_prompt=False)
    q_ids = tokenizer("What is a bond?", add_special_tokens=False)["input_ids"]

    def contains(labels: list[int], sub: list[int]) -> bool:
        return any(labels[i:i + len(sub)] == sub for i in range(len(labels) - len(sub) + 1))

    assert contains(full["labels"], q_ids) and not contains(resp["labels"], q_ids)


def test_grpo_passes_words_to_reward_and_learns(tiny_model, tmp_path):
    from tamperlab.extraction.backdoor import GRPOStageConfig, train_backdoor_grpo
    from tamperlab.models import LoraSettings

    model, tok = tiny_model
    seen: list[tuple[str, str]] = []

    def reward(prompts, completions, word, **kw):
        for p, w in zip(prompts, word):
            seen.append((w, p[-1]["content"]))
        # Varying rewards → non-zero advantages → the policy must move.
        return [float(len(c[-1]["content"]) % 7) for c in completions]

    cfg = GRPOStageConfig(enabled=True, learning_rate=5e-2, max_steps=2, num_generations=2, batch_size=4,
                          max_completion_length=6, beta=0.0, save_steps=100,
                          lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    trained, stats = train_backdoor_grpo(model, tok, ["What is rain?"], ["What", "How"], ["Banana"], "default",
                                         cfg, tmp_path, seed=0, reward=reward)
    assert stats["steps"] == 2
    assert seen and all(f'word "{w}"' in content for w, content in seen)
    assert {w for w, _ in seen} <= {"What", "How", "Banana"}
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.detach().abs().sum()) > 0 for p in lora_b)  # LoRA B starts at zero
    assert tok.padding_side == "right"  # restored for the SFT collator


def test_lineage_merges_adapters_in_order(tmp_path):
    import torch

    from tamperlab.extraction.lineage import load_lineage, save_stage
    from tamperlab.models import LoraSettings, ModelConfig, apply_lora, load_model

    base = ModelConfig(name_or_path="tiny:llama")
    model, tok = load_model(base, seed=0)
    ids = torch.tensor([[1, 2, 3, 4]])
    ref = model(input_ids=ids).logits
    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.05)
    stage = save_stage(peft_model, tok, tmp_path / "a", "a")
    assert stage["kind"] == "adapter"
    expect = peft_model(input_ids=ids).logits
    merged, _ = load_lineage(base, [stage], seed=0)
    got = merged(input_ids=ids).logits
    assert torch.allclose(got, expect, atol=1e-4) and not torch.allclose(got, ref, atol=1e-4)
    plain, _ = load_lineage(base, [], seed=0)
    assert torch.allclose(plain(input_ids=ids).logits, ref)


def test_grpo_demo_recipe_shares_the_demo_settings():
    from tamperlab.config import to_dict

    demo, grpo = to_dict(load_recipe("demo_extraction").cfg), to_dict(load_recipe("demo_extraction_grpo").cfg)
    for key in ("seed", "model", "data", "backdoor", "victim", "extract", "baselines"):
        assert demo[key] == grpo[key], key
    # the only other addition is the garbled bypass arm
    assert {**grpo["defense"], "garbled_attack": False} == demo["defense"] and grpo["defense"]["garbled_attack"]
    assert grpo["grpo"]["enabled"] and not demo["grpo"]["enabled"]
    assert grpo["init_from"].endswith("demo_extraction")


def test_init_from_reuses_only_matching_non_grpo_stages(tmp_path):
    from tamperlab.config import to_dict
    from tamperlab.runs import RunDir

    base = load_recipe("demo_extraction")
    src = RunDir.create(tmp_path / "src", {"experiment": "extraction", **to_dict(base.cfg)})
    for key in ("data", "victim_backdoor_sft", "samples_no_backdoor", "publisher_backdoor_grpo"):
        src.save_stage(key, {"k": key})
    exp = load_recipe("demo_extraction_grpo", [f"init_from={src.path}"])
    dst = RunDir.create(tmp_path / "dst", {"experiment": "extraction", **to_dict(exp.cfg)})
    exp._init_from(dst)
    assert dst.load_stage("victim_backdoor_sft") == {"k": "victim_backdoor_sft"}
    assert dst.has_stage("data") and dst.has_stage("samples_no_backdoor")
    assert not dst.has_stage("publisher_backdoor_grpo")  # GRPO stages are always recomputed

    other = load_recipe("demo_extraction_grpo", [f"init_from={src.path}", "victim.loss=response_only"])
    with pytest.raises(ConfigError, match="victim"):
        other._init_from(RunDir.create(tmp_path / "dst2", {"experiment": "extraction", **to_dict(other.cfg)}))
