"""ART's candidate rule (partial windows, the reference rule vs best mean) and the pruned copy's accuracy on
augmented training batches."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import sparselab as sl
from sparselab.callbacks import TrainState
from sparselab.data.datasets import DataBundle, TensorImages
from sparselab.errors import CheckpointError, UnknownNameError
from sparselab.evaluation import evaluate
from sparselab.history import History
from sparselab.structure import magnitude_masks


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 2))


def drive(art, accs, dense):
    """Feed scripted pruned/dense accuracies through the window; per epoch: (candidate epoch, stop reason)."""
    out = []
    for e, (a, d) in enumerate(zip(accs, dense)):
        reason = art._update_window(a, {"tag": torch.tensor(float(e))}, d, e)
        assert art.candidate is None or int(art.candidate["tag"]) == art.candidate_epoch
        out.append((art.candidate_epoch, reason))
        if reason:
            break
    return out


# ---------------------------------------------------------------- independent replicas of the two rules
def reference_replay(accs, dense, size=3):
    """The reference code's loop (GreenAutoML4FAS/HyperSparse utils/art.py and ModelBuffer in utils/misc.py),
    restated: a buffer of up to ``size``; middle = min(len-1, size//2); the middle entry becomes the best value
    when the buffer mean exceeds the best value's own accuracy; stop when the best value's recorded mean exceeds
    the dense accuracy. Returns (candidate epoch after each epoch, stop epoch or None)."""
    buf, best, cands = [], None, []
    for e, (a, d) in enumerate(zip(accs, dense)):
        buf = (buf + [(e, a)])[-size:]
        mean = sum(x for _, x in buf) / len(buf)
        if best is None or mean > best["acc"]:
            ep, acc = buf[min(len(buf) - 1, size // 2)]
            best = {"epoch": ep, "acc": acc, "mean": mean}
        cands.append(best["epoch"])
        if best["mean"] > d:
            return cands, e
    return cands, None


def old_best_mean_replay(accs, dense, size=3):
    """sparselab's rule before candidate_rule existed, copied from the old ART.on_epoch_end."""
    window, best_mean, cand, cands = [], -1.0, None, []
    for e, (a, d) in enumerate(zip(accs, dense)):
        window.append(a)
        if len(window) > size:
            window.pop(0)
        if len(window) == size:
            mean = float(np.mean(window))
            if mean > best_mean:
                best_mean, cand = mean, e - size // 2
            cands.append(cand)
            if best_mean > d:
                return cands, e
        else:
            cands.append(cand)
    return cands, None


# ---------------------------------------------------------------- (a) the rules on scripted accuracies
def test_reference_rule_uses_partial_windows_and_the_candidates_own_accuracy():
    art = sl.ART(small_net(), 0.5)
    assert art.candidate_rule == "reference"
    accs = [0.50, 0.60, 0.70, 0.65, 0.90, 0.55]
    got = drive(art, accs, [1.0] * len(accs))
    # e0: [.5] -> copy 0 (no candidate yet); e1: [.5 .6] mean .55 > .5 -> copy 1 (middle of a partial window);
    # e2: [.5 .6 .7] mean .6, not above copy 1's own .6 -> stays; e3: [.6 .7 .65] mean .65 > .6 -> copy 2;
    # e4: [.7 .65 .9] mean .75 > .7 -> copy 3 (own accuracy only .65); e5: [.65 .9 .55] mean .70 > .65 -> copy 4,
    # although .70 is not the best mean so far (best_mean keeps copy 3)
    assert [c for c, _ in got] == [0, 1, 1, 2, 3, 4]
    assert all(r is None for _, r in got)
    assert art.candidate_acc == 0.90 and art.candidate_mean == pytest.approx(0.70)
    assert art.best_mean == pytest.approx(0.75)
    assert [c for c, _ in got] == reference_replay(accs, [1.0] * len(accs))[0]

    old = sl.ART(small_net(), 0.5, candidate_rule="best_mean")
    got_old = drive(old, accs, [1.0] * len(accs))
    assert [c for c, _ in got_old] == [None, None, 1, 2, 3, 3]


def test_reference_rule_can_stop_after_the_first_art_epoch():
    art = sl.ART(small_net(), 0.5)
    got = drive(art, [0.85, 0.9], [0.80, 0.95])
    assert len(got) == 1 and got[0][0] == 0
    assert "exceeds the dense" in got[0][1] and "ART epoch 0" in got[0][1]
    # the best-mean variant needs a full window first
    old = sl.ART(small_net(), 0.5, candidate_rule="best_mean")
    assert drive(old, [0.85, 0.9], [0.80, 0.95]) == [(None, None), (None, None)]


def test_reference_rule_stops_after_art_epoch_1_on_a_partial_window():
    art = sl.ART(small_net(), 0.5)
    got = drive(art, [0.50, 0.90, 0.99], [0.80, 0.69, 0.5])
    assert [c for c, _ in got] == [0, 1]
    assert got[0][1] is None and "ART epoch 1" in got[1][1]
    assert art.candidate_acc == 0.90 and art.candidate_mean == pytest.approx(0.70)


def test_reference_rule_stops_on_the_mean_that_chose_the_candidate():
    # e2's window mean (.5 + .9 + .95)/3 = .783 is above the dense .75 but not above copy 1's own .9, so the
    # candidate stays copy 1, chosen by the mean .70 < .75: the reference goes on; at e3 the mean .917 beats .9,
    # copy 2 becomes the candidate and .917 > .6 stops
    accs, dense = [0.5, 0.9, 0.95, 0.9], [0.95, 0.95, 0.75, 0.6]
    art = sl.ART(small_net(), 0.5)
    got = drive(art, accs, dense)
    assert [c for c, _ in got] == [0, 1, 1, 2] and [r is None for _, r in got] == [True, True, True, False]
    assert reference_replay(accs, dense) == ([0, 1, 1, 2], 3)
    # e.g. the old dense accuracy was beaten long ago: the candidate's recorded mean decides
    art = sl.ART(small_net(), 0.5)
    got = drive(art, [0.9, 0.8], [0.95, 0.87])
    assert [c for c, _ in got] == [0, 0] and got[1][1] is not None


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("window", [1, 3, 5])
def test_rules_match_independent_replicas(seed, window):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 14))
    accs = np.round(rng.uniform(0.3, 0.9, n), 2).tolist()  # rounding makes ties happen
    dense = np.round(rng.uniform(0.6, 1.0, n), 2).tolist()
    for rule, replay in (("reference", reference_replay), ("best_mean", old_best_mean_replay)):
        art = sl.ART(small_net(), 0.5, window=window, candidate_rule=rule)
        got = drive(art, accs, dense)
        cands, stop = replay(accs, dense, window)
        assert [c for c, _ in got] == cands, rule
        assert (len(got) - 1 if got[-1][1] else None) == stop, rule


