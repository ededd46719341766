"""The KV block pool: reference counts, a prefix-cache hash chain, and an LRU free list.

A sequence's KV lives in fixed-size blocks listed by its block table. A full block may be *cached*: it
gets a key H(parent key, its token ids, scope), so the key of block i covers every token before it, and a
later request whose prompt hashes to the same chain reuses the block instead of recomputing. The scope
(EngineRequest.cache_scope: the tenant and its isolation key) seeds the chain's root, so two scopes never
share a block, even for the same tokens.

    free queue (LRU first):  [ b7 | b3 | b9 | ... ]   ref == 0; cached ones keep their key until reused
    hash map:                key -> block id           cached blocks, referenced or free

Invariants: a block is in the free queue iff its ref count is 0; a key maps to at most one block; a
block's `key` is set iff it is in the hash map. Allocation takes from the LRU end and drops that block's
key (eviction). Freeing walks a sequence's blocks tail-first so that tails are evicted before heads.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    key: bytes | None = None
    token_ids: tuple[int, ...] = ()


def block_key(parent: bytes | None, token_ids: Sequence[int], scope: str | None) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(parent if parent is not None else (b"root:" + (scope or "").encode("utf-8", "surrogatepass")))
    h.update(b"|".join(str(t).encode() for t in token_ids))
    return h.digest()


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[bytes, int] = {}
        self.hits = 0
        self.queries = 0
        self._touched = bytearray(num_blocks)
        self.num_touched = 0
        """Distinct blocks ever handed out. On CPU the cache is a lazily-filled memory map, so resident
        memory grows by one block's bytes each time this does, up to the whole budget: growth a leak
        watcher must not mistake for a leak."""

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def allocate(self, n: int) -> list[int] | None:
        """n fresh blocks with ref 1, or None when the pool cannot supply them (nothing changes)."""
        if n > len(self.free):
            return None
        out = []
        for _ in range(n):
            bid, _ = self.free.popitem(last=False)
            block = self.blocks[bid]
            if block.key is not None:
                del self.cached[block.key]
                block.key = None
                block.token_ids = ()
            block.ref_count = 1
            if not self._touched[bid]:
                self._touched[bid] = 1
                self.num_touched += 1
            out.append(bid)
        return out

    def free_blocks(self, block_ids: Sequence[int]) -> None:
        """Drop one reference from each block; tail first, so a chain's tail is evicted before its head."""
        for bid in reversed(block_ids):
            block = self.blocks[bid]
            block.ref_count -= 1
            if block.ref_count < 0:
                raise RuntimeError(f"block {bid} freed more often than allocated")
            if block.ref_count == 0:
                self.free[bid] = None

    def match_prefix(self, token_ids: Sequence[int], scope: str | None, max_blocks: int) -> list[int]:
        """Take a reference on the longest run of cached full blocks of `scope` that starts `token_ids`."""
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        matched: list[int] = []
        parent: bytes | None = None
        for i in range(min(max_blocks, len(token_ids) // bs)):
            chunk = tuple(token_ids[i * bs : (i + 1) * bs])
            key = block_key(parent, chunk, scope)
            bid = self.cached.get(key)
            # A hash collision must never serve another prompt's KV: compare the tokens too.
            if bid is None or self.blocks[bid].token_ids != chunk:
                break
            matched.append(bid)
            parent = key
        for bid in matched:
            block = self.blocks[bid]
            if block.ref_count == 0:
                del self.free[bid]
            block.ref_count += 1
        self.queries += max_blocks
        self.hits += len(matched)
        return matched

    def cache_full_blocks(
        self, block_ids: Sequence[int], token_ids: Sequence[int], num_cached: int, num_full: int,
        parent: bytes | None, scope: str | None,
    ) -> bytes | None:
        """Give keys to blocks num_cached..num_full-1 of a sequence; returns the last key of the chain.

        `parent` is the key of block num_cached-1 (None when num_cached == 0).
        """
        bs = self.block_size
        for i in range(num_cached, num_full):
            chunk = tuple(token_ids[i * bs : (i + 1) * bs])
            key = block_key(parent, chunk, scope)
            block = self.blocks[block_ids[i]]
            if self.enable_prefix_caching and block.key is None and key not in self.cached:
                block.key = key
                block.token_ids = chunk
                self.cached[key] = block.block_id
            parent = key
        return parent
