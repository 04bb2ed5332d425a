"""The spurious score on a hand-computed example, the comparison statistics, and checkpoint
safety."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import rsc_core
from rsc_core.runs.checkpoints import build_model_from_checkpoint, read_checkpoint
from rsc_core.analysis.compare import _summarise
from rsc_core.data.datasets import ImageData
from rsc_core.errors import CheckpointError
from rsc_core.evaluation.spurious_score import ScoreResult, score_model


class CornerDetector(nn.Module):
    """Logits that put a lot of weight on class 0 when pixel (0, 0) is bright.

    For an image with corner value v and label-ish brightness b (mean of the rest), the logits
    are [4 v, b, 0]: the class-0 probability rises with v."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner = x[:, 0, 0, 0]
        rest = x[:, 0].flatten(1)[:, 1:].mean(1)
        return torch.stack([4 * corner, rest * 8, torch.zeros_like(corner)], dim=1)


def hand_probabilities(corner: float, rest: float) -> np.ndarray:
    logits = np.array([4 * corner, 8 * rest, 0.0])
    e = np.exp(logits - logits.max())
    return e / e.sum()


def make_test_split() -> tuple[ImageData, list[float], list[float]]:
    corners = [0.0, 1.0, 0.5, 0.0, 0.9]
    rests = [0.0, 0.2, 0.1, 0.6, 0.0]
    labels = [0, 0, 1, 1, 2]
    images = torch.zeros(5, 1, 3, 3)
    for i, (c, r) in enumerate(zip(corners, rests)):
        images[i, 0] = r
        images[i, 0, 0, 0] = c
    return ImageData(images, torch.tensor(labels)), corners, rests


def test_score_matches_hand_computation():
    test, corners, rests = make_test_split()
    # v1 sets pixel (0, 0) to 1: the rise of p_0 from corner c to corner 1, same rest.
    rises = [hand_probabilities(1.0, r)[0] - hand_probabilities(c, r)[0]
             for c, r in zip(corners, rests)]
    expected = [float(rise > 0.1) for rise in rises]
    assert expected == [1.0, 0.0, 1.0, 1.0, 0.0]  # a non-trivial mix
    result = score_model(CornerDetector(), test, "s1", target=0, seed=0)
    assert result.score == pytest.approx(np.mean(expected))
    assert result.indicators.tolist() == expected
    assert result.num_images == 5
    clean_predictions = [int(np.argmax(hand_probabilities(c, r))) for c, r in zip(corners, rests)]
    assert result.clean_accuracy == pytest.approx(np.mean(np.equal(clean_predictions,
                                                                   [0, 0, 1, 1, 2])))
    patterned = [int(np.argmax(hand_probabilities(1.0, r))) for r in rests]
    others = [i for i, y in enumerate([0, 0, 1, 1, 2]) if y != 0]
    assert result.patterned_accuracy == pytest.approx(
        np.mean([patterned[i] == [0, 0, 1, 1, 2][i] for i in others]))


def test_exclude_target_and_threshold():
    test, _, _ = make_test_split()
    excluded = score_model(CornerDetector(), test, "v1", 0, exclude_target=True)
    assert excluded.num_images == 3 and excluded.indicators.tolist() == [1.0, 1.0, 0.0]
    strict = score_model(CornerDetector(), test, "v1", 0, threshold=0.99)
    assert strict.score == 0.0


def result(indicators: list[int], score: float, acc: float = 0.9) -> ScoreResult:
    return ScoreResult("v8", 0, 0, 0.1, False, score, len(indicators), acc, acc,
                       np.array(indicators, dtype=np.uint8))


def test_group_summary_statistics():
    runs = [result([1, 1, 0, 0], 0.5, 0.9), result([1, 0, 0, 0], 0.25, 0.8)]
    baseline = np.array([0, 0, 0, 1, 0, 0, 0, 0], dtype=float)
    row = _summarise(3, runs, baseline)
    assert row.score_mean == pytest.approx(0.375)
    assert row.score_sem == pytest.approx(stats.sem([0.5, 0.25]))
    assert row.clean_accuracy_mean == pytest.approx(0.85)
    expected = stats.ttest_ind([1, 1, 0, 0, 1, 0, 0, 0], baseline, equal_var=False,
                               alternative="greater").pvalue
    assert row.p_value == pytest.approx(expected)


# --- checkpoints --------------------------------------------------------------------------


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    Exploit.marker = marker
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        torch.save({"model_state_dict": {}, "payload": Exploit()}, fh)
    with pytest.raises(CheckpointError, match="refuses to load"):
        read_checkpoint(path)
    assert not marker.exists()


# torch warns about the pickle protocol of the very file this test plants: expected here
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_raw_pickle_is_refused(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"model_state_dict": {}}))
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_corrupt_and_missing_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(bad)
    text = tmp_path / "notes.txt"  # torch raises KeyError here; it is garbage, not unsafe code
    text.write_text("hello world\n")
    with pytest.raises(CheckpointError, match="corrupt or not a PyTorch file"):
        read_checkpoint(text)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def reference_checkpoint(tmp_path):
    model = rsc_core.create("architectures", "LargeMLP").build((1, 28, 28), 10)
    optimizer = torch.optim.Adam(model.parameters())
    path = tmp_path / "ref.pt"
    torch.save({"epoch": 70, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict()}, path)
    return model, path


def test_reference_format_loads_into_the_same_architecture(tmp_path):
    model, path = reference_checkpoint(tmp_path)
    checkpoint = read_checkpoint(path)
    loaded = build_model_from_checkpoint(checkpoint, "LargeMLP", (1, 28, 28), 10)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(CheckpointError, match="pass --arch"):
        build_model_from_checkpoint(checkpoint)
    with pytest.raises(CheckpointError, match="do not fit architecture MLP"):
        build_model_from_checkpoint(checkpoint, "MLP", (1, 28, 28), 10)
