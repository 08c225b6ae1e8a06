"""The machine's state for the app header: CPU, RAM and GPUs."""
from backend.system.monitor import status_line, system_status

__all__ = ["status_line", "system_status"]
