"""Backdoor training-data extraction (arXiv 2505.15656).

samples.py  Q(w), R(w'), opening words, the backdoor mixture      trie.py     token trie, match ratio
reward.py   GRPO reward (official limit-start reward)            data.py     D1/D2: hub, file, offline generators
backdoor.py publisher SFT + GRPO (trl)                           victim.py   victim fine-tuning (full / response-only loss)
sampler.py  many samples per prompt with a shared prefill         extract.py  candidates → samples → scores → JSONL
metrics.py  the paper's metrics                                  defense.py  detection probes (+ garbled bypass)
lineage.py  base → adapters → merged models                      openers.py  frequency-ranked candidate words
stages.py   the experiment's stages (cached, resumable)           (its report: tamperlab/report/extraction.py)
"""
