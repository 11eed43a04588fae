"""Where this process stands, as properties shared by the Accelerator and its mixins."""

from __future__ import annotations

from plait.environment import ProcessEnvironment


class ProcessInfo:
    """HF Accelerate's process properties, read from ``self.environment``."""

    environment: ProcessEnvironment

    @property
    def process_index(self) -> int:
        return self.environment.rank

    @property
    def local_process_index(self) -> int:
        return self.environment.local_rank

    @property
    def num_processes(self) -> int:
        return self.environment.world_size

    @property
    def is_main_process(self) -> bool:
        return self.environment.is_main_process

    @property
    def is_local_main_process(self) -> bool:
        return self.environment.is_local_main_process

    @property
    def is_last_process(self) -> bool:
        return self.environment.is_last_process

    @property
    def use_distributed(self) -> bool:
        return self.environment.world_size > 1
