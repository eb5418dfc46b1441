"""Replica consistency: every replica's copy of the training state is fingerprinted and compared, so that replicas
that drifted apart (a missed all-reduce, a rank that skipped a step) stop the run instead of training on silently.
"""

from __future__ import annotations

import hashlib

import numpy as np

from dist_ae.errors import TrainingError

DIGEST_WORDS = 8  # sha256 as eight 32-bit words: whole numbers a float64 sum across workers carries exactly


def fingerprint(arrays) -> np.ndarray:
    """The sha256 of the arrays' bytes, as eight 32-bit words (float64)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return np.frombuffer(digest.digest(), dtype=">u4").astype(np.float64)


def as_hex(words: np.ndarray) -> str:
    return np.asarray(words, dtype=">u4").tobytes().hex()


def check_replicas(backend, variables, epoch: int) -> str:
    """Compares every replica's variables across all workers; returns the common fingerprint (hex).

    Raises TrainingError naming the replicas whose state differs from replica 0's.
    """
    per_replica = backend.replica_values(variables)  # this worker's replicas: a list of lists of arrays
    local = np.concatenate([fingerprint(values) for values in per_replica])
    table = backend.gather_across_workers(local).reshape(-1, DIGEST_WORDS)  # one row per replica, in replica order
    local_replicas = len(per_replica)
    differing = [index for index in range(1, table.shape[0]) if not np.array_equal(table[index], table[0])]
    if differing:
        names = ", ".join(f"replica {index} (worker {index // local_replicas})" for index in differing)
        raise TrainingError(
            f"replicas disagree on the training state after epoch {epoch}: {names} "
            f"{'differs' if len(differing) == 1 else 'differ'} from replica 0 (worker 0)"
        )
    return as_hex(table[0])
