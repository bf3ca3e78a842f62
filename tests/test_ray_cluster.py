"""A worker node lost mid-run: the job still finishes, every id once (a head and two worker nodes on 127.0.0.1)."""

import functools
import os
import threading
import time
from pathlib import Path

import pytest
from standin_engine import standin_reranker
from test_ray import ROWS, big_input, committed, read_folder

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from genrank.ray import score_files_ray  # noqa: E402


@pytest.fixture
def cluster():
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 << 20,
                                                            "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2, object_store_memory=100 << 20) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_lost_worker_node_leaves_every_id_once(cluster, tmp_path):
    cluster, workers = cluster
    src = big_input(tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = {}

    def run():
        try:
            result["summary"] = score_files_ray(
                src, out, functools.partial(standin_reranker, seconds_per_pair=0.004), id_field="pid",
                chunk_size=100, concurrency=2, num_cpus=0.5)
        except Exception as e:  # reported by the assertion below
            result["error"] = e

    job = threading.Thread(target=run)
    job.start()
    deadline = time.monotonic() + 120
    while committed(out) < 300 and job.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.is_alive(), f"the job ended before a node could be removed: {result}"
    cluster.remove_node(workers[0])
    job.join(timeout=240)
    assert not job.is_alive() and "error" not in result, result
    assert sorted(read_folder(out, "pid")) == sorted(f"p{n}" for n in range(ROWS))
    assert result["summary"].pairs == ROWS
