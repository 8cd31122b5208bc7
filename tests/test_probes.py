from __future__ import annotations

import pytest
import torch
from conftest import nano_vit as nano
from hypothesis import example, given, settings
from hypothesis import strategies as st
from timm.models.vision_transformer import VisionTransformer

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.structure import ResidualTaps, ViTStructure


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=28, limit=256)


def test_taps_record_the_residual_stream():
    model = nano().eval()
    taps = ResidualTaps(ViTStructure(model))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        model(x)
        recorded = list(taps.stream)
        taps.enabled = False  # replaying the blocks by hand below must not record again
        tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        stream = [tokens]
        for blk in model.blocks:
            mid = tokens + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(tokens))))
            tokens = mid + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(mid))))
            stream += [mid, tokens]
    assert len(recorded) == 2 * len(model.blocks) + 1
    for got, want in zip(recorded, stream):
        torch.testing.assert_close(got, want)
        assert not got.requires_grad
    taps.enabled = True
    taps.remove()
    model(x)
    assert taps.stream == []


def test_probes_never_train_the_backbone(digits):
    opts = dict(epochs=1, batch_size=64, progress=False)
    plain, probed = nano(), nano()
    sl.fit(plain, digits, **opts)
    probes = sl.probes.BlockBenefit(probed, num_classes=10, patch_probe="conv2")
    h = sl.fit(probed, digits, callbacks=[probes], **opts)
    for a, b in zip(plain.state_dict().values(), probed.state_dict().values()):
        assert torch.equal(a, b)  # probes read detached features only
    b = h.blocks
    assert set(b.metric) == {"benefit_cls", "benefit_patch"}
    assert b.groupby("metric").size().tolist() == [8, 8]  # one row per block at the epoch end
    assert any(p.grad is not None for p in probes.probes.parameters())


def test_benefit_is_the_loss_decrease_across_a_block(digits):
    model = nano()
    probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="linear")
    x, y = digits.train.get_batch(torch.arange(32))
    with torch.no_grad():
        model(x)
        probes.probe_loss(y)
    s = probes.structure
    manual = []
    for k, pair in enumerate(probes.probes):
        loss = [torch.nn.functional.cross_entropy(pair.cls(s.pooled(t)), y) for t in probes.taps.stream[k:k + 2]]
        manual.append((loss[0] - loss[1]).item())
    torch.testing.assert_close(probes.window_mean()["cls"], torch.tensor(manual, dtype=torch.float64), rtol=0,
                               atol=2e-6)
    probes.reset()
    assert probes.count == 0 and probes.sums.abs().sum() == 0


@pytest.mark.parametrize("soft", [False, True])
def test_batched_class_probes_equal_one_linear_per_block(digits, soft):
    """All class-token probes run as one batched product; losses and gradients equal those of each block's own
    Linear on its own input and output (hard and soft targets, label smoothing)."""
    model = nano()
    probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe=None)
    x, y = digits.train.get_batch(torch.arange(24))
    targets = torch.softmax(torch.randn(24, 10), dim=1) if soft else y
    with torch.no_grad():
        model(x)
    total = probes.probe_loss(targets, label_smoothing=0.1)
    total.backward()
    batched = [pair.cls.weight.grad.clone() for pair in probes.probes]
    probes.probes.zero_grad(set_to_none=True)
    s = probes.structure
    manual = sum(sl.training.task_loss(pair.cls(s.pooled(t)), targets, 0.1)
                 for k, pair in enumerate(probes.probes) for t in probes.taps.stream[k:k + 2])
    manual.backward()
    torch.testing.assert_close(total, manual, rtol=1e-5, atol=1e-6)
    for pair, grad in zip(probes.probes, batched):
        torch.testing.assert_close(grad, pair.cls.weight.grad, rtol=1e-5, atol=1e-7)


def test_patch_probes_back_propagate_one_at_a_time_when_given_fit_s_backward(digits):
    """With ``backward`` each patch probe's loss is back-propagated at once (its graph freed before the next
    probe runs): the same gradients as one joint backward, the same returned value, and no patch graph left."""
    model = nano()
    joint = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="conv1")
    early = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="conv1")
    early.probes.load_state_dict(joint.probes.state_dict())
    x, y = digits.train.get_batch(torch.arange(16))
    with torch.no_grad():
        model(x)
    share = 0.5  # a micro-batch's weight under gradient accumulation
    expected = joint.probe_loss(y)
    (expected * share).backward()
    calls = []

    def backward(term):
        calls.append(term.requires_grad)
        (term * share).backward()

    got = early.probe_loss(y, backward=backward)
    assert calls == [True] * len(early.probes)
    assert all(p.patch.body[0].weight.grad is not None for p in early.probes)  # before the joint backward
    (got * share).backward()
    torch.testing.assert_close(got, expected)
    for a, b in zip(joint.probes.parameters(), early.probes.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(early.window_mean()["patch"], joint.window_mean()["patch"])


def test_fit_back_propagates_patch_probes_early_with_the_micro_batch_weight(digits):
    """Under gradient accumulation fit's ``state.backward`` weights each patch probe's early backward like the
    micro-batch's loss: the probes train exactly as with one joint backward."""
    trained = []
    for early in (True, False):
        torch.manual_seed(0)
        model = nano()
        probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="conv1")

        class Joint(sl.Pruner):  # runs before the probes: withholds fit's early backward
            def extra_loss(self, state):
                if not early:
                    state.backward = None

        sl.fit(model, digits, epochs=1, batch_size=24, accumulate_steps=3, max_steps_per_epoch=3, progress=False,
               callbacks=[Joint(), probes], seed=0)
        trained.append(probes.probes.state_dict())
    for key, value in trained[0].items():
        torch.testing.assert_close(value, trained[1][key], rtol=1e-4, atol=1e-6, msg=key)


