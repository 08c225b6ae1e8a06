"""What every tab needs: the workspace folder and the job manager, built once by app.py."""
from __future__ import annotations

from dataclasses import dataclass, field

from backend.jobs import JobManager
from backend.workspace import Workspace


@dataclass(frozen=True)
class AppContext:
    workspace: Workspace
    jobs: JobManager  # safe to call from Gradio's worker threads: it serialises changes with a lock file
    links: dict = field(default_factory=dict, compare=False)  # components one tab offers another, by name
