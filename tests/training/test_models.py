"""The DIM model: encoders, the objective's terms, their signs and gradient flow."""

import pytest
import torch

import dim_fused
from dim_fused.training import PRESETS, DeepInfoMax, DIMConfig, Encoder, TrainConfig

SMALL = {"in_channels": 1, "hidden": (32, 32), "units": 32}


def small_model(**overrides) -> DeepInfoMax:
    torch.manual_seed(0)
    return DeepInfoMax(DIMConfig(**{**SMALL, **overrides}))


def images(batch: int = 6, channels: int = 1, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, channels, size, size) * 2 - 1


@pytest.mark.parametrize(
    "architecture, size, local, conv, fc",
    [("basic32x32", 32, (128, 8, 8), (256, 4, 4), 1024), ("alex64x64", 64, (384, 15, 15), (192, 7, 7), 4096)],
)
def test_encoders_expose_the_official_layers(architecture, size, local, conv, fc):
    encoder = Encoder(architecture, in_channels=3, code_dim=64)
    features = encoder(images(2, 3, size))
    assert features.local_map.shape == (2, *local) and encoder.local_shape == local
    assert features.conv.shape == (2, *conv) and features.fc.shape == (2, fc)
    assert features.code.shape == (2, 64)
    assert features.local_map.min() >= 0  # the map is taken after its ReLU
    # Y is the last layer without an output nonlinearity (the official code's); only prior
    # matching squashes it.
    torch.testing.assert_close(features.code, encoder.to_code(features.fc))
    assert features.code.min() < 0 < features.code.max()


def test_encoder_rejects_wrong_images():
    with pytest.raises(ValueError, match=r"basic32x32 encodes images of shape \(B, 3, 32, 32\)"):
        Encoder("basic32x32")(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="architecture must be one of"):
        Encoder("resnet")


def test_defaults_are_the_papers_headline_configuration():
    config = DIMConfig()
    assert (config.alpha, config.beta, config.gamma) == PRESETS["dim-local"]  # DIM(L)
    assert (config.estimator, config.critic, config.global_critic) == ("infonce", "dot", "official")
    assert config.units == 2048 and config.code_dim == 64 and config.prior_penalty == 1.0
    run = TrainConfig(model=config)
    assert run.betas == (0.5, 0.999) and run.lr == 1e-4 and run.batch_size == 64 and not run.amp


def test_the_official_global_critic():
    """cortex_DIM's GlobalDIM for basic32x32: the encoder's layers from the local map on
    (conv 128 and conv 256, 4x4 stride 2, BatchNorm, ReLU; fc 1024) and a linear layer to
    2048 on the map; a linear layer 64 -> 2048 on Y; a dot product."""
    model = DeepInfoMax(DIMConfig(alpha=1.0, beta=0.0, gamma=0.0, in_channels=1, backend="reference"))
    critic = model.global_critic
    convs = [m for m in critic.local_net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (128, 128, (4, 4), (2, 2)),
        (128, 256, (4, 4), (2, 2)),
    ]
    linears = [m for m in critic.local_net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1024, 1024), (1024, 2048)]
    assert (critic.global_net.in_features, critic.global_net.out_features) == (64, 2048)
    x = images()
    features = model.encoder(x)
    local_codes = critic.local_net(features.local_map).unsqueeze(-1)
    expected = dim_fused.reference.dot_product_mi(local_codes, critic.global_net(features.code), "jsd")
    torch.testing.assert_close(critic(features.local_map, features.code, estimator="jsd"), expected)
    assert model(x).global_mi.shape == ()


