"""vLLM's prefix cache under genrank's submission order: hit rate from vLLM's own counters.

The tests' tiny model on vLLM (CPU: ``enable_prefix_caching``, ``block_size`` 32, the smallest the
CPU backend takes, so that a query's prefix spans several blocks) scores ``--queries`` queries x
``--docs`` documents of about 100 tokens, queries of about 40 tokens, arriving interleaved
(query 1's first document, query 2's first, ...). Two submission orders, alternately, each on a
fresh workload (another seed) so that no run hits another's blocks:

* ``input``: the pairs as they arrive, in one ``LLM.generate`` call (a naive client);
* ``genrank``: ``VLLMEngine.label_logprobs`` (its own order).

Reported: ``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits`` deltas (``LLM.get_metrics``)
and the share of prompt tokens that are a query's shared prefix, in whole blocks (the most a block
cache can hit). ``--serve`` runs the same against ``vllm serve`` (its /metrics) through
``OpenAIEngine``, with ``input`` sending the prompts in input order.

Run:  python benchmarks/bench_prefix_vllm.py [--serve] [--rounds 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench_prefix import workload
from prometheus_client.parser import text_string_to_metric_families
from report import report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
BLOCK = 32
COUNTERS = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits")


def interleaved(pairs: list[tuple[str, str]], queries: int) -> list[tuple[str, str]]:
    docs = len(pairs) // queries
    return [pairs[q * docs + d] for d in range(docs) for q in range(queries)]


def block_prefix_share(prompts) -> float:
    from genrank.engines.prefix import prefix_groups

    groups, _ = prefix_groups(prompts, min_rows=2, min_prefix=1)
    shared = sum((g.prefix // BLOCK) * BLOCK * (len(g.rows) - 1) for g in groups)
    return shared / sum(map(len, prompts.token_ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--docs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help="against `vllm serve` instead of in-process")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from tiny_model import build_tiny_model
    from transformers import AutoTokenizer

    from genrank import Reranker

    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_model(Path(tmp) / "tiny"))
        tokenizer = AutoTokenizer.from_pretrained(model)
        builder = Reranker(engine="hf", model=model).builder  # renders prompts only
        run = (_serve_runner if args.serve else _in_process_runner)(model, Path(tmp))
        runs: dict[str, list[dict]] = {"input": [], "genrank": []}
        try:
            for n in range(args.rounds):
                for k, mode in enumerate(("input", "genrank") if n % 2 == 0 else ("genrank", "input")):
                    pairs = interleaved(workload(tokenizer, args.queries, args.docs, 100, query_tokens=40,
                                                 seed=2 * n + k + 1), args.queries)
                    prompts = builder.build(*zip(*pairs))
                    queries, hits = run(mode, prompts, builder.labels)
                    runs[mode].append({"queries": queries, "hits": hits, "hit_rate": round(hits / queries, 3),
                                       "prefix_share_in_blocks": round(block_prefix_share(prompts), 3)})
                    print(f"{mode} round {n}: {runs[mode][-1]}", file=sys.stderr)
        finally:
            run.close()
    report({"benchmark": "vLLM prefix cache hit rate", "where": "vllm serve" if args.serve else "in-process",
            "model": "tests/tiny_model.py", "block_size": BLOCK, "queries": args.queries,
            "documents_per_query": args.docs, "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "runs": runs}, args.out)


class _in_process_runner:
    def __init__(self, model: str, tmp: Path):
        import vllm

        from genrank.engines.vllm import VLLMEngine

        self.llm = vllm.LLM(model, dtype="float32", max_model_len=1024, enforce_eager=True, seed=0,
                            enable_prefix_caching=True, block_size=BLOCK, disable_log_stats=False)
        self.engine = VLLMEngine(llm=self.llm)

    def counters(self) -> dict[str, float]:
        return {m.name: m.value for m in self.llm.get_metrics() if m.name in COUNTERS}

    def __call__(self, mode: str, prompts, labels) -> tuple[float, float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        before = self.counters()
        if mode == "input":
            self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts.token_ids],
                              SamplingParams(temperature=0.0, max_tokens=1, detokenize=False), use_tqdm=False)
        else:
            self.engine.label_logprobs(prompts, labels)
        after = self.counters()
        return tuple(after[c] - before[c] for c in COUNTERS)

    def close(self) -> None:
        pass


class _serve_runner:
    def __init__(self, model: str, tmp: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log = tmp / "vllm.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
                 "--port", str(port), "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager",
                 "--enable-prefix-caching", "--block-size", str(BLOCK)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 1200
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited:\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("vllm serve did not start")
            time.sleep(1)
        from genrank.engines.openai import OpenAIEngine

        self.engine = OpenAIEngine(model, base_url=f"{self.url}/v1", api_key="none")

    def counters(self) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        found = {c: 0.0 for c in COUNTERS}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.removesuffix("_total") in COUNTERS:
                    found[sample.name.removesuffix("_total")] += sample.value
        return found

    def __call__(self, mode: str, prompts, labels) -> tuple[float, float]:
        import genrank.engines.openai as remote

        before = self.counters()
        order = remote.grouped_by_query
        if mode == "input":
            remote.grouped_by_query = lambda p: list(range(len(p)))
        try:
            self.engine.label_logprobs(prompts, labels)
        finally:
            remote.grouped_by_query = order
        after = self.counters()
        return tuple(after[c] - before[c] for c in COUNTERS)

    def close(self) -> None:
        self.engine.close()
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(60)


if __name__ == "__main__":
    main()
