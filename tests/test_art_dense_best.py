"""The dense row of an ART comparison: acc_best is the best test accuracy of the warm-up, acc its last."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

import sparselab as sl
from sparselab.experiments import art


def _sparse_run(*_, **__):
    """A sparse run's row (this test is about the dense row)."""
    return SimpleNamespace(result={"acc": 0.5, "acc_best": 0.5, "acc_pruned": 0.4})


def test_dense_acc_best_is_the_best_warm_up_epoch_not_the_last(monkeypatch):
    preset = art.art_preset("tiny", methods=("oneshot",), sparsities=(0.9,), seeds=(0,))
    monkeypatch.setattr(art, "tests_every_epoch", lambda *_: True)  # no validation split: the test split each epoch
    monkeypatch.setattr(art, "run_art", _sparse_run)
    history = sl.History()
    for epoch, acc in enumerate([0.5, 0.8, 0.6]):  # the warm-up peaks in its second epoch
        history.log_metrics({"acc": acc, "loss": 1.0}, step=10 * (epoch + 1), epoch=epoch, split="test")
    warm = art.WarmStart(model=None, history=history, optimizer=None)
    monkeypatch.setattr(art, "warm_start", lambda *a, **k: warm)
    table, runs = art.compare(preset, progress=False)
    dense = table[table.method == "dense"].iloc[0]
    assert len(runs) == 1 and dense.acc == pytest.approx(0.6) and dense.acc_best == pytest.approx(0.8)


def test_dense_acc_best_is_not_measured_where_the_test_split_is_evaluated_once(monkeypatch):
    preset = art.art_preset("tiny", methods=("oneshot",), sparsities=(0.9,), seeds=(0,))
    monkeypatch.setattr(art, "run_art", _sparse_run)
    monkeypatch.setattr(art, "tests_every_epoch", lambda *_: False)  # a validation split: the test split once
    history = sl.History()
    history.log_metrics({"acc": 0.7}, step=10, epoch=0, split="test")
    monkeypatch.setattr(art, "warm_start", lambda *a, **k: art.WarmStart(None, history, None))
    table, _ = art.compare(preset, progress=False)
    dense = table[table.method == "dense"].iloc[0]
    assert dense.acc == pytest.approx(0.7) and math.isnan(dense.acc_best)
