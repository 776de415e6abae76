"""DPO on token-id pairs for one named adapter of a multi-adapter peft model.

Written by hand because TRL's DPOTrainer re-tokenizes text pairs, appends EOS to every completion (wrong for a
mid-solution chunk) and, with adapters named other than `default` and `ref_model=None`, fails (`KeyError:
'default'`) instead of training one of several named adapters against the adapters-disabled reference (TRL 1.16).
The loss is TRL's sigmoid DPO loss, with conservative-DPO label smoothing as an option.

When an agent steps (`online.update`): `per_question` (the paper's "updating models in real-time") steps on each
question's own pairs right after it, at most `batch_pairs` per step; `accumulate` queues pairs across questions
until `batch_pairs` are there and steps on exactly that many. A step accumulates gradients over micro-batches
bounded by padded tokens (`runtime.dpo_micro_batch_tokens`), not by pairs, so its memory does not depend on
how long this step's pairs happen to be. The vocabulary head and the fp32 log-softmax run on completion positions
only (gathered from every row): a micro-batch holds (completion tokens x vocabulary) logits, not (all tokens x
vocabulary).

The Stop agent's pairs have one-token completions: chosen = the Yes (or No) token whose continuation ended
correct, rejected = the other. DPO on them moves log P(Yes) - log P(No) of that prompt, which is exactly what the
`yes_vs_no` stop rule reads.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from harness.config.dpo import DPOConfig
from harness.errors import NonFiniteLoss, RecipeError
from harness.modeling.logprobs import completion_logps
from harness.modeling.models import adapter_state, load_adapter_state
from harness.run.seeds import seed_for
from harness.training.pairs import Pair


def micro_batches(pairs: list[Pair], max_tokens: int) -> list[list[Pair]]:
    """Consecutive pairs grouped so that each group's padded forward (chosen and rejected rows, padded to the
    longest) holds at most `max_tokens` tokens; a pair longer than that is a group of its own."""
    groups: list[list[Pair]] = []
    width = 0
    for pair in pairs:
        longest = len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))
        if groups and 2 * (len(groups[-1]) + 1) * max(width, longest) <= max_tokens:
            groups[-1].append(pair)
            width = max(width, longest)
        else:
            groups.append([pair])
            width = longest
    return groups


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, label_smoothing: float | torch.Tensor = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO loss and the reward margin beta * (chosen log-ratio - rejected log-ratio); the label
    smoothing is one value or one per pair."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    loss = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return loss, margin


class DPOLearner:
    """Online DPO for one adapter. Reference: the same model with adapters disabled (`base`), or a frozen copy of
    the adapter kept as a second peft adapter `<agent>_ref` (`snapshot`; github.com/pmineiro/musique-off keeps such
    a copy and moves it toward the trained one every 100 episodes: here it is replaced every
    `reference_refresh_every` steps).
    """

    def __init__(self, model: torch.nn.Module, agent: str, cfg: DPOConfig, pad_id: int,
                 micro_batch_tokens: int = 8192) -> None:
        self.model, self.agent, self.cfg, self.pad_id = model, agent, cfg, pad_id
        self.micro_batch_tokens = micro_batch_tokens
        config = getattr(model, "config", None)
        for field in ("final_logit_softcapping", "logit_scale"):  # Gemma-2, Cohere: logits are not head(hidden)
            if getattr(config, field, None) not in (None, 1, 1.0):
                raise RecipeError(f"the learner reads log-probs as head(hidden state); model config {field} = "
                                 f"{getattr(config, field)} changes the logits after the head, which it does not do")
        self.params = [p for n, p in model.named_parameters() if "lora_" in n and f".{agent}." in n]
        if not self.params:
            raise ValueError(f"model has no LoRA parameters for adapter {agent!r}")
        opt = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        kwargs = {"weight_decay": cfg.weight_decay} if cfg.optimizer == "adamw" else {}
        self.optimizer = opt(self.params, lr=cfg.lr, **kwargs)
        self.queue: list[Pair] = []
        self.steps = 0
        self.ref_name = f"{agent}_ref" if cfg.reference == "snapshot" else None
        if self.ref_name:
            model.add_adapter(self.ref_name, copy.deepcopy(model.peft_config[agent]))
            self.refresh_reference()

    def refresh_reference(self) -> None:
        """Copy the adapter's current weights into the frozen reference adapter."""
        load_adapter_state(self.model, self.ref_name, adapter_state(self.model, self.agent))
        self.model.set_adapter(self.agent)  # adding/loading an adapter must not leave the reference active

    def add(self, pairs: list[Pair]) -> None:
        self.queue += [p for p in pairs if p.agent == self.agent]

    def due_after(self, pairs: list[Pair]) -> bool:
        """Whether queueing these pairs would make a step due (so the generation engine may sleep for it)."""
        queued = len(self.queue) + sum(p.agent == self.agent for p in pairs)
        if self.cfg.update == "after_stream":  # every pair waits for `train_epoch` after the stream
            return False
        return queued > 0 if self.cfg.update == "per_question" else queued >= self.cfg.batch_pairs

    def ready(self) -> bool:
        """Whether a step is due: any queued pair (`per_question`), or a full batch (`accumulate`)."""
        return self.due_after([])

    def train_epoch(self, seed: int) -> list[dict]:
        """One pass over every queued pair (`after_stream`), shuffled by `seed`, `batch_pairs` per step (the last
        step takes the rest); the queue is kept for the next epoch."""
        order = torch.randperm(len(self.queue), generator=torch.Generator().manual_seed(seed)).tolist()
        pairs = [self.queue[i] for i in order]
        size = self.cfg.batch_pairs
        return [self._step_on(pairs[i : i + size], seed_for(seed, i)) for i in range(0, len(pairs), size)]

    def step(self, seed: int) -> dict:
        """One optimizer step on the oldest queued pairs (at most `batch_pairs`); returns loss and margin statistics."""
        if not self.ready():
            raise RuntimeError(f"adapter {self.agent}: {len(self.queue)} pairs queued, a step takes "
                               f"{self.cfg.batch_pairs}")
        batch, self.queue = self.queue[: self.cfg.batch_pairs], self.queue[self.cfg.batch_pairs :]
        return self._step_on(batch, seed)

    def _step_on(self, batch: list[Pair], seed: int) -> dict:
        """One optimizer step on `batch`: gradients accumulated over token-bounded micro-batches."""
        self.model.set_adapter(self.agent)
        for p in self.params:
            p.requires_grad_(True)
        self.model.train()
        torch.manual_seed(seed)  # LoRA dropout
        self.optimizer.zero_grad(set_to_none=True)
        losses, margins = [], []
        try:
            for micro in micro_batches(batch, self.micro_batch_tokens):
                loss, margin = self._micro_loss(micro)
                (loss.sum() / len(batch)).backward()
                losses += loss.tolist()
                margins += margin.tolist()
        finally:
            self.model.eval()
        mean_loss = sum(losses) / len(losses)
        if not math.isfinite(mean_loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"adapter {self.agent}: DPO loss is {mean_loss} at step {self.steps + 1}")
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        if not torch.isfinite(norm):  # a finite loss can still overflow in backward (bf16): never step on it
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"adapter {self.agent}: gradient norm is {norm.item()} at step {self.steps + 1}")
        self.optimizer.step()
        self.steps += 1
        if self.ref_name and self.cfg.reference_refresh_every and self.steps % self.cfg.reference_refresh_every == 0:
            self.refresh_reference()
        return {"loss": mean_loss, "margin": sum(margins) / len(margins), "pairs": len(batch),
                "accuracy": sum(m > 0 for m in margins) / len(margins)}

    def _micro_loss(self, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = [p.prompt_ids for p in pairs] * 2
        completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
        with torch.no_grad(), self.reference():
            ref = completion_logps(self.model, prompts, completions, self.pad_id)
        policy = completion_logps(self.model, prompts, completions, self.pad_id)
        n = len(pairs)
        smoothing = torch.tensor([self.cfg.label_smoothing if p.label_smoothing is None else p.label_smoothing
                                  for p in pairs], device=policy.device, dtype=policy.dtype)
        return dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], self.cfg.beta, smoothing)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """The reference policy for the block, in eval mode (no LoRA dropout: the reference must be fixed):
        adapters disabled, or the snapshot adapter active."""
        training = self.model.training
        self.model.eval()
        try:
            if self.ref_name is None:
                with self.model.disable_adapter():
                    yield
                return
            self.model.set_adapter(self.ref_name)
            try:
                yield
            finally:
                self.model.set_adapter(self.agent)  # also makes this agent's parameters trainable again
        finally:
            self.model.train(training)

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "queue": [p.to_dict() for p in self.queue],
                 "steps": self.steps}
        if self.ref_name:
            state["reference"] = adapter_state(self.model, self.ref_name)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.queue = [Pair(**p) for p in state["queue"]]
        self.steps = state["steps"]
        if self.ref_name:
            load_adapter_state(self.model, self.ref_name, state["reference"])
            self.model.set_adapter(self.agent)
