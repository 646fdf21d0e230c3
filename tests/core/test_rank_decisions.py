"""Decisions taken before a collective must be the main process's, on every rank: a rank that looked for itself
(a folder another rank made a moment earlier, an adapter not yet written) skipped a barrier or reloaded while the
other trained, and a 2-process `demo_fingerprints --smoke` hung (found 2026-12-01)."""

from __future__ import annotations

from tamperlab import distributed, training


def _as_rank_1(monkeypatch, main_answer):
    """This process plays rank 1: its broadcast returns the main process's (error, value)."""
    joined: list[object] = []
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    monkeypatch.setattr(distributed, "broadcast", lambda v: joined.append(v) or (None, main_answer))
    return joined


def test_last_checkpoint_takes_the_main_process_answer(tmp_path, monkeypatch):
    joined = _as_rank_1(monkeypatch, str(tmp_path / "out" / "checkpoint-4"))
    # this rank sees no folder at all, yet joins the collective and takes the main process's checkpoint
    assert training.last_checkpoint(tmp_path / "absent") == str(tmp_path / "out" / "checkpoint-4")
    assert len(joined) == 1


def test_last_checkpoint_on_a_rank_that_sees_a_checkpoint_the_main_process_does_not(tmp_path, monkeypatch):
    (tmp_path / "checkpoint-2").mkdir()
    joined = _as_rank_1(monkeypatch, None)
    assert training.last_checkpoint(tmp_path) is None
    assert len(joined) == 1
    assert (tmp_path / "checkpoint-2").is_dir()  # only the main process deletes incomplete checkpoints


def test_single_process_still_finds_and_cleans(tmp_path):
    from tamperlab.training import checkpoint_complete

    (tmp_path / "checkpoint-3").mkdir()  # incomplete (a kill during the save): deleted
    assert not checkpoint_complete(tmp_path / "checkpoint-3")
    assert training.last_checkpoint(tmp_path) is None
    assert not (tmp_path / "checkpoint-3").exists()
    assert training.last_checkpoint(tmp_path / "absent") is None


def test_eaas_refuses_several_processes_in_one_line(monkeypatch):
    """The EaaS stealer has no sharded training path: under `accelerate launch` the experiment stops at once with
    a ConfigError (exit 2, one line) instead of crashing in the copier's trainer minutes later."""
    import pytest

    from tamperlab.errors import ConfigError
    from tamperlab.experiments.eaas import EaaSConfig, EaaSExperiment

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    exp = EaaSExperiment(EaaSConfig.__new__(EaaSConfig))  # refused before the config or run dir is touched
    with pytest.raises(ConfigError, match="runs in one process .2 were launched"):
        exp.run(None)  # type: ignore[arg-type]
