"""The block denoiser: fresh blocks are harmless, masks do not leak, training learns."""

from __future__ import annotations

import math

import torch

from spheroid_p2p.ml.block import BlockDenoiser, SpanPlan, make_codebook
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.corpus import embedded_corpus
from spheroid_p2p.ml.data import corpus_from_bytes
from spheroid_p2p.ml.layers import Layer
from spheroid_p2p.ml.training import BlockTrainer


def test_codebook_is_seeded_unit_norm_and_identical_across_blocks(tiny: ModelConfig) -> None:
    """C is built from the seed (no communication) and every row has norm 1."""
    assert torch.equal(BlockDenoiser(tiny, 0).codebook, BlockDenoiser(tiny, 3).codebook)
    assert torch.allclose(make_codebook(tiny).norm(dim=-1), torch.ones(256))


def test_fresh_block_predicts_nearly_uniformly_and_ignores_the_noisy_code(
    tiny: ModelConfig,
) -> None:
    """A fresh block is harmless in a chain: its small head gives near-uniform predictions,
    and its zero-initialised W_in means the noisy code does not change them yet."""
    block = BlockDenoiser(tiny, 0)
    x = torch.randint(0, 256, (2, 16))
    sigma = torch.full((2,), 5.0)
    out = block(x, torch.randn(2, 16, 32), sigma)
    y = torch.randint(0, 256, (2, 16))
    ce = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 256), y.reshape(-1))
    assert abs(float(ce.detach()) - math.log(256)) < 0.05
    zero = BlockDenoiser(tiny.replace(zero_init_head=True), 0)
    assert torch.count_nonzero(zero(x, torch.randn(2, 16, 32), sigma).logits) == 0


def test_fresh_modulated_layer_is_the_identity() -> None:
    """AdaLN-Zero: a layer with zero-initialised modulation leaves its rows unchanged."""
    layer = Layer(16, 2, 4, d_cond=8)
    h = torch.randn(3, 5, 16)
    assert torch.equal(layer(h, torch.randn(3, 8)), h)


@torch.no_grad()
def _perturbed(
    block: BlockDenoiser, plan: SpanPlan | None, n: int, change_x: list[int], change_z: list[int]
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (1, 16), generator=gen)
    z = torch.randn(1, n, 32, generator=gen)
    sigma = torch.full((1,), 4.0)
    base = block(x, z, sigma, plan).logits
    x2, z2 = x.clone(), z.clone()
    x2[0, change_x] = (x2[0, change_x] + 1) % 256
    z2[0, change_z] += 1.0
    return (block(x2, z2, sigma, plan).logits - base).abs().amax(dim=-1)[0]  # (n,)


def _randomise(block: BlockDenoiser) -> None:
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def test_layout_s_is_causal(tiny: ModelConfig) -> None:
    """In layout S, position i depends on no clean byte or noisy code after i."""
    block = BlockDenoiser(tiny, 1)
    _randomise(block)
    diff = _perturbed(block, None, 16, change_x=[10, 12], change_z=[11])
    assert float(diff[:10].max()) == 0.0 and float(diff[10:].max()) > 0


def test_layout_p_span_sees_only_its_prefix_and_its_span(tiny: ModelConfig) -> None:
    """A noisy slot sees clean bytes up to its span start and its own span's slots only."""
    cfg = tiny.replace(layout="P", span=4)
    block = BlockDenoiser(cfg, 2)
    _randomise(block)
    plan = SpanPlan.training(16, 4, phase=0)  # spans [0,4), [4,8), [8,12), [12,16)
    # Changing clean byte 5 is visible to spans starting at slot >= 5, i.e. [8, 16).
    diff = _perturbed(block, plan, 16, change_x=[5], change_z=[])
    assert float(diff[:8].max()) == 0.0 and float(diff[8:].min()) > 0
    # Changing noisy slot 9 affects exactly its own span [8, 12).
    diff = _perturbed(block, plan, 16, change_x=[], change_z=[9])
    assert float(diff[:8].max()) == 0.0 and float(diff[12:].max()) == 0.0
    assert float(diff[8:12].min()) > 0


def test_training_one_block_learns_and_holds_only_that_block(
    tiny: ModelConfig, tiny_train: TrainConfig
) -> None:
    """A few dozen steps on the embedded corpus lower the loss well below ln 256."""
    corpus = corpus_from_bytes("embedded", embedded_corpus(60_000))
    trainer = BlockTrainer(tiny, tiny_train, block_index=0, seed=0)
    owned = {id(p) for p in trainer.block.parameters()}
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == owned
    gen = torch.Generator().manual_seed(0)
    losses = [trainer.step(corpus.batch(8, 16, gen)).loss for _ in range(40)]
    assert sum(losses[-5:]) / 5 < 4.0 < losses[0]


def test_a_causal_span_mask_lets_a_slot_see_only_earlier_slots_of_its_span() -> None:
    from spheroid_p2p.ml.block import _p_mask

    plan = SpanPlan.generation(3, 4)
    full = _p_mask(3, plan)
    causal = _p_mask(3, plan, "causal")
    assert full[3:, 3:].all()
    assert torch.equal(causal[3:, 3:], torch.ones(4, 4, dtype=torch.bool).tril())
    assert torch.equal(causal[:, :3], full[:, :3])  # the clean prefix is seen the same way
    cfg = ModelConfig(layout="P", span=4, span_mask="causal")
    assert cfg.config_hash() != ModelConfig(layout="P", span=4).config_hash()
    assert "span_mask" not in ModelConfig().to_json()  # old swarms keep their hash


def test_self_conditioning_reads_the_previous_estimate_and_trains_block_locally() -> None:
    from spheroid_p2p.ml.evaluate import evaluate_sampler

    cfg = ModelConfig(
        d_model=32, n_heads=2, d_cond=8, context=16, layout="P", span=4, self_cond=True
    )
    block = BlockDenoiser(cfg, 1)
    x = torch.randint(0, 256, (2, 13))
    z = torch.randn(2, 4, cfg.d_z)
    sigma = torch.full((2,), 9.0)
    plan = SpanPlan.generation(13, 4)
    estimate = torch.randn(2, 4, cfg.d_z)
    same = block(x, z, sigma, plan).logits
    assert torch.equal(block(x, z, sigma, plan, estimate).logits, same)  # w_sc starts at zero
    trainer = BlockTrainer(cfg, TrainConfig(steps=3, warmup_steps=1), 1, seed=0, block=block)
    data = corpus_from_bytes("t", embedded_corpus(20_000))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        trainer.step(data.batch(4, cfg.context, gen))
    assert not torch.equal(
        block(x, z, sigma, plan, estimate).logits, block(x, z, sigma, plan).logits
    )
    blocks = [BlockDenoiser(cfg, b) for b in range(cfg.n_blocks)]
    report = evaluate_sampler(blocks, data.eval_windows(cfg.context, 2), seeds=(0,))
    assert 0 < report.ce_sampler < 20
    assert "self_cond" not in ModelConfig().to_json()
