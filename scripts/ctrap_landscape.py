"""Is the collapse trap planted, and is it selective? Probe an HFT run's aligned adapters.

    python scripts/ctrap_landscape.py runs/demo_ctrap [--alphas 0.1,0.5,1,2] [--rows 16]

For each aligned adapter (sft, ctrap, ...) it measures the collapse loss ℓ_C (CE of the trap token at every
response position of retain rows, Eq. 1 of the CTRAP paper) at θ and at normalised look-ahead points
θ − a·g/‖g‖ for three directions g: the harmful-data gradient (what CTRAP trains on), the benign-task gradient
(SST2 rows of the run's attack data generator) and a random direction. A planted, selective trap shows
ℓ_C(harmful step) ≪ ℓ_C(θ) ≈ ℓ_C(benign step) ≈ ℓ_C(random step). It also reports the trap-token probability
at the first response position and at the end-of-response position of retain rows (where greedy decoding decides
between answering/stopping and "error").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--alphas", default="0.1,0.5,1,2")
    ap.add_argument("--rows", type=int, default=16)
    args = ap.parse_args()

    import torch

    from tamperlab.registry import TASKS
    from tamperlab.defenses.base import relabel_all, trap_token_id
    from tamperlab.defenses.lookahead import loss_and_grads, normalized_step_scale, perturbed, trainable
    from tamperlab.experiments.base import load_recipe
    from tamperlab.models import load_adapter
    from tamperlab.runs import RunDir
    from tamperlab.training import PadCollator, TokenizedDataset

    torch.manual_seed(0)
    run = RunDir(Path(args.run_dir))
    exp = load_recipe(run.config)
    cfg = exp.cfg
    data = exp.data(run)
    fmt, max_len, n = cfg.model.prompt_format, cfg.model.max_length, args.rows

    def batch(tok, examples):
        ds = TokenizedDataset(tok, examples[:n], fmt, max_len)
        return PadCollator(tok.pad_token_id)([ds[i] for i in range(len(ds))])

    alphas = [float(a) for a in args.alphas.split(",")]
    print(f"| defense | ℓ_C(θ) | p(trap) 1st / end token | direction | " + " | ".join(f"a={a}" for a in alphas) + " |")
    print("|---|---|---|---|" + "---|" * len(alphas))
    for spec in cfg.defenses:
        adapter = run.path / "models" / spec.key
        if not adapter.exists():
            continue
        base, tok = exp._base()
        model = load_adapter(base, adapter, trainable=True)
        model.eval()  # no dropout: a deterministic landscape
        params = trainable(model)
        trap = trap_token_id(tok, "an error")
        retain = batch(tok, data.align_refusal.examples[: n // 2] + data.helpful.examples[: n // 2])
        collapse = relabel_all(retain, trap)
        harmful = batch(tok, data.attack_harmful.examples)
        benign = batch(tok, TASKS.get("sst2").load("train", n).examples)

        def lc() -> float:
            with torch.no_grad():
                return float(model(**collapse).loss)

        with torch.no_grad():
            probs = model(**retain).logits.float().softmax(-1)[..., trap]
        lab = retain["labels"]
        first = [int((row != -100).nonzero()[0]) - 1 for row in lab]
        last = [int((row != -100).nonzero()[-1]) - 1 for row in lab]
        p_first = float(torch.stack([probs[i, j] for i, j in enumerate(first)]).mean())
        p_last = float(torch.stack([probs[i, j] for i, j in enumerate(last)]).mean())
        _, g_h = loss_and_grads(model, harmful, params)
        _, g_b = loss_and_grads(model, benign, params)
        g_r = [torch.randn_like(p) for p in params]
        base_lc = lc()
        for name, g in (("harmful", g_h), ("benign (sst2)", g_b), ("random", g_r)):
            vals = []
            for a in alphas:
                with perturbed(params, g, normalized_step_scale(g, a)):
                    vals.append(lc())
            print(f"| {spec.key} | {base_lc:.2f} | {p_first:.3f} / {p_last:.3f} | {name} | "
                  + " | ".join(f"{v:.2f}" for v in vals) + " |")
        del model, base


if __name__ == "__main__":
    main()
