"""Pruning (magnitude, Wanda, random), Token Forcing's flagging, MEraser's
mismatched pairs and data parsing — on small hand-checked tensors and fixtures."""

from __future__ import annotations

import torch

from tamperlab.data.core import Example
from tamperlab.fingerprints import pruning as P
from tamperlab.fingerprints.cleandata import (build_mismatched, guanaco_first_turn, guanaco_llama2_rows,
                                              question_type)
from tamperlab.fingerprints.removal import flag_continuations


# --- pruning -----------------------------------------------------------------------------------------------
def test_magnitude_mask_prunes_exactly_the_smallest():
    w = torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.05, 1.0]])
    keep = P.magnitude_mask(w, 0.5)
    assert keep.tolist() == [[False, True, False], [True, False, True]]


def test_torch_pruning_masks_prune_round_ratio_n_reproducibly():
    w = torch.arange(1.0, 11.0).reshape(2, 5)
    # 0.25·10 = 2.5 → round → 2 (banker's rounding, as torch.nn.utils.prune): the two smallest go
    assert (~P.magnitude_mask(w, 0.25)).nonzero().tolist() == [[0, 0], [0, 1]]
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    before = torch.random.get_rng_state()
    m1, m2 = P.random_mask(torch.ones(50, 40), 0.2, g1), P.random_mask(torch.ones(50, 40), 0.2, g2)
    assert torch.equal(m1, m2) and int((~m1).sum()) == 400
    assert torch.equal(before, torch.random.get_rng_state())  # the global generator is left alone


def test_wanda_weighs_magnitudes_by_input_norms_per_row():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    norms = torch.tensor([10.0, 1.0, 1.0, 0.1])  # scores row0: [10,2,3,.4]; row1: [40,3,2,.1]
    keep = P.wanda_mask(w, norms, 0.5)
    assert keep.tolist() == [[True, False, True, False], [True, True, False, False]]
    # magnitude alone would keep the other entries of row 0
    assert P.magnitude_mask(w[:1], 0.5).tolist() == [[False, False, True, True]]


def test_prune_model_hits_the_ratio_and_spares_embeddings(tiny_model):
    model, tok = tiny_model
    emb = model.get_input_embeddings().weight.clone()
    info = P.prune_model(model, "magnitude", 0.3)
    assert abs(info["sparsity"] - 0.3) < 1e-3
    for m in P.prunable_linears(model).values():
        assert abs((m.weight == 0).float().mean().item() - 0.3) < 0.01
    assert torch.equal(model.get_input_embeddings().weight, emb)
    norms = P.input_norms(model, tok, ["hello world", "a second calibration text"])
    assert all(v.shape[0] == P.prunable_linears(model)[n].in_features and (v > 0).any() for n, v in norms.items())


# --- token forcing ------------------------------------------------------------------------------------------
def test_token_forcing_flags_confident_repeated_continuations():
    fp = [5, 6, 7, 8, 9]
    conts = [(1, fp + [1], 0.95), (2, fp + [2], 0.9), (3, fp, 0.97),           # memorised: 3 probes
             (4, [1, 2, 3, 4], 0.99), (5, [1, 2, 3, 4], 0.99),               # confident but only 2 probes
             (6, [9, 9, 9, 9], 0.2), (7, [9, 9, 9, 9], 0.3), (8, [9, 9, 9, 9], 0.1)]  # frequent, unsure
    flagged = flag_continuations(conts, key_tokens=4, min_support=3, min_confidence=0.6, max_flagged=5)
    assert [f["ids"] for f in flagged] == [fp]
    assert flagged[0]["support"] == 3


# --- data ----------------------------------------------------------------------------------------------------
def test_mismatched_pairs_never_share_a_question_type():
    pairs = ([Example(f"What is {i}?", f"a{i}") for i in range(6)] + [Example(f"How to {i}?", f"b{i}") for i in range(6)]
             + [Example(f"Write {i}.", f"c{i}") for i in range(6)])
    mis = build_mismatched(pairs, 30, seed=1)
    assert len(mis) == 30
    for m in mis:
        assert question_type(m.prompt) != m.meta["answer_type"]
        assert pairs[m.meta["a_idx"]].response == m.response
    assert [m.response for m in mis] == [m.response for m in build_mismatched(pairs, 30, seed=1)]
    assert len({m.response for m in mis[:18]}) == 18  # answers are not reused before the pool runs out


def test_guanaco_parsers_on_fixtures():
    ex = guanaco_first_turn("### Human: Why is the sky blue?### Assistant: Rayleigh scattering.### Human: more")
    assert ex is not None and (ex.prompt, ex.response) == ("Why is the sky blue?", "Rayleigh scattering.")
    assert ex.meta["qtype"] == "why"
    assert guanaco_first_turn("### Assistant: orphan") is None
    rows = guanaco_llama2_rows([{"text": "<s>[INST] Name a fruit. [/INST] Apple. </s>"}])
    assert [(e.prompt, e.response) for e in rows] == [("Name a fruit.", "Apple.")]
