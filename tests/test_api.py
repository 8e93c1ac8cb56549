"""jaxmnist.api, as a notebook uses it: what the command line refuses, Python refuses too, in one
sentence; presets, arrays and step numbers mean what they say."""

from __future__ import annotations

import flax.linen as nn
import numpy as np
import pytest
from conftest import make_mnist

from jaxmnist import api
from jaxmnist.config import SettingError
from jaxmnist.data import DataError
from jaxmnist.errors import UserError


@pytest.mark.parametrize("settings, sentence", [
    ({"schedule": "Cosine"}, "--schedule must be one of step, cosine, got 'Cosine'."),
    ({"flip": "no"}, "--flip must be a bool, got 'no'."),  # a truthy string would have turned mirroring on
    ({"epochs": 1.5}, "--epochs must be an int, got 1.5."),
    ({"lr": "1e-3"}, "--lr must be a float, got '1e-3'."),
    ({"optimizer": "Adam"}, "--optimizer must be one of adam, adamw, sgd, got 'Adam'."),
    ({"dataset": "fashion"}, "--dataset must be one of mnist, fashion_mnist, kmnist, emnist/digits, emnist/letters, "
                             "emnist/balanced, got 'fashion'."),
])
def test_a_config_made_in_python_is_checked_as_the_flags_are(settings, sentence):
    with pytest.raises(SettingError) as error:
        api.Config(**settings)
    assert str(error.value) == sentence


def test_train_applies_a_preset_checks_arrays_and_restores_by_step_number(tmp_path):
    tiny = make_mnist(200, 30)
    records = api.train(recipe="improved", epochs=1, warmup_epochs=0.0, arrays=tiny, allow_small_data=True,
                        eval_batch_size=10, workdir=str(tmp_path / "run"))
    recorded = api.read_run(tmp_path / "run")["config"]
    assert (recorded["recipe"], recorded["translate"], recorded["optimizer"], recorded["epochs"]) == ("improved", 2, "adamw", 1)
    assert api.restore(tmp_path / "run", step=records[-1]["step"]).step == records[-1]["step"]  # an int, as the docs say
    assert [r["step"] for r in api.records(tmp_path / "run")] == [records[-1]["step"]]

    many = make_mnist(200, 30, classes=47)  # labels 0..46 into a 10-class run trained silently before
    with pytest.raises(DataError, match=r"labels outside 0\.\.9, the 10 classes of MNIST"):
        api.train(arrays=many, epochs=1, allow_small_data=True, eval_batch_size=10, workdir=str(tmp_path / "many"))
    with pytest.raises(UserError, match="has no metrics.jsonl"):
        api.records(tmp_path / "nowhere")
    with pytest.raises(UserError, match="has no metrics.jsonl"):
        api.figures.curves([tmp_path / "nowhere"])


def test_a_run_of_a_model_registered_in_a_notebook_is_one_sentence_elsewhere(tmp_path, monkeypatch, capsys):
    from jaxmnist.apps import evaluate

    class Tiny(nn.Module):
        num_classes: int = 10

        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))

    monkeypatch.setitem(api.MODELS, "tiny", lambda recipe: Tiny(num_classes=recipe["num_classes"]))
    api.train(model="tiny", arrays=make_mnist(200, 30), epochs=1, allow_small_data=True, eval_batch_size=10,
              workdir=str(tmp_path / "run"))
    assert api.load_model(tmp_path / "run")(np.zeros((2, 28, 28), np.uint8)).shape == (2, 10)
    monkeypatch.delitem(api.MODELS, "tiny")  # another process: the notebook's registration is gone
    capsys.readouterr()
    assert evaluate.main(["--workdir", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err.strip() == ("The run's --model tiny is not registered in this code (it knows lab, "
                                                "resnet): register it in jaxmnist/core/models/__init__.py, or use the "
                                                "code that trained it.")
