"""The `hf` backend: one transformers + peft model carrying both agents' adapters, with its own decoding loop.

Adapters are switched by name on the same weights, so an online update is visible to the next call at once.

KV reuse. A Flow batch is mostly shared prefixes: a question's rollouts all continue prompt + a prefix of the
main chain, and a question's Stop prompts repeat the question and each partial answer. `generate` therefore
encodes a batch's prompts once as packed token trees (`prefix_tree.pack`: every shared token once), gathers each
sequence's left-padded KV cache out of the packed one and decodes from there; `next_token_logprobs` (the Stop
LLM's Yes/No, MCTS-DPO's self-evaluation) reads the next-token distribution off the same packed forward.
transformers' `generate` cannot start from such a cache (it encodes every row in full), which is why decoding is
written here: a plain sampling loop (temperature, one for the call or one per prompt, then transformers'
`TopPLogitsWarper`) over a cache that writes each step in place (`decode_cache`), which drops each sequence from
the batch as soon as it ends (EOS, its own token budget, or one of the call's stop sequences), where `generate`
keeps computing finished rows until the longest one ends.
Across calls, the KV of every decoded sequence and every Stop prompt is kept (`kv_store.KVStore`, per adapter,
dropped when the weights change) so that the next chunk of a partial answer, a rollout from a prefix of its main
chain, or the next Stop prompt encodes only its new tokens. `reset_cache` forgets it: the Flow calls it when new
questions start, so a run's results never depend on calls made before them (a resumed run matches one never
killed). Every sequence samples from its own generator, seeded per prompt, so a continuation is a function of
(weights, its prompt, budget, temperature, seed) whatever else the call holds; reused KV equals recomputed KV, and
a batch of one equals a batch of many, up to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import DynamicCache, TopPLogitsWarper
from transformers.cache_utils import Cache

from harness.generation.backend import (
    Sample,
    StopSequences,
    end_token_ids,
    prompt_seeds,
    temperatures,
    token_budgets,
)
from harness.generation.decode_cache import reserved_cache
from harness.generation.kv_store import KVStore, weights_fingerprint
from harness.generation.prefix_tree import Packing, pack


class HFBackend:
    def __init__(self, model: torch.nn.Module, tokenizer, max_batch: int = 64, row_tokens: int = 256,
                 kv_store_tokens: int = 16384) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        """Sequences decoded (or Stop prompts read) together."""
        self.row_tokens = row_tokens
        """Tokens per packed prompt-tree row: longer rows share more, but attention grows with its square."""
        self.stores: dict[str | None, KVStore] = {}
        """Per adapter, the KV of sequences decoded since the last reset (at most `kv_store_tokens` tokens)."""
        self.kv_store_tokens = kv_store_tokens
        self.pad_token_id = tokenizer.pad_token_id
        self.eos_token_ids = end_token_ids(tokenizer, model)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.prefill_tokens = 0
        """Prompt tokens asked for so far (what encoding every prompt in full would cost)."""
        self.cached_tokens = 0
        """Of those, tokens not encoded: shared with another prompt of the call, or served by the KV store."""

    @contextlib.contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        """Run the block with adapter `name` active, or with adapters disabled (None = base model)."""
        if not hasattr(self.model, "peft_config"):
            if name is not None:
                raise ValueError(f"adapter {name!r} requested but the model has no adapters")
            yield
        elif name is None:
            with self.model.disable_adapter():
                yield
        else:
            if name not in self.model.peft_config:
                raise ValueError(f"unknown adapter {name!r} (have {sorted(self.model.peft_config)})")
            self.model.set_adapter(name)
            yield

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], adapter: str | None, max_new_tokens: int | list[int],
        temperature: float | list[float], top_p: float = 1.0, n: int = 1, seed: int | list[int] = 0,
        stop: list[list[int]] | None = None,
    ) -> list[list[Sample]]:  # as Backend.generate
        budgets = token_budgets(max_new_tokens, len(prompts))
        temps = temperatures(temperature, len(prompts))
        seeds = prompt_seeds(seed, len(prompts), n)
        stops = StopSequences(stop)
        out: list[list[Sample]] = [[] for _ in prompts]
        store = self._store(adapter)
        with self.adapter(adapter):
            for _, group in self._groups(prompts, max(1, self.max_batch // n)):
                samples = self._generate([prompts[i] for i in group], [budgets[i] for i in group],
                                         [temps[i] for i in group], top_p, n, [seeds[i] for i in group], store,
                                         stops)
                for i, row in zip(group, samples):
                    out[i] = row
        return out

    @torch.no_grad()
    def next_token_logprobs(self, prompts: list[list[int]], adapter: str | None,
                            token_ids: list[int]) -> list[list[float]]:
        """From one forward over the packed prompts after their longest prefixes in the KV store; the prompts' KV
        joins the store (the next round's Stop prompts extend these up to the end of their partial answers)."""
        columns = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        out: list[list[float]] = [[] for _ in prompts]
        store = self._store(adapter)
        with self.adapter(adapter):
            # the store changes as each forward's prompts join it: prefixes are looked up again per forward
            for group in self._read_groups(prompts, store.matches(prompts)):
                chosen = [prompts[i] for i in group]
                packing, cache, hidden = self._encode_with_store(chosen, store)
                for i, values in zip(group, torch.log_softmax(self._head(hidden), -1)[:, columns].tolist()):
                    out[i] = values
                if store.max_tokens:
                    self._keep_prompts(store, cache, packing, chosen)
        return out

    def _keep_prompts(self, store: KVStore, cache: DynamicCache, packing: Packing, prompts: list[list[int]]) -> None:
        """Store each packed prompt's KV: one gather per layer for all prompts, then a copy of each one's part."""
        rows = torch.tensor([row for row, path in zip(packing.rows, packing.paths) for _ in path], device=self.device)
        columns = torch.tensor([c for path in packing.paths for c in path], device=self.device)
        layers = [(layer.keys[rows, :, columns].transpose(0, 1), layer.values[rows, :, columns].transpose(0, 1))
                  for layer in cache.layers]  # per layer [kv_heads, all prompts' tokens, head_dim]
        start = 0
        for prompt in prompts:
            end = start + len(prompt)
            store.add(tuple(prompt), [(keys[:, start:end].clone(), values[:, start:end].clone())
                                      for keys, values in layers])
            start = end

    def _store(self, adapter: str | None) -> KVStore:
        """The adapter's KV store, emptied if the weights changed since it was filled."""
        store = self.stores.setdefault(adapter, KVStore(self.kv_store_tokens))
        store.check(weights_fingerprint(self.model))
        return store

    def _encode_with_store(self, prompts: list[list[int]], store: KVStore
                           ) -> tuple[Packing, DynamicCache, torch.Tensor]:
        """Encode the prompts after their longest prefixes in the store: the packing, the KV of all its columns
        (past and new) and the hidden state at each prompt's last token."""
        packing = pack(prompts, self.row_tokens, self.pad_token_id, store.matches(prompts))
        past = store.past(packing.past, packing.past_width) if packing.past_width else None
        cache = DynamicCache(ddp_cache_data=past)
        return packing, cache, self._encode(packing, cache)

    def adapters_updated(self, names: list[str]) -> None:
        """Nothing to do: the adapters are trained in place on the same model object (and the KV store sees the
        weights change)."""

    def reset_cache(self, adapter: str | None) -> None:
        if adapter in self.stores:
            self.stores[adapter].clear()

    def _read_groups(self, prompts: list[list[int]], hits: list[tuple[int, int] | None]) -> Iterator[list[int]]:
        """Prompt indices, a forward pass at a time, for reading next-token distributions, so that no forward pads
        its rows to a much longer prompt's width: prompts with no prefix in the store (packed together as token
        trees) apart from those with one. The latter come in units of one kept prefix (which may share a packed
        row: one trace's Stop prompts at several boundaries), by their longest new suffix, cut where padding
        every unit to the widest would cost more than a quarter extra. At most `max_batch` prompts a forward."""
        cold = sorted((i for i, hit in enumerate(hits) if hit is None), key=lambda i: prompts[i])
        yield from (cold[start : start + self.max_batch] for start in range(0, len(cold), self.max_batch))
        by_prefix: dict[tuple[int, int], list[int]] = {}
        for i, hit in enumerate(hits):
            if hit is not None:
                by_prefix.setdefault(hit, []).append(i)
        slices = [unit[start : start + self.max_batch] for unit in by_prefix.values()
                  for start in range(0, len(unit), self.max_batch)]
        units = sorted((max(len(prompts[i]) - hits[i][1] for i in unit), prompts[unit[0]], unit) for unit in slices)
        group: list[int] = []
        widths: list[int] = []
        for w, _, unit in units:
            if group and (len(group) + len(unit) > self.max_batch or (len(widths) + 1) * w > 1.25 * (sum(widths) + w)):
                yield group
                group, widths = [], []
            group += unit
            widths.append(w)
        if group:
            yield group

    @staticmethod
    def _groups(prompts: list[list[int]], size: int) -> Iterator[tuple[int, list[int]]]:
        """Prompt indices in sorted order (prompts sharing a prefix end up together), `size` at a time."""
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        for start in range(0, len(order), size):
            yield start, order[start : start + size]

    def _encode(self, packing: Packing, cache: DynamicCache | None) -> torch.Tensor:
        """One forward over the packed prompt trees (after the past already in `cache`); the hidden state at each
        prompt's last token [prompts, H]."""
        self.prefill_tokens += sum(map(len, packing.paths))
        self.cached_tokens += sum(map(len, packing.paths)) - packing.nodes
        mask = torch.zeros(packing.mask.shape, dtype=self.dtype).masked_fill(~packing.mask, torch.finfo(self.dtype).min)
        hidden = self.model.get_decoder()(
            input_ids=packing.ids.to(self.device), attention_mask=mask.to(self.device),
            position_ids=packing.positions.to(self.device), past_key_values=cache, use_cache=cache is not None,
        ).last_hidden_state
        last = torch.tensor([path[-1] - packing.past_width for path in packing.paths], device=self.device)
        return hidden[torch.tensor(packing.rows, device=self.device), last]

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden).float()

    def _step(self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Cache) -> torch.Tensor:
        """Next-token logits after feeding one token per sequence."""
        hidden = self.model.get_decoder()(input_ids=tokens[:, None], attention_mask=mask,
                                          position_ids=positions[:, None], past_key_values=cache,
                                          use_cache=True).last_hidden_state[:, -1]
        return self._head(hidden)

    def _sequence_cache(self, packing: Packing, cache: DynamicCache, prompts: list[list[int]], copies: list[int],
                        room: int) -> tuple[Cache, torch.Tensor]:
        """Each sequence's left-padded KV cache gathered from the packed trees (with room for `room` decoded
        tokens), and its attention mask."""
        width = max(len(prompts[i]) for i in copies)
        columns = torch.zeros((len(copies), width), dtype=torch.long)
        mask = torch.zeros((len(copies), width), dtype=torch.long)
        for seq, i in enumerate(copies):
            columns[seq, width - len(prompts[i]) :] = torch.tensor(packing.paths[i])
            mask[seq, width - len(prompts[i]) :] = 1
        rows = torch.tensor([packing.rows[i] for i in copies])[:, None].to(self.device)
        columns = columns.to(self.device)
        layers = [(layer.keys[rows, :, columns].transpose(1, 2), layer.values[rows, :, columns].transpose(1, 2))
                  for layer in cache.layers]
        return reserved_cache(layers, room), mask.to(self.device)

    @staticmethod
    def _keep(store: KVStore, cache: Cache, row: int, tokens: list[int]) -> None:
        """Store the KV of the sequence in batch row `row` (its fed tokens: prompt + all but the last sampled,
        right-aligned in the left-padded cache)."""
        end = cache.get_seq_length()
        start = end - len(tokens)
        store.add(tuple(tokens), [(layer.keys[row, :, start:end].clone(), layer.values[row, :, start:end].clone())
                                  for layer in cache.layers])

    def _sample(self, logits: torch.Tensor, temperature: torch.Tensor, top_p: float,
                generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """A token per row and its log-probability under the sampling distribution (greedy rows, temperature <= 0:
        the argmax and the model's log-probability).

        Each sampled row draws one uniform number from its own generator and takes the token where the cumulative
        distribution passes it (inverse-CDF sampling), so its draw does not depend on the other rows of the batch;
        the cumulative sums run batched, which is several times faster than a `torch.multinomial` call per row
        over a large vocabulary."""
        greedy = temperature <= 0
        scores = logits / torch.where(greedy, 1.0, temperature)[:, None]
        if top_p < 1.0:
            scores = torch.where(greedy[:, None], scores, TopPLogitsWarper(top_p)(None, scores))
        logprobs = torch.log_softmax(scores, -1)
        token = logits.argmax(-1)
        rows = torch.nonzero(~greedy)[:, 0]
        if len(rows):
            uniform = torch.cat([torch.rand(1, generator=generators[row], device=self.device)
                                 for row in rows.tolist()])
            cdf = logprobs[rows].exp().cumsum(-1)
            drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)[:, 0]
            token[rows] = drawn.clamp(max=logits.shape[-1] - 1)
        return token, logprobs.gather(-1, token[:, None])[:, 0]

    def _generate(self, prompts: list[list[int]], budgets: list[int], temps: list[float], top_p: float, n: int,
                  seeds: list[int], store: KVStore, stops: StopSequences) -> list[list[Sample]]:
        packing, tree_cache, last_hidden = self._encode_with_store(prompts, store)
        copies = [i for i in range(len(prompts)) for _ in range(n)]  # sequence -> its prompt
        cache, mask = self._sequence_cache(packing, tree_cache, prompts, copies, max(budgets))
        del tree_cache
        logits = self._head(last_hidden)[torch.tensor(copies, device=self.device)]
        positions = torch.tensor([len(prompts[i]) for i in copies], device=self.device)
        temperature = torch.tensor([float(temps[i]) for i in copies], device=self.device)
        # sequence s = continuation j of prompt i draws from seed[i] + j
        generators = [torch.Generator(self.device).manual_seed(seeds[i] + s % n) for s, i in enumerate(copies)]
        tokens: list[list[int]] = [[] for _ in copies]
        logprobs: list[list[float]] = [[] for _ in copies]
        active = list(range(len(copies)))
        while True:
            token, logprob = self._sample(logits, temperature, top_p, generators)
            keep = []
            for row, (seq, t, lp) in enumerate(zip(active, token.tolist(), logprob.tolist())):
                tokens[seq].append(t)
                logprobs[seq].append(lp)
                if (t not in self.eos_token_ids and len(tokens[seq]) < budgets[copies[seq]]
                        and not (stops and stops.ends(tokens[seq]))):
                    keep.append(row)
                elif store.max_tokens:
                    self._keep(store, cache, row, prompts[copies[seq]] + tokens[seq][:-1])
            if not keep:
                break
            if len(keep) < len(active):  # drop the sequences that ended from the batch
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, positions, token, temperature = mask[index], positions[index], token[index], temperature[index]
                generators = [generators[row] for row in keep]
                active = [active[row] for row in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            logits = self._step(token, mask, positions, cache)
            positions = positions + 1
        samples = [Sample(ids, lps, ids[-1] in self.eos_token_ids, stops.ends(ids))
                   for ids, lps in zip(tokens, logprobs)]
        return [samples[i * n : (i + 1) * n] for i in range(len(prompts))]
