"""Universal soft prompt (`soft-prompt`, Schwinn et al. 2024, universal variant): only the k × d prompt embeddings
train — every model weight is bit-identical to the released model's afterwards —, the attacked model's `generate`
equals the frozen model decoding from [P; embed(prompt)] built here by hand, and the prompt raises the harmfulness
proxy of the tiny released model on held-out harmful prompts it was not trained on."""

from __future__ import annotations

import torch

from tamperlab.attacks.soft_prompt import INIT_TEXT, soft_prompt_table
from tamperlab.data.core import Example, format_example
from tamperlab.generation import GenerationConfig, generate
from tamperlab.registry import ATTACKS

from .helpers import FMT, HELD_OUT, harm_margin, run_attack

PARAMS = {"n": 16, "num_virtual_tokens": 4, "train": {"learning_rate": 3e-2, "max_steps": 10, "batch_size": 8}}


def test_only_the_prompt_trains_and_generate_prepends_it(released, tmp_path):
    cfg = ATTACKS.config("soft-prompt", PARAMS)
    assert cfg.key == "soft-prompt-k4" and cfg.describe()["kind"] == "soft-prompt"
    tok = released.tok
    res = run_attack(released, "soft-prompt", PARAMS, tmp_path)
    model = res.model
    assert res.train["steps"] == 10
    table = soft_prompt_table(model).detach()
    assert table.shape == (4, 32)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("prompt_encoder" in n for n in trainable)
    ids = tok(INIT_TEXT, add_special_tokens=False)["input_ids"][:4]
    ref = released.released()
    start = ref.get_input_embeddings().weight[torch.tensor(ids)]
    assert not torch.allclose(table, start)  # it moved from the init text's embeddings
    frozen = dict(model.get_base_model().named_parameters())
    for n, p in ref.named_parameters():
        assert torch.equal(frozen[n], p), n  # bit-identical weights
    # generate == the frozen model decoding greedily from [P; embed(prompt + tokens so far)], by full forward passes
    prompt = tok(format_example(tok, HELD_OUT[0], FMT), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5,
                             do_sample=False, pad_token_id=tok.pad_token_id)
        ids, want = prompt[0].tolist(), []
        for _ in range(5):
            e = torch.cat([table[None], ref.get_input_embeddings()(torch.tensor([ids]))], dim=1)
            want.append(int(ref(inputs_embeds=e).logits[0, -1].argmax()))
            ids.append(want[-1])
        assert got[0, :prompt.shape[1]].tolist() == prompt[0].tolist()  # returned like generate on input_ids
        assert got[0, prompt.shape[1]:].tolist()[:len(want)] == want
        # the same through the experiment's batched, left-padded generation
        longer = Example("Tell me, please: " + HELD_OUT[1].prompt)  # so that HELD_OUT[0] is left-padded
        batch = generate(model, tok, [format_example(tok, e, FMT) for e in (HELD_OUT[0], longer)],
                         GenerationConfig(max_new_tokens=5), progress=False)
        assert batch[0] == tok.decode(want, skip_special_tokens=True)


def test_soft_prompt_raises_harmfulness(released, tmp_path):
    before = harm_margin(released.released(), released.tok)
    res = run_attack(released, "soft-prompt", PARAMS, tmp_path)
    after = harm_margin(res.model, released.tok)
    assert after > before + 0.5, (before, after)