def make_state(model, data, epoch, **kw):
    return TrainState(model=model, optimizer=None, history=History(), device=torch.device("cpu"), epochs=100,
                      steps_per_epoch=1, epoch=epoch, data=data, **kw)


def test_on_epoch_end_takes_the_middle_copy_and_records_the_rule(monkeypatch):
    model = small_net()
    art = sl.ART(model, 0.5, warmup_epochs=2, max_art_epochs=10)
    script = iter([0.5, 0.6, 0.7, 0.95])
    monkeypatch.setattr(art, "_train_accuracy", lambda pruned, state: next(script))
    state = make_state(model, None, 0)
    copies = []
    for epoch in range(6):
        with torch.no_grad():  # new weights every epoch, so each pruned copy is recognisable
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(epoch)))
        state.epoch, state.step = epoch, 10 * (epoch + 1)
        state.metrics = {"train_acc": 0.8}
        art.on_epoch_end(state)
        masks = magnitude_masks(model, 0.5)
        copies.append({k: v * masks[k].to(v.dtype) if k in masks else v.clone()
                       for k, v in model.state_dict().items()})
        if state.should_stop:
            break
    # ART epochs 0..3 = fit epochs 2..5: windows [.5] [.5 .6] [.5 .6 .7] [.6 .7 .95]; the last mean .75 > .6
    # (copy 1's own accuracy) picks copy 2, and .75 <= .8 goes on ... until the script ends: no stop yet
    assert not state.should_stop and art.candidate_epoch == 2 and art.candidate_acc == 0.7
    state.epoch = 6
    state.metrics = {"train_acc": 0.7}
    monkeypatch.setattr(art, "_train_accuracy", lambda pruned, state: 0.9)
    art.on_epoch_end(state)  # window [.7 .95 .9] mean .85 > .7 -> copy 3, and .85 > .7 stops
    assert state.should_stop and art.terminated and art.candidate_epoch == 3
    for k, v in art.candidate.items():
        torch.testing.assert_close(v, copies[2 + 3][k])
    art.on_fit_end(state)
    info = state.history.meta["art"]
    assert info["candidate_rule"] == "reference" and info["candidate_art_epoch"] == 3
    assert info["candidate_acc"] == 0.95 and info["candidate_window_mean"] == pytest.approx(0.85)
    assert info["train_eval_augment"] is True
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, copies[5][k])


