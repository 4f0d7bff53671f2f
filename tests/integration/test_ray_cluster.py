"""RayInferencePool on a real two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: a
head and a worker node, 1 CPU each, so each node fits exactly one actor): actors spread over the
nodes, both serve, and losing a node costs only the actor on it — its requests fail in time with
InferenceError, and the pool keeps serving on the other node.

The module owns its Ray: it shuts down any Ray another module left running, and its own cluster on
the way out. Bounds are generous (2 busy cores): every wait has a limit, every loop a count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from controller.errors import InferenceError
from workers.tiny_model import build_tiny_model

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from workers.ray_pool import RayInferencePool  # noqa: E402

DARK = np.zeros((160, 160), np.uint8)
BRIGHT = np.full((160, 160), 255, np.uint8)
SLACK_S = 1.0  # how long after its deadline a failure may surface on 2 busy cores


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny.onnx", version="tiny-c")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head node (1 CPU) with this process connected as the driver. Module-scoped so that Ray's
    long-lived threads exist before any test's thread-leak check takes its 'before' snapshot."""
    ray.shutdown()  # another module's Ray instance: this module needs its own
    c = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture
def worker_node(cluster: Cluster) -> Iterator[Any]:
    """A second node (1 CPU) for one test; removed afterwards unless the test removed it."""
    node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes(timeout=60)
    yield node
    if node in cluster.worker_nodes:
        cluster.remove_node(node)


async def node_ids(pool: RayInferencePool) -> list[str]:
    refs = [h.node_id.remote() for h in pool.actor_handles]
    return list(await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(r.future()) for r in refs)), 30))


async def test_spread_actors_run_on_both_nodes_and_both_serve(model: str, worker_node: Any) -> None:
    head = ray.get_runtime_context().get_node_id()  # the driver runs on the head node
    async with RayInferencePool(
        model, num_actors=2, spread=True, max_in_flight_per_actor=1, start_timeout_s=120
    ) as pool:
        assert sorted(await node_ids(pool)) == sorted([head, worker_node.node_id])
        # One in flight per actor: two concurrent requests take one actor each.
        dark, bright = await asyncio.gather(
            pool.infer(DARK, time.monotonic() + 10), pool.infer(BRIGHT, time.monotonic() + 10)
        )
        assert (dark.reject, bright.reject) == (False, True)
        assert {dark.worker.split("@")[0], bright.worker.split("@")[0]} == {"infer-0", "infer-1"}


async def test_losing_a_node_fails_its_requests_in_time_and_the_pool_keeps_serving(
    cluster: Cluster, model: str, worker_node: Any
) -> None:
    async with RayInferencePool(
        model, num_actors=2, spread=True, max_in_flight_per_actor=1, start_timeout_s=120, recovery_backoff_s=(0.2, 1.0)
    ) as pool:
        names = dict(zip(await node_ids(pool), ["infer-0", "infer-1"], strict=True))
        lost, kept = names[worker_node.node_id], names[ray.get_runtime_context().get_node_id()]
        cluster.remove_node(worker_node)

        errors: list[BaseException] = []
        for _ in range(40):  # rounds of two concurrent requests: while both actors are in rotation,
            # one goes to each, so the lost actor keeps getting frames until the pool notices
            deadline = time.monotonic() + 3.0
            outcomes = await asyncio.gather(
                pool.infer(DARK, deadline), pool.infer(DARK, deadline), return_exceptions=True
            )
            assert time.monotonic() < deadline + SLACK_S, "a request outlived its deadline"
            errors += [o for o in outcomes if isinstance(o, BaseException)]
            if pool.healthy_actors == [kept]:
                break
        else:
            pytest.fail(f"the pool never took {lost} out of rotation")

        assert errors and all(isinstance(e, InferenceError) for e in errors), errors
        assert any(f"actor {lost}" in str(e) for e in errors), errors  # the lost actor's own requests failed
        for _ in range(3):  # the kept actor serves on its own
            result = await pool.infer(BRIGHT, time.monotonic() + 5)
            assert result.reject and result.worker.startswith(f"{kept}@")
