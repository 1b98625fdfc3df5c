"""The transparency log at scale: appends per second, proof and root times at 10^6 entries.

- durable single appends (each synced to disk and followed by a signed tree head), on 2,000
  entries;
- batched appends (10,000 entries per sync and tree head) up to 10^6 entries, reporting the
  rate per decade of size, to show that the cost of an append does not grow with the log;
- at 10^6 entries: the time to compute the root, an inclusion proof and a consistency proof
  (mean over 1,000 random ones), and to verify them; peers: the naive root over all leaf hashes
  held in memory (what a log without stored subtrees would recompute).

    python benchmarks/ledger_bench.py            # 10^6 entries
    python benchmarks/ledger_bench.py 100000
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

from medlab.ledger import merkle
from medlab.ledger.keys import Signer
from medlab.ledger.log import TransparencyLog


def main(total: int) -> None:
    """Print the figures."""
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        signer = Signer.load_or_create(Path(tmp) / "bench.key")
        with TransparencyLog(Path(tmp) / "single", signer) as log:
            t = time.perf_counter()
            for i in range(2000):
                log.append({"type": "bench", "i": i})
            single = 2000 / (time.perf_counter() - t)
        print(f"durable single appends (sync + signed head each): {single:8.0f} /s")
        with TransparencyLog(Path(tmp) / "big", signer) as log:
            batch = 10_000
            mark, t = 10_000, time.perf_counter()
            done = 0
            while done < total:
                n = min(batch, total - done)
                log.append_many({"type": "bench", "i": done + k} for k in range(n))
                done += n
                if done >= mark or done == total:
                    rate = done / (time.perf_counter() - t)
                    print(f"batched appends to {done:>9,}: {rate:8.0f} /s (cumulative)")
                    mark *= 10
            size = log.size
            t = time.perf_counter()
            top = log.root()
            root_ms = (time.perf_counter() - t) * 1000
            inclusion_ms = consistency_ms = verify_ms = 0.0
            trials = 1000
            for _ in range(trials):
                i = rng.randrange(size)
                t = time.perf_counter()
                proof = log.inclusion_proof(i)
                inclusion_ms += time.perf_counter() - t
                m = rng.randrange(1, size)
                t = time.perf_counter()
                consistency = log.consistency_proof(m)
                consistency_ms += time.perf_counter() - t
                t = time.perf_counter()
                assert merkle.verify_inclusion(log.leaf(i), i, size, proof, top)
                assert merkle.verify_consistency(m, size, log.root(m), top, consistency)
                verify_ms += time.perf_counter() - t
            print(f"at {size:,} entries:")
            print(f"  root from stored subtrees            {root_ms:8.3f} ms")
            per_proof = inclusion_ms * 1000 / trials
            print(f"  inclusion proof ({len(proof)} hashes)         {per_proof:8.3f} ms")
            print(
                f"  consistency proof                     {consistency_ms * 1000 / trials:8.3f} ms"
            )
            print(f"  verify both (incl. root at size m)    {verify_ms * 1000 / trials:8.3f} ms")
            leaves = [log.leaf(i) for i in range(size)]
            t = time.perf_counter()
            naive = merkle.root(leaves)
            naive_ms = (time.perf_counter() - t) * 1000
            assert naive == top
            print(
                f"  peer: naive root over all leaves     {naive_ms:8.1f} ms "
                f"({naive_ms / max(root_ms, 1e-6):,.0f} x the stored-subtree root)"
            )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