def test_presets_are_the_papers():
    assert PRESETS == {"dim-local": (0.0, 1.0, 0.1), "dim-global": (1.0, 0.0, 1.0)}
    config = DIMConfig.preset("dim-global", critic="dot")
    assert (config.alpha, config.beta, config.gamma, config.critic) == (1.0, 0.0, 1.0, "dot")
    model = DeepInfoMax(DIMConfig.preset("dim-local", **SMALL))
    assert model.global_critic is None and model.local_critic is not None  # zero weight: not built


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"alpha": -1.0}, "alpha must be a finite weight >= 0"),
        ({"gamma": float("nan")}, "gamma must be a finite weight >= 0"),
        ({"alpha": 0.0, "beta": 0.0}, "no mutual-information term"),
        ({"estimator": "mine"}, "estimator must be one of"),
        ({"critic": "bilinear"}, "critic must be one of"),
        ({"num_negatives": 0}, "num_negatives must be at least 1"),
        ({"hidden": ()}, "hidden sizes must be positive"),
    ],
)
def test_bad_config_values_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        DIMConfig(**overrides)


def test_unknown_preset_and_batch_of_one():
    with pytest.raises(ValueError, match="preset must be one of dim-local, dim-global; got 'dim-best'"):
        DIMConfig.preset("dim-best")
    with pytest.raises(ValueError, match="batch of at least 2 images"):
        small_model()(images(1))


@pytest.mark.parametrize("critic", ["concat", "dot"])
@pytest.mark.parametrize("global_critic", ["official", "flat"])
def test_loss_is_the_weighted_objective_of_reference_terms(critic, global_critic):
    model = small_model(
        alpha=0.5, beta=1.0, gamma=0.1, critic=critic, global_critic=global_critic, estimator="jsd", backend="reference"
    )
    x = images()
    out = model(x, generator=torch.Generator().manual_seed(3))
    features = model.encoder(x)
    negatives = {"generator": torch.Generator().manual_seed(3)} if critic == "concat" else {}
    local = model.local_critic(features.local_map, features.code, estimator="jsd", **negatives)
    if global_critic == "official":
        global_ = model.global_critic(features.local_map, features.code, estimator="jsd")
    else:
        flat = features.local_map.flatten(1).unsqueeze(-1)
        global_ = model.global_critic(flat, features.code, estimator="jsd", **negatives)
    # The prior discriminator sees the squashed code sigmoid(Y), the critics Y itself.
    prior = torch.nn.functional.softplus(-model.prior(torch.sigmoid(features.code))).mean()
    torch.testing.assert_close(out.local_mi, local)
    torch.testing.assert_close(out.global_mi, global_)
    torch.testing.assert_close(out.prior, prior)
    torch.testing.assert_close(out.loss, -(0.5 * global_ + local) + 0.1 * prior)


@pytest.mark.parametrize("critic", ["concat", "dot"])
def test_two_views_score_each_code_against_the_other_views_map(critic):
    """views 2: the batch is two augmentations of the same images; each view's global code
    is scored against the other view's local features (never its own), both ways averaged,
    for the local and the global term; the prior sees every code."""
    model = small_model(alpha=0.5, beta=1.0, gamma=0.1, critic=critic, estimator="jsd", backend="reference", views=2)
    x = images(8)
    out = model(x, generator=torch.Generator().manual_seed(3))
    features = model.encoder(x)
    (map_1, map_2), (code_1, code_2) = features.local_map.chunk(2), features.code.chunk(2)
    generator = torch.Generator().manual_seed(3)
    negatives = {"generator": generator} if critic == "concat" else {}

    def local(feature_map, code):
        return model.local_critic(feature_map, code, estimator="jsd", **negatives)

    expected_local = 0.5 * (local(map_2, code_1) + local(map_1, code_2))
    expected_global = 0.5 * (
        model.global_critic(map_2, code_1, estimator="jsd") + model.global_critic(map_1, code_2, estimator="jsd")
    )
    prior = torch.nn.functional.softplus(-model.prior(torch.sigmoid(features.code))).mean()
    torch.testing.assert_close(out.local_mi, expected_local)
    torch.testing.assert_close(out.global_mi, expected_global)
    torch.testing.assert_close(out.loss, -(0.5 * expected_global + expected_local) + 0.1 * prior)
    assert out.code.shape == (8, 64)
    # Not the one-view score of the same batch: the pairing is what changed.
    own = local(features.local_map, features.code)
    assert not torch.allclose(out.local_mi, own)


