"""Every job type's typed settings model, by the job type's name: one place to find where a job's options are
declared (their labels, help, groups, choices, defaults and rules), and what the umbrella test walks."""
from __future__ import annotations

from backend.compose.settings import EmaSettings, MergeLorasSettings, MergeSettings
from backend.config.settings import Settings
from backend.data.cache_settings import LatentCacheSettings, TextCacheSettings
from backend.data.dataset_keys import DatasetKeys
from backend.generate.options import GenerateJob
from backend.loraid.report_settings import InterferenceSettings
from backend.train.settings import TrainSettings

JOB_SETTINGS: dict[str, type[Settings]] = {
    "train": TrainSettings,
    "merge": MergeSettings,
    "merge-loras": MergeLorasSettings,
    "ema": EmaSettings,
    "generate": GenerateJob,  # its parts: backend/generate/options.py PARTS
    "dataset": DatasetKeys,
    "cache-latents": LatentCacheSettings,
    "cache-text": TextCacheSettings,
    "interference": InterferenceSettings,
}


def settings_model(job_type: str) -> type[Settings]:
    """The settings model of a job type (a KeyError names the job types that have one)."""
    try:
        return JOB_SETTINGS[job_type]
    except KeyError:
        raise KeyError(f"no settings model for job type `{job_type}`; known: {', '.join(JOB_SETTINGS)}") from None
