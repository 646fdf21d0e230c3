"""Data: held-out separation, task generators and scoring, hub row mappings on schema fixtures, tokenization."""

from __future__ import annotations

from tamperlab.data.core import Example, split_by_hash, tokenize_example
from tamperlab.data.hub import beavertails_unsafe, refusal_pairs, ultrachat_single_turn
from tamperlab.data.packs import templated_refusal
from tamperlab.data.sources import harmful_prompts
from tamperlab.data.tasks import _agnews_rows, _gsm8k_rows, _sst2_rows, extract_final_number
from tamperlab.registry import TASKS


def test_packaged_prompts_and_disjoint_splits():
    prompts, prov = harmful_prompts(["harmbench", "advbench", "donotanswer"])
    assert len(prompts) > 1500 and prov["counts"]["advbench"] == 520
    parts = split_by_hash(prompts, {"eval": 0.2, "align": 0.4, "attack": 0.4})
    sets = [set(v) for v in parts.values()]
    assert sum(map(len, sets)) == len(prompts)
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    # a prompt's split does not depend on the others (adding data never moves evaluation prompts into training)
    again = split_by_hash(prompts[:300], {"eval": 0.2, "align": 0.4, "attack": 0.4})
    assert set(again["eval"]) == {i for i in parts["eval"] if i < 300}


def test_offline_tasks_disjoint_and_scored():
    for name in ("sst2", "agnews", "gsm8k"):
        task = TASKS.get(name)
        tr, ev = task.load("train", 200), task.load("eval", 50)
        assert len(tr) == 200 and len(ev) == 50
        assert not ({e.input or e.prompt for e in tr} & {e.input or e.prompt for e in ev})
        for e in ev.examples[:10]:
            assert task.score(e.response, e)  # the reference answer scores correct
            assert not task.score("I don't know", e)
        assert tr.provenance["generated"] is True


def test_gsm8k_number_rule():
    assert extract_final_number("so 3+4=7\nThe final answer is: 7") == 7
    assert extract_final_number("I think 12, no 15") == 15
    assert extract_final_number("none") is None


def test_hub_row_mappings():
    bt = [{"prompt": "p1", "response": "r1", "is_safe": True, "category": {}},
          {"prompt": "p2", "response": "r2", "is_safe": False, "category": {"violence": True, "theft": False}}]
    ex = beavertails_unsafe(bt, 5)
    assert [e.prompt for e in ex] == ["p2"] and ex[0].meta["category"] == ["violence"]
    rows = [{"prompt": f"q{i}", "response": f"bad{i}", "refusal": f"Question: q{i}\nAnswer: no{i}"} for i in range(8)]
    align, harm = refusal_pairs(rows, 2, 4)  # official slicing: start < i < start + n
    assert [e.prompt for e in align] == ["q3", "q4", "q5"] and align[0].response == "no3"
    assert harm[0].response == "bad3"
    uc = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    assert ultrachat_single_turn(uc, 3)[0].response == "hello"
    assert _sst2_rows([{"sentence": "great", "label": 1}])[0].response == "positive"
    assert _agnews_rows([{"text": "t", "label": 3}])[0].response == "Sci/Tech"
    g = _gsm8k_rows([{"question": "q", "answer": "2+2=4\n#### 4"}])[0]
    assert g.response.endswith("The final answer is: 4") and g.meta["label"] == "4"


def test_tokenize_masks_prompt(tokenizer):
    ex = Example("Say hi", "hi there")
    t = tokenize_example(tokenizer, ex)
    n_resp = sum(1 for x in t["labels"] if x != -100)
    assert t["labels"][-1] == tokenizer.eos_token_id
    assert n_resp == len(tokenizer("hi there", add_special_tokens=False)["input_ids"]) + 1
    assert t["input_ids"][-n_resp:] == t["labels"][-n_resp:]


def test_refusals_templated_and_stable():
    assert templated_refusal("x") == templated_refusal("x")
    assert "sorry" in templated_refusal("abc").lower() or "can't" in templated_refusal("abc").lower() \
        or "decline" in templated_refusal("abc").lower() or "not" in templated_refusal("abc").lower()
