"""The HF backend's decode cache: each sequence's keys and values in a buffer with room for the tokens it may
still decode.

transformers' `DynamicLayer` grows by concatenation, which copies a layer's whole cache at every decode step;
for a batch of rollouts over long prompts that copy costs as much as the attention itself. Here a decode step
writes its token's keys and values in place. `StaticCache` also writes in place but attends over its full
preallocated length at every step; this layer hands attention only the filled part.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class ReservedLayer(DynamicLayer):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        """`keys`, `values`: [batch, kv_heads, length, head_dim], copied into buffers `room` tokens longer."""
        super().__init__()
        self.lazy_initialization(keys, values)
        self.length = keys.shape[2]
        shape = (*keys.shape[:2], self.length + room, keys.shape[3])
        self.key_buffer, self.value_buffer = keys.new_empty(shape), values.new_empty(shape)
        self.key_buffer[:, :, : self.length] = keys
        self.value_buffer[:, :, : self.length] = values
        self._filled()

    def _filled(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[2]
        if end > self.key_buffer.shape[2]:  # past the room reserved: grow by doubling
            self.key_buffer = grown(self.key_buffer, self.length, 2 * end)
            self.value_buffer = grown(self.value_buffer, self.length, 2 * end)
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._filled()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self._filled()


def grown(buffer: torch.Tensor, filled: int, size: int) -> torch.Tensor:
    """A copy of `buffer`'s first `filled` positions in a buffer of `size` positions."""
    out = buffer.new_empty((*buffer.shape[:2], size, buffer.shape[3]))
    out[:, :, :filled] = buffer[:, :, :filled]
    return out


def reserved_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], room: int) -> Cache:
    """A cache over per-layer (keys, values) with room for `room` more tokens per sequence."""
    return Cache(layers=[ReservedLayer(keys, values, room) for keys, values in layers])
