"""Compact, bit-exact storage of per-token arrays.

Token ids are stored as little-endian int32 bytes and behaviour logprobs as little-endian float32
bytes: 8 bytes per token instead of ~20 characters of JSON, and the floats come back bit-for-bit.
Loaded arrays are read-only views of the stored bytes (no copy): nothing downstream writes into
a tree's arrays.
"""

from __future__ import annotations

import numpy as np

from treerpo.trees import LOGPROB_DTYPE, TOKEN_DTYPE


def pack_token_ids(token_ids: np.ndarray) -> bytes:
    return np.ascontiguousarray(token_ids, dtype=TOKEN_DTYPE).tobytes()


def unpack_token_ids(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=TOKEN_DTYPE)


def pack_logprobs(logprobs: np.ndarray) -> bytes:
    return np.ascontiguousarray(logprobs, dtype=LOGPROB_DTYPE).tobytes()


def unpack_logprobs(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=LOGPROB_DTYPE)