def test_patch_samples_give_the_patch_probes_the_first_part_of_the_batch(digits):
    model = nano()
    x, y = digits.train.get_batch(torch.arange(40))
    part = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="conv1")
    whole = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="conv1")
    first = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="conv1")
    whole.probes.load_state_dict(part.probes.state_dict())
    first.probes.load_state_dict(part.probes.state_dict())
    with torch.no_grad():
        model(x)
        part.probe_loss(y, patch_samples=10)
        whole.probe_loss(y)
        model(x[:10])
        first.probe_loss(y[:10])
    # the class-token probes see the whole batch, the patch probes its first 10 samples
    torch.testing.assert_close(part.window_mean()["cls"], whole.window_mean()["cls"])
    torch.testing.assert_close(part.window_mean()["patch"], first.window_mean()["patch"])
    assert not torch.allclose(part.window_mean()["patch"], whole.window_mean()["patch"])


def test_probe_every_and_fraction_subsample_only_the_patch_probes(digits):
    model = nano()
    probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="linear", probe_every=3, probe_fraction=0.25)
    seen, counted, batch = [], [], []

    class Watch(sl.Pruner):  # runs before the probes' own hooks
        def after_backward(self, state):
            seen.append((probes.probes[0].cls.weight.grad is not None,
                         probes.probes[0].patch.fc.weight.grad is not None))

        def on_epoch_end(self, state):
            counted.append(probes.counts.tolist())

    original = probes.probe_loss

    def spy(targets, patch=True, patch_samples=None, label_smoothing=0.0, backward=None):
        batch.append(patch_samples)
        return original(targets, patch, patch_samples, label_smoothing, backward)

    probes.probe_loss = spy
    sl.fit(model, digits, epochs=1, batch_size=32, callbacks=[Watch(), probes], progress=False,
           max_steps_per_epoch=7, log_every=100)
    assert seen == [(True, step % 3 == 0) for step in range(7)]
    assert counted == [[7.0, 3.0]]  # class probes on all 7 steps, patch probes on steps 0, 3 and 6
    assert batch == [8] * 7  # ⌈0.25·32⌉


def test_calibrate_and_measure_before_fine_tuning(digits):
    model = nano()
    probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="linear")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probes.calibrate(digits, steps=20)
    measured = probes.measure(digits, batches=2)
    assert set(measured) == {"cls", "patch"} and measured["cls"].shape == (8,)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="batches >= 1"):
        probes.measure(digits, batches=0)


def test_prefix_tokens_and_pooling_are_respected():
    reg = VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=16, depth=2, num_heads=2,
                            num_classes=3, reg_tokens=2)
    s = ViTStructure(reg)
    assert s.num_prefix_tokens == 3
    x = torch.randn(2, 3 + 16, 16)
    assert s.patch_tokens(x).shape == (2, 16, 4, 4)
    torch.testing.assert_close(s.patch_tokens(x)[:, :, 0, 0], x[:, 3])
    torch.testing.assert_close(s.pooled(x), x[:, 0])
    avg = VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=16, depth=2, num_heads=2,
                            num_classes=3, class_token=False, global_pool="avg")
    s = ViTStructure(avg)
    x = torch.randn(2, 16, 16)
    torch.testing.assert_close(s.pooled(x), x.mean(1))
    probes = sl.probes.BlockBenefit(avg, num_classes=3)
    avg(torch.randn(2, 1, 16, 16))
    assert probes.probe_loss(torch.tensor([0, 2])).requires_grad


def test_bad_input():
    with pytest.raises(ConfigError, match="num_classes"):
        sl.probes.BlockBenefit(nano(), num_classes=1)
    with pytest.raises(ConfigError, match="probe_every"):
        sl.probes.BlockBenefit(nano(), num_classes=10, probe_every=0)
    with pytest.raises(ConfigError, match="probe_fraction"):
        sl.probes.BlockBenefit(nano(), num_classes=10, probe_fraction=1.5)
    with pytest.raises(ConfigError, match="VisionTransformer"):
        sl.probes.BlockBenefit(sl.models.create("lenet_300_100"), num_classes=10)


def _nano_probes(**options) -> sl.probes.BlockBenefit:
    return sl.probes.BlockBenefit(nano(), num_classes=10, patch_probe="linear", **options)


@settings(max_examples=60, deadline=None)
@given(percent=st.integers(1, 99), batch=st.integers(1, 512))
@example(percent=7, batch=100)
def test_probe_fraction_takes_its_share_rounded_up_exactly(percent, batch):
    probes = _nano_probes(probe_fraction=percent / 100)
    # 0.07 · 100 is 7.000000000000001 in floating point; the share of the batch is still 7 samples
    assert probes.patch_samples(batch) == max(1, -(-percent * batch // 100))


def test_probe_fraction_one_means_the_whole_batch():
    assert _nano_probes(probe_fraction=1.0).patch_samples(64) is None