def test_state_dict_round_trip_and_rule_mismatch():
    a = sl.ART(small_net(), 0.5)
    drive(a, [0.5, 0.6], [1.0, 1.0])
    b = sl.ART(small_net(), 0.5)
    b.load_state_dict(a.state_dict())
    assert (b.candidate_epoch, b.candidate_acc, b.candidate_mean) == (1, 0.6, pytest.approx(0.55))
    # the restored ART goes on exactly like the original: e2 keeps copy 1 (mean .553 < .6), e3 takes copy 2
    # because the mean .687 beats copy 1's own .6 (what a restored best mean alone could not tell)
    for art in (a, b):
        got = [art._update_window(acc, {"tag": torch.tensor(float(e))}, 0.65, e) for e, acc in ((2, 0.56), (3, 0.9))]
        assert got[0] is None and "ART epoch 3" in got[1]
        assert (art.candidate_epoch, art.candidate_acc) == (2, 0.56)
    with pytest.raises(CheckpointError, match="candidate_rule='reference'"):
        sl.ART(small_net(), 0.5, candidate_rule="best_mean").load_state_dict(a.state_dict())
    with pytest.raises(CheckpointError, match="train_eval_augment=True"):
        sl.ART(small_net(), 0.5, train_eval_augment=False).load_state_dict(a.state_dict())


def test_unknown_candidate_rule_is_a_clear_error():
    with pytest.raises(UnknownNameError, match="candidate_rule 'best'.*Did you mean 'best_mean'"):
        sl.ART(small_net(), 0.5, candidate_rule="best")


