"""Training: checks of a fit's options that used to surface only after an epoch's work, or not at all."""
from __future__ import annotations

import pytest
import torch
from test_training_review import Crash

import sparselab as sl
from sparselab.callbacks import Callback


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=28, limit=320)


def test_an_lr_milestone_past_the_last_epoch_is_refused_where_it_is_given():
    with pytest.raises(sl.errors.ConfigError, match=r"lr_milestones \[3, 5\] lie at or after the end of training"):
        sl.TrainConfig(epochs=3, lr_schedule="step", lr_milestones=(1, 3, 5)).check_schedule_length()
    sl.TrainConfig(epochs=4, lr_schedule="step", lr_milestones=(1, 3)).check_schedule_length()
    data = sl.data.load("digits", image_size=8, limit=64)
    with pytest.raises(sl.errors.ConfigError, match=r"lr_milestones \[3\]"):
        sl.fit(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), data, epochs=3, lr_schedule="step",
               lr_milestones=(1, 3), batch_size=32, progress=False)  # was: lr constant after epoch 1
    from sparselab.experiments.art import art_preset

    # the paper's fine-tune drops at epochs 80 and 120: 100 fine-tuning epochs would never reach the second
    with pytest.raises(sl.errors.ConfigError, match=r"lr_milestones \[120\] lie at or after the end of training"):
        art_preset("paper-vgg19-cifar10", finetune_epochs=100)
    assert art_preset("paper-vgg19-cifar10").finetune_epochs == 160



def _dropout_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 32), torch.nn.Dropout(0.5),
                               torch.nn.Linear(32, 3))


def test_a_mid_epoch_resume_of_image_files_with_dropout_is_exact(tmp_path):
    """Image files go through a DataLoader, which drew its base seed from torch's global generator on each new
    iterator: the resumed run drew once more than the uninterrupted one, shifting every later dropout draw."""
    from conftest import write_image_folder

    data = sl.data.load("imagefolder", root=write_image_folder(tmp_path / "images"), image_size=8, augment="crop_flip")
    opts = dict(epochs=2, batch_size=4, progress=False, device="cpu", seed=3)
    ref = _dropout_net(0)
    sl.fit(ref, data, **opts)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sl.fit(_dropout_net(0), data, callbacks=[Crash(3)], checkpoint_dir=tmp_path / "ck", checkpoint_every=2,
               **opts)

    class Quiet(Callback):
        pass

    Quiet.__name__ = "Crash"  # same callback list as the interrupted run
    model = _dropout_net(1)
    sl.fit(model, data, callbacks=[Quiet()], checkpoint_dir=tmp_path / "ck", checkpoint_every=2, resume=True, **opts)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_a_checkpoint_folder_under_a_file_is_refused_before_the_first_step(tmp_path, digits):
    (tmp_path / "notes.txt").write_text("")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(sl.errors.ConfigError, match=r"lies under .*notes.txt', which is a file"):
        sl.fit(model, digits, epochs=1, batch_size=64, checkpoint_dir=tmp_path / "notes.txt" / "ck",
               progress=False)  # was: refused when the first checkpoint was written, after the epoch
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not (tmp_path / "ck").exists()


def test_too_large_a_batch_with_repeated_augmentation_names_the_images_an_epoch_draws():
    data = sl.data.load("digits", image_size=8, limit=320)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(sl.errors.ConfigError, match=r"exceeds the \d+ images an epoch draws with repeated_aug=3"):
        sl.fit(model, data, epochs=1, batch_size=len(data.train) + 8, repeated_aug=3, progress=False)


def test_a_fresh_fit_into_a_folder_with_a_checkpoint_says_it_replaces_it(tmp_path):
    data = sl.data.load("digits", image_size=8, limit=64)

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    sl.fit(net(), data, epochs=1, batch_size=32, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "last.pt").is_file()
    with pytest.warns(RuntimeWarning, match="holds the checkpoint of an earlier run; resume=False starts afresh"):
        sl.fit(net(), data, epochs=1, batch_size=32, checkpoint_dir=tmp_path, progress=False)  # was: silent
