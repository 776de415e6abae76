"""Log-probabilities of completions under a model, summed per sequence in a fixed order (the DPO learner and the
tiny model's warm-up both train on them)."""

from __future__ import annotations

import torch


def completion_logps(model: torch.nn.Module, prompts: list[list[int]], completions: list[list[int]],
                     pad_id: int) -> torch.Tensor:
    """Sum of log P(completion | prompt) per row, from one right-padded forward pass.

    A sequence's last token is never read as input, so sequences that agree on all but their last token share one
    forward row: a Stop pair's chosen and rejected (Yes and No after the same prompt) cost one row, not two."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    fed: dict[tuple[int, ...], int] = {}  # tokens fed -> forward row
    row_of = [fed.setdefault(tuple(s[:-1]), len(fed)) for s in seqs]
    width = max(len(tokens) for tokens in fed)
    device = next(model.parameters()).device
    ids = torch.full((len(fed), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(fed), width), dtype=torch.long)
    for row, tokens in enumerate(fed):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    # Sequence i's completion token at position t is predicted by the hidden state of its row at t - 1.
    index = [(row_of[i], t - 1, s[t]) for i, (p, s) in enumerate(zip(prompts, seqs)) for t in range(len(p), len(s))]
    if not index:  # only empty completions: each is certain
        return torch.zeros(len(seqs), device=device)
    rows, positions, targets = (torch.tensor(column, device=device) for column in zip(*index))
    hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 use_cache=False).last_hidden_state
    logits = model.get_output_embeddings()(hidden[rows, positions]).float()
    token_logps = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]
    return sequence_sums(token_logps, [len(c) for c in completions])


def sequence_sums(values: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Per sequence, the sum of its `lengths[i]` consecutive values, added one position after another.

    That is the order a CPU `index_add` adds them in, so the sums are its bits; on CUDA `index_add` adds with
    atomics in whatever order threads finish, and two runs of the same DPO step (a run resumed from a checkpoint
    and one never stopped) would differ in their last bits. Padding adds exact zeros, which change no sum."""
    rows = torch.tensor([s for s, n in enumerate(lengths) for _ in range(n)], device=values.device)
    columns = torch.tensor([t for n in lengths for t in range(n)], device=values.device)
    padded = values.new_zeros((len(lengths), max(lengths))).index_put((rows, columns), values)
    total = values.new_zeros(len(lengths))
    for position in range(padded.shape[1]):
        total = total + padded[:, position]
    return total
