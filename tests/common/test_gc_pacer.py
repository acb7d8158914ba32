"""common.gc_pacer: passes freeze what survives; every full_every-th pass frees frozen garbage."""

import asyncio
import gc
import weakref

from common.gc_pacer import GcPacer


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_frozen_cyclic_garbage_waits_for_the_full_pass():
    collector = GcPacer("test", full_every=3)
    try:
        node = Node()
        ref = weakref.ref(node)
        collector.collect()  # pass 1: the node is alive, and frozen
        assert gc.get_freeze_count() > 0
        del node
        collector.collect()  # pass 2: frozen objects are not scanned
        assert ref() is not None
        collector.collect()  # pass 3, a full one: unfreezes and frees it
        assert ref() is None
        assert collector.passes == 3
    finally:
        gc.unfreeze()


def test_unfrozen_cyclic_garbage_goes_at_the_next_pass():
    collector = GcPacer("test", full_every=100)
    try:
        node = Node()
        ref = weakref.ref(node)
        del node
        collector.collect()
        assert ref() is None
    finally:
        gc.unfreeze()


def test_run_collects_every_period_until_told_to_stop():
    class Counting(GcPacer):
        def __init__(self, until: asyncio.Event) -> None:
            super().__init__("test", period=0.01)
            self.until = until

        def collect(self) -> float:
            took = super().collect()
            if self.passes == 3:
                self.until.set()
            return took

    async def scenario():
        until = asyncio.Event()
        collector = Counting(until)
        await asyncio.wait_for(collector.run(until), 5.0)
        return collector.passes

    try:
        assert asyncio.run(scenario()) == 3
    finally:
        gc.unfreeze()
