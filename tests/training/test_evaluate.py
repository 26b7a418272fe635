"""The probes against direct computations: scikit-learn's logistic regression, the
paper's classifier, the few-label draws."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from dim_fused.training import evaluate


def blobs(n: int, dim: int = 6, classes: int = 3) -> tuple[torch.Tensor, ...]:
    """Overlapping Gaussian classes: (train features, labels, test features, labels)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(2 * n) % classes
    centres = torch.randn(classes, dim, generator=generator)
    x = centres[labels] + torch.randn(2 * n, dim, generator=generator)
    return x[:n], labels[:n], x[n:], labels[n:]


def test_linear_probe_is_scikit_learns_logistic_regression():
    x, y, x_test, y_test = blobs(240)
    scaler = StandardScaler().fit(x.numpy())
    sklearn = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(scaler.transform(x.numpy()), y.numpy())
    expected = sklearn.score(scaler.transform(x_test.numpy()), y_test.numpy())
    # torch's std is unbiased, scikit-learn's scaler is not: a sqrt(n/(n-1)) scale the
    # penalty barely sees; the decisions on 240 test points agree to within one point.
    assert evaluate.linear_probe(x, y, x_test, y_test, 3) == pytest.approx(expected, abs=1 / 240 + 1e-9)


def test_constant_features_do_not_break_the_linear_probe():
    x, y, _, _ = blobs(60)
    x = torch.cat([x, torch.ones(60, 2)], 1)  # zero spread
    accuracy = evaluate.linear_probe(x, y, x, y, 3)
    assert np.isfinite(accuracy) and accuracy > 0.5


def test_the_classifier_is_the_papers():
    layers = list(evaluate.Classifier(4096, 10))
    assert [type(m) for m in layers] == [
        torch.nn.Linear,
        torch.nn.Dropout,
        torch.nn.BatchNorm1d,
        torch.nn.ReLU,
        torch.nn.Linear,
    ]
    assert (layers[0].in_features, layers[0].out_features, layers[4].out_features) == (4096, 200, 10)
    assert layers[1].p == 0.1


def test_nonlinear_probe_learns_is_seeded_and_leaves_the_global_generator_alone():
    x, y, x_test, y_test = blobs(300)
    state = torch.random.get_rng_state()
    first = evaluate.nonlinear_probe(x, y, x_test, y_test, 3, epochs=30, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert evaluate.nonlinear_probe(x, y, x_test, y_test, 3, epochs=30, seed=4) == first
    assert first > 0.85  # chance is 1/3; the linear probe gets 0.94 on these blobs


def test_few_labels_fit_on_exactly_that_many_images_per_class(monkeypatch):
    x, y, x_test, y_test = blobs(90)
    seen = []

    def spy(train, labels, test, test_labels, num_classes):
        seen.append((train, labels.tolist(), test))
        return 0.5 + 0.1 * len(seen)

    monkeypatch.setattr(evaluate, "logistic_regression_accuracy", spy)
    result = evaluate.few_label_probe(x, y, x_test, y_test, 3, shots=2, draws=4, seed=0)
    assert len(seen) == 4
    # Standardised with the mean and std of every training image, labels or not.
    standard = ((x - x.mean(0)) / x.std(0)).double()
    for fit, labels, test in seen:
        assert sorted(labels) == [0, 0, 1, 1, 2, 2]
        assert all(torch.isclose(standard, row).all(1).any() for row in fit)  # training images, standardised
        torch.testing.assert_close(test, ((x_test - x.mean(0)) / x.std(0)).double())
    assert result == pytest.approx({"mean": 0.75, "std": np.std([0.6, 0.7, 0.8, 0.9], ddof=1), "draws": 4})
