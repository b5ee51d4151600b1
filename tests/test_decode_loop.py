"""The pruning decoder's decode loop keeps its state on the device (no host wait per step), cuts what
it computed past the stop exactly, and both decoders share one token clock that ticks once per token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sparsezip_lmms.pruning.generate as generate_module
from sparsezip_lmms.config import load_config
from sparsezip_lmms.efficiency.clock import TokenClock
from sparsezip_lmms.pruning import pruned_generate
from sparsezip_lmms.pruning.decode import STOP_CHECK_EVERY, greedy_decode
from _tiny_llama import tiny_llama

DATA = Path(__file__).parent / "data" / "fastv"
HOST_WAITS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "nonzero")


@pytest.fixture(scope="module")
def fastv():
    cases = load_file(str(DATA / "cases.safetensors"))
    meta = json.loads((DATA / "meta.json").read_text())
    return cases, meta, tiny_llama(DATA / "llama32", torch.float64)


def _batch(cases, meta):
    samples = list(meta["samples"])[:2]
    rows = [cases[f"{s}/inputs_embeds"] for s in samples]
    width = max(r.shape[0] for r in rows)
    embeds = torch.zeros(len(rows), width, rows[0].shape[1], dtype=torch.float64)  # [B, L, d] left-padded
    mask = torch.zeros(len(rows), width, dtype=torch.long)  # [B, L]
    for b, row in enumerate(rows):
        embeds[b, width - row.shape[0] :] = row
        mask[b, width - row.shape[0] :] = 1
    starts = torch.tensor([width - r.shape[0] + meta["samples"][s]["v_token_start"] for s, r in zip(samples, rows)])
    return embeds, mask, starts


def _config(meta):
    setting = meta["settings"][2]  # K = 2, 64 of the 576 visual tokens kept
    return load_config({"method": "fastv", "layer": setting["K"], "ratio": float(setting["R"])})


def _host_waits_in_decode(monkeypatch, run) -> int:
    """Calls of tensor methods that wait for the device (or copy to the host) made inside greedy_decode."""
    count, active = [0], [False]
    for name in HOST_WAITS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            if active[0]:
                count[0] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)

    def decode(*args, **kwargs):
        active[0] = True
        try:
            return greedy_decode(*args, **kwargs)
        finally:
            active[0] = False

    monkeypatch.setattr(generate_module, "greedy_decode", decode)
    run()
    monkeypatch.undo()
    return count[0]


def test_decode_steps_do_not_wait_on_the_host(fastv, monkeypatch):
    cases, meta, model = fastv
    embeds, mask, starts = _batch(cases, meta)
    config = _config(meta)
    never = model.config.vocab_size + 1  # an end token no row produces: the stop is read, never met

    def waits(tokens, eos):
        return _host_waits_in_decode(
            monkeypatch, lambda: pruned_generate(model, embeds, mask, starts, config, tokens, eos_token_id=eos)
        )

    short, long = 3, 3 + 2 * STOP_CHECK_EVERY
    assert waits(long, None) == waits(short, None)  # no per-step wait at all without an end token
    assert waits(long, never) - waits(short, never) == 2  # one read of the stop condition per STOP_CHECK_EVERY steps


def test_stop_read_every_few_steps_cuts_to_the_stepwise_result(fastv):
    cases, meta, model = fastv
    embeds, mask, starts = _batch(cases, meta)
    config = _config(meta)
    tokens = 2 + 2 * STOP_CHECK_EVERY
    full = pruned_generate(model, embeds, mask, starts, config, tokens)
    for eos in {int(full.sequences[0, 1]), int(full.sequences[1, 3]), int(full.sequences[0, -1])}:

        class Streamer:  # a streamer makes the loop read the stop condition every step
            def put(self, value):
                pass

            def end(self):
                pass

        stepwise = pruned_generate(model, embeds, mask, starts, config, tokens, eos_token_id=eos, streamer=Streamer())
        clock = TokenClock("cpu")
        clock.start()
        batched = pruned_generate(model, embeds, mask, starts, config, tokens, eos_token_id=eos, clock=clock)
        assert batched.sequences.equal(stepwise.sequences), eos
        assert batched.decode_positions.equal(stepwise.decode_positions)
        assert clock.ticks == batched.sequences.shape[1] == len(clock.step_times)  # one tick per kept token
    assert full.decode_positions.device.type == "cpu"


def test_generate_ticks_once_per_token_in_the_step_that_made_it(fastv):
    """Stock generate's clock: a stopping criterion called inside the loop, once per new token (a
    streamer may be called a step late); fails if transformers changes when criteria run."""
    from transformers.generation.stopping_criteria import StoppingCriteriaList

    from sparsezip_lmms.efficiency import clock as clock_module

    cases, meta, model = fastv
    embeds, mask, _ = _batch(cases, meta)
    lengths = []

    class Recording(clock_module._ClockCriterion):
        def __call__(self, input_ids, scores, **kwargs):
            lengths.append(input_ids.shape[1])
            return super().__call__(input_ids, scores, **kwargs)

    clock = TokenClock("cpu")
    clock.start()
    out = model.generate(
        inputs_embeds=embeds.to(model.dtype), attention_mask=mask, max_new_tokens=5, do_sample=False,
        stopping_criteria=StoppingCriteriaList([Recording(clock)]), pad_token_id=0,
    )  # fmt: skip
    assert clock.ticks == out.shape[1] == 5
    assert lengths == list(range(lengths[0], lengths[0] + 5)) and lengths[0] == 1  # token t ticks in step t
    times = clock.step_times
    assert times == sorted(times)
