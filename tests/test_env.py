"""Settings from the environment: each program reads and validates only its own variables."""

from __future__ import annotations

import pytest

from base.env import CommonSettings, SettingsError, env_table
from sync.settings import SyncSettings
from worker.settings import WorkerSettings


def test_shared_variables_are_read_by_both_programs() -> None:
    env = {"MODEL_CACHE_PATH": "/cache", "TABULAR_LOG_LEVEL": "DEBUG",
           "TABULAR_SYNC_MODELS": "m=file:///x"}  # fmt: skip
    for cls in (WorkerSettings, SyncSettings):
        settings = cls.from_env(env)
        assert (settings.model_cache_path, settings.log_level) == ("/cache", "DEBUG")
        assert settings.sync_models == "m=file:///x"


def test_a_program_ignores_the_other_programs_variables() -> None:
    worker_only = {"TABULAR_MAX_ROWS_PER_JOB": "many", "PORT": "http"}
    sync_only = {"TABULAR_CACHE_QUOTA_BYTES": "-5", "TABULAR_SYNC_LOCK_TTL_SECONDS": "1.5"}
    assert SyncSettings.from_env(worker_only).cache_quota_bytes == 0
    assert WorkerSettings.from_env(sync_only).max_rows_per_job == 10_000
    with pytest.raises(SettingsError, match="TABULAR_MAX_ROWS_PER_JOB"):
        WorkerSettings.from_env(worker_only)
    with pytest.raises(SettingsError, match="TABULAR_CACHE_QUOTA_BYTES"):
        SyncSettings.from_env(sync_only)


def test_the_tables_split_the_variables() -> None:
    common = {name for name, _, _ in env_table(CommonSettings)}
    worker = {name for name, _, _ in env_table(WorkerSettings)}
    sync = {name for name, _, _ in env_table(SyncSettings)}
    assert "MODEL_CACHE_PATH" in common and "TABULAR_LOG_LEVEL" in common
    assert "TABULAR_EMBEDDING_MODEL" in worker and "TABULAR_SYNC_LOCK_TTL_SECONDS" in sync
    assert not (common & worker or common & sync or worker & sync)
    all_worker = {name for name, _, _ in env_table(WorkerSettings, own=False)}
    assert all_worker == common | worker


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("yes", True), ("off", False), ("FALSE", False)]
)
def test_booleans(raw: str, expected: bool) -> None:
    assert WorkerSettings.from_env({"TABULAR_LLM_ENABLED": raw}).llm_enabled is expected


def test_a_bad_value_names_its_variable() -> None:
    with pytest.raises(SettingsError, match="TABULAR_LLM_ENABLED='maybe'"):
        WorkerSettings.from_env({"TABULAR_LLM_ENABLED": "maybe"})
