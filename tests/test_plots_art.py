from __future__ import annotations

import warnings

import pytest
import torch

import sparselab as sl
from sparselab.errors import ConfigError


@pytest.fixture(scope="module")
def art_histories():
    data = sl.data.load("digits", image_size=8)
    out = []
    for reg in ("hypersparse", "l1"):
        torch.manual_seed(0)
        model = sl.models.create("lenet_300_100", image_size=8)
        art = sl.ART(model, 0.9, regularizer=reg, warmup_epochs=1, lam_init=1e-3, eta=1.6, max_art_epochs=4,
                     profile_every=1)
        with warnings.catch_warnings():  # a 4-epoch ART may stop at max_art_epochs, with a warning
            warnings.simplefilter("ignore", UserWarning)
            h = sl.fit(model, data, epochs=art.max_epochs, pruner=art, lr=2e-3, batch_size=64, progress=False)
        h.meta["run"] = reg
        out.append(h)
    return out


def test_gradient_profile_shows_every_snapshot(art_histories):
    h = art_histories[0]
    fig = sl.plot_gradient_profile(h)
    epochs = sorted({p["art_epoch"] for p in h.meta["profiles"]})
    lines = [t for t in fig.data if t.name.startswith("ART epoch")]
    assert len(lines) == 2 * len(epochs)
    first = h.meta["profiles"][0]
    assert list(lines[0].y) == pytest.approx(first["abs_w"]) and list(lines[1].y) == pytest.approx(first["grad"])
    assert any(t.name == "L1 gradient" for t in fig.data)
    assert fig.layout.yaxis.type == "log"
    fig.to_json()
    sub = sl.plot_gradient_profile(h, epochs=[epochs[0]])
    assert len([t for t in sub.data if t.name.startswith("ART epoch")]) == 2
    with pytest.raises(ConfigError, match="no profile"):
        sl.plot_gradient_profile(h, epochs=[999])
    with pytest.raises(ConfigError, match="sparselab.ART"):
        sl.plot_gradient_profile(sl.History())


def test_exchange_compares_runs(art_histories):
    both = sl.History.concat(art_histories)
    fig = sl.plot_exchange(both)
    names = [t.name for t in fig.data]
    assert {"hypersparse: entered", "hypersparse: overlap", "l1: left", "l1: overlap"} <= set(names)
    hs = next(t for t in fig.data if t.name == "hypersparse: overlap")
    m = art_histories[0].metrics
    assert list(hs.y) == pytest.approx(m[m.name == "overlap_final"].sort_values("step").value.tolist())
    fig.to_json()
    assert len(sl.plot_exchange(both, runs=["l1"]).data) == 3
    with pytest.raises(ConfigError, match="unknown runs"):
        sl.plot_exchange(both, runs=["l2"])
    with pytest.raises(ConfigError, match="no ART traces"):
        sl.plot_exchange(sl.History())
    with pytest.raises(ConfigError, match="pass run="):
        sl.plot_gradient_profile(both)
    assert sl.plot_gradient_profile(both, run="l1").layout.title.text.startswith("Gradient profile of the l1")
