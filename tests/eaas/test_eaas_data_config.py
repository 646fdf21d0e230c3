"""Data loaders (generated + hub schema on fixtures), recipes, clear errors for unreachable models/data."""

from __future__ import annotations

import numpy as np
import pytest

from tamperlab.eaas import data as D
from tamperlab.eaas.downstream import DownstreamConfig, classify_accuracy
from tamperlab.errors import ConfigError, ResourceError


def test_generated_tasks_are_balanced_deterministic_and_labelled_as_generated():
    a = D.load_task("gen_topic", "train", 200, seed=1)
    assert a.texts == D.load_task("gen_topic", "train", 200, seed=1).texts
    assert np.bincount(a.labels).tolist() == [50, 50, 50, 50]
    assert a.provenance["generated"] is True and "stand-in" in a.provenance["source"]
    test = D.load_task("gen_topic", "test", 200, seed=1)
    assert not set(a.texts) & set(test.texts)
    s = D.load_task("gen_sentiment", "train", 40, seed=0)
    assert s.label_names == ["negative", "positive"] and len(set(s.texts)) == 40


def test_generated_labels_are_learnable_from_embeddings(bow_embedder):
    tr, te = D.load_task("gen_spam", "train", 200, 0), D.load_task("gen_spam", "test", 100, 0)
    acc = classify_accuracy(bow_embedder.encode(tr.texts), np.array(tr.labels), bow_embedder.encode(te.texts),
                            np.array(te.labels), DownstreamConfig(epochs=10), seed=0)
    assert acc > 0.8
    rng = np.random.default_rng(0)
    chance = classify_accuracy(rng.standard_normal((200, 32)), np.array(tr.labels),
                               rng.standard_normal((100, 32)), np.array(te.labels), DownstreamConfig(), seed=0)
    assert chance < 0.75


class FakeDataset(list):
    """A `datasets.Dataset`-shaped list of dicts."""

    class _Feat:
        names = ["negative", "positive"]

    features = {"label": _Feat()}


def test_hub_loader_on_a_fixture_in_the_real_schema():
    rows = FakeDataset([{"sentence": f"review {i}", "label": i % 2, "idx": i} for i in range(30)] +
                       [{"sentence": "  ", "label": 0, "idx": 99}])
    calls = []

    def loader(path, config, split):
        calls.append((path, config, split))
        return rows

    t = D.hub_task("sst2", "test", 10, seed=0, loader=loader)
    assert calls == [("glue", "sst2", "validation")]
    assert len(t) == 10 and all(x.startswith("review") for x in t.texts)
    assert t.label_names == ["negative", "positive"] and t.provenance == {
        "source": "hf:glue/sst2", "generated": False, "split": "test", "seed": 0, "n": 10}


def test_hub_loader_offline_fails_with_a_clear_message():
    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'ag_news' on the Hub (LocalEntryNotFoundError)")

    with pytest.raises(ResourceError, match="cannot load dataset 'ag_news'.*Offline, use a generated task"):
        D.hub_task("ag_news", "train", 10, seed=0, loader=offline)


def test_mind_reads_news_tsv(tmp_path):
    tsv = tmp_path / "news.tsv"
    tsv.write_text("\n".join(f"N{i}\t{'sports' if i % 2 else 'finance'}\tsub\ttitle {i}\tabstract"
                             for i in range(50)))
    t = D.load_task("mind", "train", 100, seed=0, mind_path=str(tsv))
    assert len(t) == 40 and t.label_names == ["finance", "sports"]
    assert all(t.label_names[y] == ("sports" if int(x.split()[1]) % 2 else "finance")
               for x, y in zip(t.texts, t.labels))
    with pytest.raises(ConfigError, match="mind_path"):
        D.load_task("mind", "train", 10, seed=0)
    with pytest.raises(ConfigError, match="unknown task"):
        D.load_task("imdb", "train", 10, seed=0)


def test_unreachable_hub_model_gives_a_clear_error():
    from tamperlab.eaas.embedder import load_sentence_model

    with pytest.raises(ResourceError, match="not a local folder and the Hugging Face Hub could not provide it"):
        load_sentence_model("no-such-org-tamperlab/no-such-model")


def test_recipes_load_strictly():
    from tamperlab.experiments.base import load_recipe

    demo = load_recipe("demo_eaas")
    full = load_recipe("eaas_full")
    assert demo.cfg.data.n_train < full.cfg.data.n_train
    assert {s.watermark for s in full.cfg.scenarios} == {"embmarker", "warden", "saw"}
    with pytest.raises(ConfigError, match="did you mean 'candidates'"):
        load_recipe("demo_eaas", ["spa.candidate=3"])
    with pytest.raises(ConfigError, match="unknown watermark 'wardn'"):
        load_recipe("demo_eaas", ["scenarios=[{name: x, watermark: wardn}]"])
    with pytest.raises(ConfigError, match="n_suffixes"):
        load_recipe("demo_eaas", ["spa.n_suffixes=50"])


def test_serve_refuses_a_non_eaas_recipe(tmp_path):
    from tamperlab.eaas.server import serve_recipe

    r = tmp_path / "x.yaml"
    r.write_text("experiment: eaas\nprovider: {watermark: nope}\n")
    with pytest.raises(ConfigError, match="unknown watermark 'nope'"):
        serve_recipe(str(r))
