"""ModelRunner: a scheduled batch -> ForwardBatch tensors -> model -> logits at the rows that need them."""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import torch

from ember import kernels
from ember.engine.scheduler import ScheduledBatch
from ember.model.attention import (
    DECODE_PAD,
    ForwardBatch,
    PrefillSlice,
    decode_head_rows,
    decode_padding_is_invariant,
)
from ember.model.llama import Llama


@dataclass
class RunResult:
    sample_logits: torch.Tensor
    """[len(sample_seqs), vocab]: logits at the last row of each sequence that caught up this step."""
    sample_index: list[int]
    """Positions in the scheduled batch of the sequences that sample."""
    prompt_logits: dict[int, tuple[int, torch.Tensor]]
    """Batch position -> (first position covered, logits for every row of its chunk) for echo logprobs."""
    verify_logits: dict[int, torch.Tensor]
    """Batch position -> logits [num_draft + 1, vocab] of each verify row."""
    row_offsets: list[int]
    """First row of each scheduled sequence in the forward pass (its rows follow contiguously)."""


def zeroed_cache(slots: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A [slots, width] zero tensor. On CPU it lives in an anonymous memory map, which the kernel hands
    out as zero pages on first touch: the budget costs neither start-up time (no writing of zeros) nor
    resident memory until blocks are used."""
    if device.type != "cpu":
        return torch.zeros(slots, width, dtype=dtype, device=device)
    nbytes = slots * width * torch.empty((), dtype=dtype).element_size()
    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).view(slots, width)


class ModelRunner:
    def __init__(self, model: Llama, num_blocks: int, block_size: int, device: torch.device,
                 dtype: torch.dtype = torch.float32, native: bool = True,
                 kv_dtype: torch.dtype = torch.float16) -> None:
        self.model = model
        self.block_size = block_size
        self.device = device
        a = model.args
        assert a.head_dim is not None
        width = a.n_kv_heads * a.head_dim
        slots = num_blocks * block_size
        self.native = native and device.type == "cpu" and dtype == torch.float32 and kernels.load() is not None
        """Decode attention by the native kernel: each row alone over its own length, so always exact."""
        self.decode_pad = max(DECODE_PAD, block_size)  # both powers of two: a multiple of each
        self.padding_invariant = self.native or decode_padding_is_invariant(
            a.n_heads, a.n_kv_heads, a.head_dim, self.decode_pad, device, dtype)
        """Whether a decode row's attention is the same in any batch; if not, draft rows are re-attended
        over their own length so that verification reproduces plain decoding."""
        # K and V are stored in kv_dtype (rounded once, when written) and attended in `dtype`.
        self.kv_caches = [(zeroed_cache(slots, width, kv_dtype, device), zeroed_cache(slots, width, kv_dtype, device))
                          for _ in range(a.n_layers)]

    @staticmethod
    def bytes_per_block(model_args, block_size: int, dtype: torch.dtype = torch.float32) -> int:
        width = model_args.n_kv_heads * model_args.head_dim
        return 2 * model_args.n_layers * block_size * width * torch.empty((), dtype=dtype).element_size()

    def _slots(self, block_ids: tuple[int, ...], start: int, end: int) -> torch.Tensor:
        bs = self.block_size
        pos = torch.arange(start, end)
        table = torch.tensor(block_ids, dtype=torch.long)
        return table[pos // bs] * bs + pos % bs

    def _padded(self, n: int) -> int:
        return -(-n // self.decode_pad) * self.decode_pad

    def build(self, batch: ScheduledBatch) -> tuple[ForwardBatch, list[int]]:
        """Rows: every single-token decode and every draft position first (the batched decode path), then
        prefill chunks. A draft of k tokens becomes k+1 decode rows over the same block table, with
        contexts one longer each. Decode contexts are padded to a multiple of `decode_pad`, which makes a
        row's attention independent of the rest of its batch (checked at start-up): each draft position
        is attended exactly as plain decoding attends it, so a verified draft reproduces plain decoding
        bit for bit, and a seeded request samples the same tokens whatever shares its batch. With the
        native kernel a prefill chunk's rows are such rows too (each over its own context length), so
        chunking and prefix-cache hits do not change a prompt's numbers either. Returns the batch and the
        first row of each scheduled sequence."""
        ids: list[int] = []
        positions: list[torch.Tensor] = []
        slot_parts: list[torch.Tensor] = []
        decode_ctx: list[tuple[tuple[int, ...], int]] = []  # (block table, rows) of each sequence attended row by row
        decode_lens: list[int] = []
        prefills: list[PrefillSlice] = []
        exact: list[tuple[int, int]] = []
        row_offsets = [0] * len(batch.seqs)
        pairs = list(enumerate(zip(batch.seqs, batch.num_tokens, strict=True)))
        decode_like = [n == 1 or k > 0 for n, k in zip(batch.num_tokens, batch.num_draft, strict=True)]
        order = [p for p, d in zip(pairs, decode_like, strict=True) if d]
        order += [p for p, d in zip(pairs, decode_like, strict=True) if not d]
        row = 0
        for i, (seq, n) in order:
            blocks = batch.block_tables[i]
            start = seq.num_computed_tokens
            end = start + n
            row_offsets[i] = row
            ids.extend(seq.input_token_ids[start:end])
            positions.append(torch.arange(start, end))
            if decode_like[i] or self.native:  # the kernel attends prefill rows one by one as well
                slot_parts.append(self._slots(blocks, start, end))
                if n > 1 and not self.padding_invariant:  # draft positions, re-attended alone
                    exact.extend((len(decode_lens) + j, self._padded(start + j + 1)) for j in range(n))
                decode_ctx.append((blocks, n))
                decode_lens.extend(range(start + 1, end + 1))
            else:
                ctx = self._slots(blocks, 0, end)
                slot_parts.append(ctx[start:])
                prefills.append(PrefillSlice(start=row, q_len=n, context_slots=ctx.to(self.device)))
            row += n
        fb = ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.long, device=self.device),
            positions=torch.cat(positions).to(self.device),
            slot_mapping=torch.cat(slot_parts).to(self.device),
            num_decodes=len(decode_lens),
            prefills=prefills,
            exact_decode_rows=exact,
            native=self.native,
        )
        if not decode_ctx:
            return fb, row_offsets
        # Native rows need their contexts' blocks; torch rows need them up to the padded length.
        max_len = max(decode_lens) if self.native else self._padded(max(decode_lens))
        table = self._row_tables(decode_ctx, -(-max_len // self.block_size))
        fb.decode_lens = torch.tensor(decode_lens, dtype=torch.long)
        if self.native:
            fb.decode_tables = table
            fb.block_size = self.block_size
        else:
            bs, rows = self.block_size, len(decode_lens)
            slots = (table.unsqueeze(2) * bs + torch.arange(bs)).view(rows, -1)[:, :max_len]
            lens = fb.decode_lens.unsqueeze(1)
            mask = torch.zeros(rows, max_len)
            mask.masked_fill_(torch.arange(max_len).unsqueeze(0) >= lens, float("-inf"))
            fb.decode_slots = slots.to(self.device)
            fb.decode_head_rows = decode_head_rows(fb.decode_slots, self.model.args.n_kv_heads)
            fb.decode_mask = mask.view(rows, 1, 1, max_len).to(self.device)
        return fb, row_offsets

    @staticmethod
    def _row_tables(seqs: list[tuple[tuple[int, ...], int]], nb: int) -> torch.Tensor:
        """[rows, nb] block table of every row: each (block ids, rows) sequence's table, once per row."""
        table = torch.zeros(len(seqs), nb, dtype=torch.long)
        for i, (blocks, _) in enumerate(seqs):
            table[i, : len(blocks[:nb])] = torch.tensor(blocks[:nb], dtype=torch.long)
        counts = [n for _, n in seqs]
        return table if max(counts) == 1 else table.repeat_interleave(torch.tensor(counts), dim=0)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> RunResult:
        fb, row_offsets = self.build(batch)
        hidden = self.model(fb, self.kv_caches)
        sample_rows: list[int] = []
        sample_index: list[int] = []
        prompt_logits: dict[int, tuple[int, torch.Tensor]] = {}
        verify_logits: dict[int, torch.Tensor] = {}
        for i, (seq, n, k) in enumerate(zip(batch.seqs, batch.num_tokens, batch.num_draft, strict=True)):
            row = row_offsets[i]
            start = seq.num_computed_tokens
            if k:
                verify_logits[i] = self.model.logits(hidden[row : row + n])
            elif start + n == seq.num_tokens:
                sample_rows.append(row + n - 1)
                sample_index.append(i)
            if seq.wants_prompt_logprobs and start < seq.num_prompt_tokens:
                prompt_logits[i] = (start, self.model.logits(hidden[row : row + n]))
        logits = self.model.logits(hidden[sample_rows]) if sample_rows else hidden.new_empty(0, 0)
        return RunResult(logits, sample_index, prompt_logits, verify_logits, row_offsets)
