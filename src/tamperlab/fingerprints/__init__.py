"""Model fingerprints (ownership marks planted by fine-tuning) and ways to remove them.

* Fingerprints — registry `FINGERPRINTS`, one interface (`build_pairs`, `embed`, `verify`):
  `instructional` (IF-SFT, Xu et al. 2024), `utf` (under-trained tokens, Cai et al. 2024),
  `hashchain` (Chain & Hash, Russinovich & Salem 2024).
* Removals — registry `REMOVALS`, one interface (`apply` → stages): `meraser` (erase + recover LoRA,
  Zhang et al., ACL 2025), `meraser_transfer` (an erase LoRA trained once on the clean base), and the baselines
  `finetune`, `prune_magnitude`, `prune_wanda`, `prune_random`, `merge_task_arithmetic`, `merge_ties`,
  `merge_dare`, `token_forcing`.
* Verification (`verify.py`) computes each method's Fingerprint Success Rate with per-pair results; utility
  (`utility.py`) is perplexity on held-out text plus multiple-choice accuracy (lm-eval tasks when available).

See docs/methods/fingerprints.md for the definitions and defaults.
"""
