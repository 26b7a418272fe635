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


def correlated(n: int, dim: int = 48, classes: int = 4, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Blobs seen through a random mixing with features of very different scales and
    near-duplicates: an ill-conditioned problem, as conv features are."""
    x, y, x_test, y_test = blobs(n, dim=8, classes=classes)
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(8, dim, generator=generator) * torch.logspace(-2, 1, dim)
    noise = torch.randn(2 * n, dim, generator=generator) * torch.logspace(-3, 0, dim)
    features = torch.cat([x, x_test]) @ mixing + noise
    return features[:n], y, features[n:], y_test


def sklearn_fit(x: torch.Tensor, y: torch.Tensor) -> tuple[LogisticRegression, StandardScaler]:
    scaler = StandardScaler().fit(x.numpy())
    return LogisticRegression(C=1.0, max_iter=10000, tol=1e-10).fit(scaler.transform(x.numpy()), y.numpy()), scaler


def penalised_loss(x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> float:
    """The objective both minimise: mean cross-entropy + |W|^2 / (2 n)."""
    logits = x @ weight + bias
    logits = logits - logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean() + (weight**2).sum() / (2 * len(y)))


def test_the_fast_solver_reaches_scikit_learns_optimum():
    """float32 and preconditioned (what 60000 x 4096 conv features get): the objective at
    scikit-learn's optimum, and its test accuracy, on an ill-conditioned problem."""
    x, y, x_test, y_test = correlated(3000)
    sklearn, scaler = sklearn_fit(x, y)
    mean, scale = evaluate._statistics(x)
    standard = evaluate._standardise(x, mean, scale, torch.float32)
    weight, bias = evaluate.fit_logistic_regression(standard, y, 4)
    assert weight.dtype == torch.float32
    # torch's std is unbiased, scikit-learn's scaler is not: compare each on its own scaling.
    ours = penalised_loss(standard.double().numpy(), y.numpy(), weight.double().numpy(), bias.double().numpy())
    best = penalised_loss(scaler.transform(x.numpy()), y.numpy(), sklearn.coef_.T, sklearn.intercept_)
    assert ours == pytest.approx(best, rel=1e-4)
    expected = sklearn.score(scaler.transform(x_test.numpy()), y_test.numpy())
    x_test32 = evaluate._standardise(x_test, mean, scale, torch.float32)
    accuracy = evaluate.logistic_regression_accuracy(standard, y, x_test32, y_test, 4)
    assert accuracy == pytest.approx(expected, abs=0.005)


def test_the_fast_solver_is_what_large_linear_probes_use(monkeypatch):
    """More than SMALL_PROBLEM training feature values and more images than features: the
    fast solver; else the exact one. Both agree with scikit-learn."""
    x, y, x_test, y_test = correlated(3000)
    seen = []
    fit = evaluate.fit_logistic_regression
    monkeypatch.setattr(evaluate, "fit_logistic_regression", lambda x, *a: seen.append(x.dtype) or fit(x, *a))
    expected = sklearn_fit(x, y)
    expected = expected[0].score(expected[1].transform(x_test.numpy()), y_test.numpy())
    monkeypatch.setattr(evaluate, "SMALL_PROBLEM", x.numel() - 1)
    assert evaluate.linear_probe(x, y, x_test, y_test, 4) == pytest.approx(expected, abs=0.005)
    monkeypatch.setattr(evaluate, "SMALL_PROBLEM", x.numel())
    assert evaluate.linear_probe(x, y, x_test, y_test, 4) == pytest.approx(expected, abs=0.005)
    monkeypatch.setattr(evaluate, "SMALL_PROBLEM", 0)
    evaluate.linear_probe(x[:40], y[:40], x_test, y_test, 4)  # fewer images than features
    assert seen == [torch.float32, torch.float64, torch.float64]


def test_few_label_fits_converge(monkeypatch):
    """A few-label fit (10 per class, more features than images) is the exact float64
    solver's: it stops well before 500 iterations, at scikit-learn's optimum."""
    x, y, x_test, y_test = correlated(40, dim=512, classes=4)
    mean, scale = evaluate._statistics(x)
    standard, standard_test = evaluate._standardise(x, mean, scale), evaluate._standardise(x_test, mean, scale)
    iterations = []
    step = torch.optim.LBFGS.step

    def counted(self, closure):
        loss = step(self, closure)
        iterations.append(self.state[self._params[0]]["n_iter"])
        return loss

    monkeypatch.setattr(torch.optim.LBFGS, "step", counted)
    weight, bias = evaluate.fit_logistic_regression(standard, y, 4)
    assert weight.dtype == torch.float64 and iterations[0] < 500
    sklearn = LogisticRegression(C=1.0, max_iter=10000, tol=1e-12).fit(standard.numpy(), y.numpy())
    ours = penalised_loss(standard.numpy(), y.numpy(), weight.numpy(), bias.numpy())
    best = penalised_loss(standard.numpy(), y.numpy(), sklearn.coef_.T, sklearn.intercept_)
    assert ours == pytest.approx(best, rel=1e-6)
    predicted = (standard_test @ weight + bias).argmax(1).numpy()
    assert (predicted == sklearn.predict(standard_test.numpy())).mean() >= 1 - 1 / 40


def test_classifier_recipes():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert evaluate.classifier_recipe(gpu) == evaluate.PAPER_CLASSIFIER == (100, 64, 1e-4)
    assert evaluate.classifier_recipe(cpu) == evaluate.CPU_CLASSIFIER
    assert evaluate.classifier_recipe(cpu, 100, 64) == evaluate.PAPER_CLASSIFIER  # the paper's, on request
    epochs, batch, lr = evaluate.classifier_recipe(gpu, 7, 256)
    assert (epochs, batch) == (7, 256) and lr == pytest.approx(evaluate.classifier_lr(256))
    with pytest.raises(ValueError, match="--classifier-epochs -1"):
        evaluate.classifier_recipe(cpu, -1)
    with pytest.raises(ValueError, match="--classifier-batch 1"):
        evaluate.classifier_recipe(cpu, None, 1)


def test_probes_show_their_progress(capsys):
    """One bar on stderr over every fit (an extraction, then per layer the linear, the
    nonlinear and the few-label probes), ending complete; none when disabled."""
    from dim_fused.training import data as datasets
    from dim_fused.training.models import Encoder

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 1, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.arange(60) % 3
    data = datasets.ImageData.from_tensors("tiny", images[:45], labels[:45], images[45:], labels[45:])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        encoder = Encoder(in_channels=1)
    recipe = evaluate.ClassifierRecipe(1, 16, 1e-4)
    steps = evaluate._probe_steps(recipe.epochs)
    assert steps == 1 + 3 * 4
    bar = evaluate._Progress(steps, enabled=True)
    result = evaluate.probe_encoder(encoder, data, torch.device("cpu"), 45, 0, recipe, progress=bar, name="random")
    bar.close()
    err = capsys.readouterr().err
    assert "probes: 100%" in err and f"{steps}/{steps}" in err
    assert set(result["nonlinear"]) == set(result["linear"]) == set(evaluate.FEATURES)
    again = evaluate.probe_encoder(encoder, data, torch.device("cpu"), 45, 0, recipe)
    assert again == result and capsys.readouterr().err == ""  # seeded; no bar unless asked


def test_raw_pixels_are_the_baseline_row_of_the_table_and_the_plot(tmp_path, capsys):
    """evaluate() probes the encoder's inputs (centre-cropped, in [-1, 1]) as it probes
    the encoders: same probes, same draws; the table gets a pixels row, the plot a line."""
    from dim_fused.training import DIMConfig, TrainConfig
    from dim_fused.training import data as datasets
    from dim_fused.training.models import build_model
    from dim_fused.training.plots import plot_probes

    generator = torch.Generator().manual_seed(0)
    centres = torch.randint(40, 216, (3, 1, 36, 36), generator=generator)
    labels = torch.arange(90) % 3
    images = (centres[labels] + torch.randint(-40, 40, (90, 1, 36, 36), generator=generator)).to(torch.uint8)
    data = datasets.ImageData.from_tensors("blobs", images[:60], labels[:60], images[60:], labels[60:])
    config = TrainConfig(data="blobs", model=DIMConfig(in_channels=1, units=32, hidden=(32, 32)), probe_samples=60)
    model = build_model(config.model, config.seed)
    result = evaluate.evaluate(config, model.state_dict(), data, torch.device("cpu"), 2, 16, progress=False)

    inputs = datasets.to_inputs(images, 32).flatten(1)
    assert torch.equal(evaluate.pixels(images[:60], 32, torch.device("cpu"), batch=7), inputs[:60])
    args = (inputs[:60], labels[:60], inputs[60:], labels[60:], 3)
    assert result["pixels"]["linear"] == {"pixels": evaluate.linear_probe(*args)}
    assert result["pixels"]["few_labels"]["10"]["pixels"] == evaluate.few_label_probe(*args, 10, 5, config.seed)
    assert result["pixels"]["linear"]["pixels"] > 0.9  # the classes differ in their mean pixel
    assert set(result["pixels"]["nonlinear"]) == {"pixels"}
    assert result["trained"] == result["random"]  # the same untrained weights: the same probes
    assert result["probe"]["train_images"] == 60 and result["classes"] == 3

    evaluate.print_table(result)
    table = capsys.readouterr().out.splitlines()
    assert "fitted on 60 training images" in table[0] and "1 per class" in table[1]
    labels = [line[:16].split() for line in table[2:]]
    assert labels == [row for layer in evaluate.FEATURES for row in ([layer, "trained"], ["random"])] + [["pixels"]]
    rows = [(e, layer) for layer in evaluate.FEATURES for e in ("trained", "random")] + [("pixels", "pixels")]
    for line, (encoder, layer) in zip(table[2:], rows, strict=True):
        cells = [float(c) for c in line[16:].split()]
        few = [result[encoder]["few_labels"][str(s)][layer]["mean"] for s in evaluate.SHOTS]
        expected = [result[encoder]["linear"][layer], result[encoder]["nonlinear"][layer], *few]
        assert cells == pytest.approx(expected, abs=5e-5)

    plot_probes(result, tmp_path / "probes.png")
    assert (tmp_path / "probes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