def test_two_views_need_two_views_of_at_least_two_images():
    with pytest.raises(ValueError, match="two views of each image: got 7 images"):
        small_model(views=2)(images(7))
    with pytest.raises(ValueError, match="batch of at least 2 images.*got 1"):
        small_model(views=2)(images(2))
    with pytest.raises(ValueError, match=r"views must be 1 \(the paper's DIM\) or 2 \(cross-view\), got 3"):
        DIMConfig(views=3)


@pytest.mark.parametrize("critic", ["concat", "dot"])
def test_minimising_the_loss_raises_the_mi_estimates(critic):
    # The concat critic's global term (a 8192-input MLP) learns too slowly for a short test.
    model = small_model(alpha=1.0 if critic == "dot" else 0.0, beta=1.0, gamma=0.0, critic=critic)
    optimizer = torch.optim.Adam(model.encoder_parameters(), lr=1e-3)
    x, generator = images(16), torch.Generator().manual_seed(0)
    first = model(x, generator=torch.Generator().manual_seed(0))
    for _ in range(30):
        optimizer.zero_grad()
        model(x, generator=generator).loss.backward()
        optimizer.step()
    last = model(x, generator=torch.Generator().manual_seed(0))
    assert last.local_mi > first.local_mi + 0.05
    if critic == "dot":
        assert last.global_mi > first.global_mi + 0.05


def test_every_encoder_side_parameter_gets_a_gradient():
    model = small_model(alpha=1.0, beta=1.0, gamma=1.0)
    model(images(), generator=torch.Generator().manual_seed(0)).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_prior_discriminator_plays_against_the_encoder():
    model = small_model(gamma=1.0)
    encoder_side = {id(p) for p in model.encoder_parameters()}
    assert encoder_side.isdisjoint(id(p) for p in model.prior_parameters())

    # The encoder's prior term: descending it makes the discriminator call codes "prior".
    x = images(16)
    model.eval()  # the same BatchNorm statistics before and after
    before = model.prior(torch.sigmoid(model.encoder(x).code)).mean()
    model.zero_grad()
    model(x).prior.backward()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p -= 0.05 * p.grad
    assert model.prior(torch.sigmoid(model.encoder(x).code)).mean() > before
    model.train()

    # The discriminator's own loss: detached from the encoder; descending it raises the GAN bound.
    codes, samples = model.encoder(x).code, torch.rand(16, 64)
    model.zero_grad()
    loss, stats = model.prior_loss(codes, samples)
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    optimizer = torch.optim.SGD(model.prior_parameters(), lr=0.05)
    optimizer.step()
    _, after = model.prior_loss(codes, samples)
    assert after["prior_bound"] > stats["prior_bound"]


def test_the_prior_game_is_the_official_one():
    """D tells uniform samples from sigmoid(Y) with the GAN bound; its gradient penalty is
    prior_penalty * 0.5 * (E_P |grad D|^2 + E_Q |grad D|^2), the official code's."""
    model = small_model(gamma=1.0, prior_penalty=0.0)
    codes, samples = torch.randn(8, 64), torch.rand(8, 64)
    plain, stats = model.prior_loss(codes, samples)
    torch.testing.assert_close(plain, -stats["prior_bound"])
    squashed = torch.sigmoid(codes)
    expected_bound = dim_fused.reference.mi_bound(model.prior(samples), model.prior(squashed), "gan")
    torch.testing.assert_close(stats["prior_bound"], expected_bound.detach())
    model.config.prior_penalty = 10.0
    penalised, _ = model.prior_loss(codes, samples)
    penalties = []
    for x in (samples, squashed):
        x = x.clone().requires_grad_()
        (gradient,) = torch.autograd.grad(model.prior(x).sum(), x)
        penalties.append(gradient.pow(2).sum(-1).mean())
    torch.testing.assert_close(penalised, plain + 10.0 * 0.5 * (penalties[0] + penalties[1]))
    with pytest.raises(ValueError, match="samples must have the codes' shape"):
        model.prior_loss(codes, torch.rand(8, 3))
    with pytest.raises(RuntimeError, match="gamma = 0"):
        small_model(gamma=0.0).prior_loss(codes, samples)


