"""Two nodes uploading and pruning checkpoints at their own pace never leave the job without
a step complete on both.

The trainer's own upload-and-prune (:meth:`Checkpoints._upload`, what each node's local rank 0
runs in the background) runs for two nodes in two threads against one real local store. Every
storage call passes a turnstile: a node runs only between the turns the test grants it, so each
interleaving is chosen by the test and replays exactly (no sleeps, no timing). Between any two
calls, with both nodes parked, the test reads the store and checks that once a step was common
to both nodes, one still is — a crash at that moment must find a step to resume from.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from medsft_pipelines.sft.checkpointing import Checkpoints, Topology, tag
from medsft_pipelines.sft.layout import node_checkpoints
from medsft_pipelines.storage import ObjectStore, open_store
from medsft_pipelines.storage.checkpoints import COMPLETE_MARKER, CheckpointStore
from medsft_pipelines.storage.checkpoints import newest_common_step as common_of

NODES = 2


@dataclass
class Node:
    """What the turnstile knows of one node: the call it waits to make, and its history."""

    pending: tuple[str, tuple[Any, ...]] | None = None
    history: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None

    def markers_written(self) -> int:
        return sum(
            1
            for name, args in self.history
            if name == "put_bytes" and str(args[0]).endswith(COMPLETE_MARKER)
        )


class Turnstile:
    """Lets one node at a time make exactly one storage call."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.nodes = [Node() for _ in range(NODES)]
        self.granted: int | None = None

    def gate(self, node: int, name: str, args: tuple[Any, ...]) -> None:
        with self.cv:
            self.nodes[node].pending = (name, args)
            self.cv.notify_all()
            self.cv.wait_for(lambda: self.granted == node)
            self.granted = None
            self.nodes[node].history.append((name, args))

    def finish(self, node: int, error: BaseException | None) -> None:
        with self.cv:
            self.nodes[node].done, self.nodes[node].error = True, error
            self.cv.notify_all()

    def settled(self) -> None:
        """Wait until every node is parked at a call or finished."""
        with self.cv:
            self.cv.wait_for(lambda: all(n.done or n.pending for n in self.nodes), timeout=60)
            assert all(n.done or n.pending for n in self.nodes), "a node never reached a call"

    def grant(self, node: int) -> None:
        with self.cv:
            self.nodes[node].pending = None
            self.granted = node
            self.cv.notify_all()


class GatedBackend:
    """A storage backend whose every call first waits for its node's turn."""

    def __init__(self, inner: Any, node: int, turns: Turnstile) -> None:
        self.inner, self.node, self.turns = inner, node, turns

    def uri(self, key: str) -> str:
        return str(self.inner.uri(key))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        call = getattr(self.inner, name)

        def gated(*args: Any) -> Any:
            if name == "delete_many":
                args = (list(args[0]),)
            self.turns.gate(self.node, name, args)
            result = call(*args)
            return list(result) if name == "list" else result

        return gated


Chooser = Callable[[Turnstile], int]


def run_nodes(
    tmp_path: Path, keep_last: int, steps: list[list[int]], choose: Chooser
) -> list[int | None]:
    """Both nodes start with step 100 complete, then node n uploads ``steps[n]`` (each upload
    followed by its prune), in the order ``choose`` grants turns. Returns the newest common
    step after every call."""
    root = open_store(f"file://{tmp_path}/out")
    truth = [CheckpointStore(root.child(node_checkpoints(n))) for n in range(NODES)]
    for n, store in enumerate(truth):
        folder = tmp_path / f"seed-{n}" / tag(100)
        folder.mkdir(parents=True)
        (folder / "mp_rank_00_model_states.pt").write_bytes(b"100")
        store.upload(folder, 100)
    turns = Turnstile()

    def node_main(n: int) -> None:
        try:
            output = ObjectStore(GatedBackend(root._backend, n, turns))  # the same folder
            topo = Topology(rank=n, world_size=NODES, local_rank=0, local_world_size=1)
            local = tmp_path / f"node-{n}"
            checkpoints = Checkpoints(output, local, topo, keep_last)
            for step in steps[n]:
                folder = local / tag(step)
                folder.mkdir(parents=True)
                (folder / "mp_rank_00_model_states.pt").write_bytes(str(step).encode())
                checkpoints._upload(step, {})
        except BaseException as error:
            turns.finish(n, error)
        else:
            turns.finish(n, None)

    threads = [threading.Thread(target=node_main, args=(n,), daemon=True) for n in range(NODES)]
    for thread in threads:
        thread.start()
    commons: list[int | None] = []
    while True:
        turns.settled()
        commons.append(common_of(truth))
        if all(n.done for n in turns.nodes):
            break
        turns.grant(choose(turns))
    for thread in threads:
        thread.join(timeout=60)
    for node in turns.nodes:
        if node.error is not None:
            raise node.error
    return commons


def assert_common_survives(commons: Iterable[int | None]) -> None:
    seen: list[int | None] = []
    for common in commons:
        seen.append(common)
        assert common is not None, f"no step complete on both nodes after {seen}"


def stale_prune(last: int) -> Chooser:
    """The issue's interleaving: node 0 runs ahead until it is about to delete in the prune
    after its ``last``-th upload (it read node 1's folder before node 1 completed anything
    new); node 1 then uploads and prunes to its end; node 0 finishes its deletions last."""

    def choose(turns: Turnstile) -> int:
        ahead, behind = turns.nodes
        if not ahead.done and not behind.done:
            name = ahead.pending[0] if ahead.pending else ""
            if name not in ("delete", "delete_many") or ahead.markers_written() < last:
                return 0
            return 1
        return 0 if not ahead.done else 1

    return choose


# keepLast -> the steps node 0 uploads while node 1 uploads the steps after it. On the code
# before prune_node both end with no common step: keepLast 1 as A=[100, 300], B=[200];
# keepLast 2 as A=[100, 400, 500], B=[200, 300].
SCENARIOS = {1: ([200, 300], [200]), 2: ([200, 300, 400, 500], [200, 300])}


@pytest.mark.parametrize("keep_last", [1, 2])
def test_stale_prune_interleaving_keeps_a_common_step(tmp_path: Path, keep_last: int) -> None:
    ahead, behind = SCENARIOS[keep_last]
    commons = run_nodes(tmp_path, keep_last, [ahead, behind], stale_prune(len(ahead)))
    assert_common_survives(commons)
    assert commons[-1] == behind[-1]  # node 1's newest step is common once it completed


def bursts(seed: int) -> Chooser:
    """A seeded scheduler that mostly keeps the node it ran last (long leads and lags)."""
    rng = random.Random(seed)
    current = [0]

    def choose(turns: Turnstile) -> int:
        ready = [i for i, n in enumerate(turns.nodes) if not n.done]
        if current[0] not in ready or rng.random() < 0.15:
            current[0] = rng.choice(ready)
        return current[0]

    return choose


def seeds() -> Iterator[int]:
    yield from range(20)


@pytest.mark.parametrize("keep_last", [1, 2])
def test_seeded_interleavings_keep_a_common_step(tmp_path: Path, keep_last: int) -> None:
    """Both nodes upload the same four steps, in 20 seeded interleavings each."""
    for seed in seeds():
        commons = run_nodes(
            tmp_path / str(seed), keep_last, [[200, 300, 400, 500]] * 2, bursts(seed)
        )
        assert_common_survives(commons)
        assert commons[-1] == 500