# ---------------------------------------------------------------- (b) accuracy on augmented training batches
def sided_images(n=600, seed=0):
    """4x4 images whose class is the bright half (left: 0, right: 1), and a linear model that reads it exactly:
    un-augmented it is always right; flipped images fool it."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.zeros(n, 1, 4, 4)
    bright = torch.rand(n, 1, 4, 2, generator=g) + 0.5
    x[y == 0, :, :, :2] = bright[y == 0]
    x[y == 1, :, :, 2:] = bright[y == 1]
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        left = torch.zeros(4, 4)
        left[:, :2] = 1
        net[1].weight.copy_(torch.stack([left.flatten(), left.flip(-1).flatten()]))
        net[1].bias.zero_()
    return x, y, net


def bundle(train):
    return DataBundle("sided", train, None, None, num_classes=2, in_chans=1, image_size=4)


def test_pruned_accuracy_is_measured_on_augmented_batches():
    x, y, net = sided_images()
    plain = TensorImages(x, y, augment="none")
    aug = TensorImages(x, y, augment="crop_flip")
    art = sl.ART(net, 0.5, warmup_epochs=3)
    state = make_state(net, bundle(aug), epoch=3 + 2)
    clean = evaluate(net, plain)["acc"]
    assert clean == 1.0
    rng = torch.get_rng_state()
    first = art._train_accuracy(net, state)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is not consumed
    assert first < 0.9  # augmented: flips and shifts fool the model
    assert art._train_accuracy(net, state) == first  # the same ART epoch draws the same augmentation
    state.epoch += 1
    assert art._train_accuracy(net, state) != first  # the next one draws anew
    # without augmentation in the data the number is the plain evaluation's
    assert art._train_accuracy(net, make_state(net, bundle(plain), epoch=5)) == clean
    # train_eval_augment=False: the un-augmented images, as before
    off = sl.ART(net, 0.5, warmup_epochs=3, train_eval_augment=False)
    assert off._train_accuracy(net, state) == clean


def test_pruned_accuracy_limit_and_process_shares_add_up():
    x, y, net = sided_images(n=1300)
    data = bundle(TensorImages(x, y, augment="crop_flip"))
    art = sl.ART(net, 0.5, warmup_epochs=0, train_eval_limit=1100)
    whole = art._train_counts(net, make_state(net, data, epoch=4))
    assert whole[1].item() == 1100
    parts = [art._train_counts(net, make_state(net, data, epoch=4, rank=r, world_size=3)) for r in range(3)]
    assert torch.equal(sum(parts), whole)  # every process's share, summed, is the single-process count
    sizes = [p[1].item() for p in parts]  # every 3rd image of each batch of 512: 171/171/170 + 171/171/170 + 26/25/25
    assert sizes == [368, 367, 365]


class FlipOnRead(Dataset):
    """A dataset whose training transform flips at random with the global RNGs, like torchvision's."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        random.random()  # draws from Python's RNG too, as timm's transforms do
        flip = bool(torch.rand(()) < 0.5)
        return (self.x[i].flip(-1) if flip else self.x[i]), int(self.y[i])


def test_pruned_accuracy_on_a_transforming_dataset_is_seeded_and_leaves_the_rngs_alone():
    x, y, net = sided_images(n=300)
    art = sl.ART(net, 0.5, warmup_epochs=0, train_eval_limit=250)
    state = make_state(net, bundle(FlipOnRead(x, y)), epoch=1)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    first = art._train_accuracy(net, state)
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert 0.3 < first < 0.7  # about half the images are flipped, and the model then errs
    assert art._train_accuracy(net, state) == first
    assert art._train_counts(net, state)[1].item() == 250


@pytest.mark.parametrize("rule", ["reference", "best_mean"])
def test_fit_follows_the_rule_on_its_own_traces(rule):
    """A real run: replaying the logged pruned/dense accuracies through the replica gives ART's candidate and stop."""
    data = sl.data.load("digits", image_size=8, augment="flip")
    torch.manual_seed(0)
    model = sl.models.create("lenet_300_100", image_size=8)
    art = sl.ART(model, 0.9, warmup_epochs=1, lam_init=1e-3, eta=1.6, max_art_epochs=12, candidate_rule=rule)
    h = sl.fit(model, data, epochs=art.max_epochs, pruner=art, lr=2e-3, batch_size=64, progress=False)
    m = h.metrics.pivot_table(index="epoch", columns="name", values="value").dropna(subset=["acc_pruned"])
    replay = reference_replay if rule == "reference" else old_best_mean_replay
    cands, stop = replay(m.acc_pruned.tolist(), m.acc_dense.tolist())
    info = h.meta["art"]
    assert info["candidate_rule"] == rule and info["terminated"]
    assert stop == len(m) - 1 and "exceeds the dense" in info["stop_reason"]
    assert info["candidate_art_epoch"] == cands[-1]
