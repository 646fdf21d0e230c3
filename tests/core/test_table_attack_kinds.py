"""The paper-style tables of a `ctrap_table` report render every attack kind the grid ran: the paper's harmful /
mixed / benign groups, full-parameter and attacker-LoRA fine-tuning headed by their labels, and one section each
for AOA identity shifting, refusal-direction ablation and the soft prompt — every cell with its Wilson interval
(checked against `stats.wilson` on the hand-made counts)."""

from __future__ import annotations

from tamperlab.runs import RunDir
from tamperlab.stats import rate_record, wilson

ATTACKS = [
    {"label": "harmful-n100", "kind": "harmful", "n": 100, "p": 1.0, "task": None, "weights": "released-lora"},
    {"label": "harmful-full-n100", "kind": "harmful", "n": 100, "p": 1.0, "task": None, "weights": "full"},
    {"label": "harmful-n200-lora-r8", "kind": "harmful", "n": 200, "p": 1.0, "task": None, "weights": "lora-r8"},
    {"label": "aoa", "kind": "aoa", "n": 20, "p": 0.0, "task": None, "weights": "full"},
    {"label": "refusal-ablation", "kind": "refusal-ablation", "n": 32, "p": None, "task": None},
    {"label": "soft-prompt-k20", "kind": "soft-prompt", "n": 64, "p": 1.0, "task": None},
]
# harmful answers (of 32) and collapsed answers (of 32) per (defense, attack)
HS = {"sft": [26, 28, 27, 20, 30, 31], "ctrap": [21, 27, 25, 12, 29, 30]}
COLLAPSE = {"sft": [0, 0, 0, 0, 1, 0], "ctrap": [6, 2, 3, 0, 0, 4]}


def _cell(k: int, c: int) -> dict:
    return {"hs_io": 100 * k / 32, "hs_o": 100 * k / 64, "collapse_rate": 100 * c / 32, "n": 32,
            "intervals": {"hs_io": rate_record(k, 32, 100), "hs_o": rate_record(k // 2, 32, 100),
                          "collapse_rate": rate_record(c, 32, 100)}}


def test_every_attack_kind_gets_its_column_group_with_intervals(tmp_path):
    from tamperlab.experiments.ctrap_table import summarize
    from tamperlab.report.tables import attack_columns
    from tamperlab.report.hft_table import KIND_TITLES, write_table_report

    groups = attack_columns(ATTACKS)
    assert list(groups) == ["harmful", "aoa", "refusal-ablation", "soft-prompt"]
    # the released-LoRA attack keeps the paper's header; the others are named by their labels
    assert [c.header for c in groups["harmful"]] == ["n=100", "harmful-full-n100", "harmful-n200-lora-r8"]

    per_seed = {"0": {d: {"attacks": {a["label"]: _cell(k, c) for a, k, c in zip(ATTACKS, HS[d], COLLAPSE[d])}}
                      for d in HS}}
    cfg = {"experiment": "ctrap_table", "model": {"name_or_path": "m"}, "data": {"source": "offline", "n_eval": 32},
           "alignment": {"max_steps": 30, "epochs": 1, "batch_size": 4}}
    run = RunDir.create(tmp_path / "k", cfg)
    run.save_metrics({"seeds": [0], "defenses": list(HS), "attacks": ATTACKS, "per_seed": per_seed,
                      "summary": summarize(per_seed, list(HS), ATTACKS)}, judge={"name": "embedded"})
    write_table_report(run)
    md = (run.path / "report.md").read_text()

    sections = md.split("\n## ")
    for kind in ("harmful", "aoa", "refusal-ablation", "soft-prompt"):
        section = next(s for s in sections if s.startswith(KIND_TITLES[kind]))
        cols = groups[kind]
        head = next(line for line in section.splitlines() if line.startswith("| Method"))
        assert [h.strip() for h in head.strip("|").split("|")][1:1 + len(cols)] == [c.header for c in cols], kind
        for metric, counts in (("HS(IO)", HS), ("collapse %", COLLAPSE)):
            table = section.split(f"### {metric}\n", 1)[1].strip().split("\n\n", 1)[0]
            for d in HS:
                row = next(line for line in table.splitlines() if line.startswith(f"| {d} |"))
                for c in cols:
                    k = counts[d][[a["label"] for a in ATTACKS].index(c.label)]
                    assert wilson(k, 32).fmt(3) in row, (kind, metric, d, c.label)