def test_fused_and_reference_backends_agree_on_the_model():
    if "cpu" not in dim_fused.available_backends("cpu"):
        pytest.skip("needs the compiled cpu backend")
    x = images()
    for critic in ("concat", "dot"):
        results = []
        for backend in ("reference", "cpu"):
            model = small_model(alpha=1.0, beta=1.0, gamma=0.1, critic=critic, backend=backend)
            out = model(x, generator=torch.Generator().manual_seed(1))
            out.loss.backward()
            results.append((out.loss.detach(), model.encoder.to_code.weight.grad))
        torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


def test_autocast_runs_the_fused_ops_in_its_dtype():
    model = small_model(alpha=1.0, beta=1.0, critic="concat")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(), generator=torch.Generator().manual_seed(0))
    assert out.local_mi.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.local_critic.convs[0].weight.grad.dtype == torch.float32


@pytest.mark.parametrize(
    ("critic", "views"), [("concat", 2), ("dot", 1)], ids=["concat-both-terms-two-views", "dot-one-view"]
)
def test_forward_and_loss_compile_as_one_graph(critic, views):
    """The whole objective traces with torch.compile(fullgraph=True), no graph break (what a
    CUDA graph of the step needs): the concat critics' negatives drawn before, outside the
    graph; the compiled loss and gradients are the eager ones."""
    torch._dynamo.reset()
    model = small_model(alpha=0.5, beta=1.0, gamma=0.1, critic=critic, global_critic="flat", views=views)
    x = images(4 * views)
    negatives = model.negatives(4, torch.Generator().manual_seed(5))
    assert sorted(negatives) == (["global", "local"] if critic == "concat" else [])

    def loss(x, negatives):
        return model(x, negatives=negatives).loss

    eager = loss(x, negatives)
    eager_grads = torch.autograd.grad(eager, model.encoder_parameters())
    compiled = torch.compile(loss, fullgraph=True)(x, negatives)
    torch.testing.assert_close(compiled, eager)
    # Inductor reorders float32 reductions (BatchNorm's, the convolutions'): close, not equal.
    for grad, expected in zip(torch.autograd.grad(compiled, model.encoder_parameters()), eager_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-3, atol=2e-4)


def test_forward_and_loss_compile_as_one_graph_under_autocast():
    """The fused ops' autocast policy (read while tracing) breaks no graph either: the
    objective compiled inside torch.autocast, as a mixed-precision user's step would be."""
    torch._dynamo.reset()
    model = small_model(alpha=0.5, beta=1.0, critic="concat", global_critic="flat")
    x = images(4)
    negatives = model.negatives(4, torch.Generator().manual_seed(5))

    def loss(x, negatives):
        return model(x, negatives=negatives).loss

    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = loss(x, negatives)
        compiled = torch.compile(loss, fullgraph=True)(x, negatives)
    torch.testing.assert_close(compiled, eager, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("views", [1, 2])
def test_negatives_drawn_before_are_what_the_generator_draws_in_forward(views):
    model = small_model(alpha=0.5, critic="concat", global_critic="flat", estimator="jsd", views=views)
    x = images(4 * views)
    drawn = model(x, negatives=model.negatives(4, torch.Generator().manual_seed(9))).loss
    torch.testing.assert_close(drawn, model(x, generator=torch.Generator().manual_seed(9)).loss)
    negatives = model.negatives(4, torch.Generator().manual_seed(9))
    assert [len(negatives[k]) for k in ("local", "global")] == [views, views]
    assert negatives["local"][0].shape == (1, 64, 4) and negatives["global"][0].shape == (1, 1, 4)
