"""One run spread over several processes (`accelerate launch` or `torchrun`): who does what, and waiting.

The protocol is data-parallel over its two expensive loops, both of which are
deterministic per item: generation shards (an image depends on its prompt's
seed only) and classifier arm × seed jobs (each seeds its own classifier). Item
i goes to process i mod N; the processes meet at barriers and exchange results
through the run's files (generation shards, stage records), so N processes
produce exactly the images and the result of one. Process 0 does the serial
parts (fidelity, metrics, the result JSON) and holds the run lock. The generator's
`fit` runs in every process at once, so generators that train data-parallel
themselves (through accelerate) can.

Plain `dermabench run` is one process; nothing here starts a process group then.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    size: int = 1
    device: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, items: Sequence[T]) -> list[T]:
        """This process's share of `items`: every size-th one, starting at its rank."""
        return [item for index, item in enumerate(items) if index % self.size == self.rank]

    def owns(self, index: int) -> bool:
        return index % self.size == self.rank

    def wait(self) -> None:
        """Block until every process got here."""
        if self.size > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def current() -> Processes:
    """The process group this process was launched in (by accelerate/torchrun), or a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(state.process_index, state.num_processes, str(state.device))
