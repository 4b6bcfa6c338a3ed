"""sar.smp: SAR over segmentation_models.pytorch models, against the core.

Tiny smp models (``encoder_weights=None``, a 0.4M-parameter timm encoder),
CPU only, nothing downloaded. Skipped where smp is not installed (the
mmseg environments). The reference side of every comparison reads the
features its own way (a hook on a copy with dropout switched off) and
classifies the anchors with an explicit loop over the kernel's taps.
"""
import copy
import socket

import pytest

smp = pytest.importorskip('segmentation_models_pytorch')

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from sar.smp import SARModel, classify_constant_map, find_layout  # noqa

C = 3
ENCODER = 'tu-resnet10t'
IGNORE = 200


def tiny(name, classes=C, **kwargs):
    """A small randomly initialised smp model; seeded."""
    torch.manual_seed(0)
    small = dict(
        FPN=dict(decoder_pyramid_channels=16,
                 decoder_segmentation_channels=32),
        Unet=dict(decoder_channels=(16, 8, 8, 8, 8)),
        PSPNet=dict(psp_out_channels=16),
        DeepLabV3=dict(decoder_channels=16),
        DPT=dict(encoder_name='tu-vit_tiny_patch16_224',
                 dynamic_img_size=True, decoder_intermediate_channels=(
                     16, 16, 16, 16), decoder_fusion_channels=16),
    ).get(name, {})
    args = dict(encoder_name=ENCODER, encoder_weights=None, classes=classes)
    args.update(small)
    args.update(kwargs)
    return getattr(smp, name)(**args)


def batch(B=2, size=64, seed=0, ignore=IGNORE, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, size, size, generator=g, dtype=dtype)
    labels = torch.randint(0, C, (B, size, size), generator=g)
    labels[:, :5] = ignore
    return images, labels


def prime(reg, seed=1):
    """Semantic anchors set, so the pull runs in every call."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        reg.semantic_anchors.copy_(torch.rand(reg.semantic_anchors.shape,
                                              generator=g))
        reg.initialised.fill_(True)
        reg.iters_since_init.fill_(0)


def no_dropout(model):
    """A copy with every dropout switched off (identity)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.p = 0.0
    return model


def classifier_input(model, images, conv):
    """What ``conv`` of ``model`` classifies, read by a hook of the test."""
    seen = []
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        output = model(images)
    finally:
        handle.remove()
    return output, seen[-1]


def tap_loop_classifier(conv):
    """(C, D) anchors -> (C, C): sum over taps of W[:, :, i, j] a, + b."""
    def classify(embedded):
        w = conv.weight
        logits = conv.bias.expand(embedded.shape[0], -1)
        for i in range(w.shape[2]):
            for j in range(w.shape[3]):
                logits = logits + embedded.to(w.dtype) @ w[:, :, i, j].t()
        return logits
    return classify


@pytest.mark.parametrize('name,kernel,feature', [
    ('FPN', 1, nn.Dropout2d), ('PSPNet', 3, nn.Dropout2d),
    ('DeepLabV3', 1, nn.Conv2d), ('DeepLabV3Plus', 1, nn.Conv2d),
    ('UPerNet', 1, nn.Conv2d), ('Segformer', 1, nn.Conv2d),
    ('Linknet', 1, nn.Conv2d), ('Unet', 3, nn.Conv2d),
    ('UnetPlusPlus', 3, nn.Conv2d), ('MAnet', 3, nn.Conv2d),
    ('PAN', 3, nn.Conv2d), ('DPT', 1, nn.Dropout)])
def test_layout_of_every_smp_architecture(name, kernel, feature):
    model = tiny(name)
    classifier, module = find_layout(model)
    assert classifier.kernel_size == (kernel, kernel)
    assert classifier.out_channels == C
    assert type(module) is feature
    if feature is nn.Conv2d:  # no dropout: the classifier's own input
        assert module is classifier


def test_kxk_anchor_logits_are_the_conv_on_a_constant_map():
    # The decision for 3x3 classifiers: an anchor is classified as the
    # interior pixel of a constant map of it (the kernel summed over taps).
    torch.manual_seed(0)
    conv = nn.Conv2d(6, C, 3, padding=1)
    anchors = torch.rand(C, 6)
    constant = anchors[:, :, None, None].expand(C, 6, 7, 7)
    expected = conv(constant)[:, :, 3, 3]
    assert torch.allclose(classify_constant_map(conv, anchors), expected,
                          atol=1e-6)
    # Not the centre tap alone (the alternative, a lone pixel in zeros).
    centre = anchors @ conv.weight[:, :, 1, 1].t() + conv.bias
    assert not torch.allclose(classify_constant_map(conv, anchors), centre,
                              atol=1e-3)
    # For 1x1 it is the paper's W a + b.
    conv1 = nn.Conv2d(6, C, 1)
    assert torch.allclose(classify_constant_map(conv1, anchors),
                          anchors @ conv1.weight[:, :, 0, 0].t() + conv1.bias,
                          atol=1e-6)


@pytest.mark.parametrize('name', ['FPN', 'Unet', 'PSPNet', 'DPT'])
def test_losses_and_state_equal_the_core_on_the_same_features(name):
    model = SARModel(tiny(name), ignore_index=IGNORE, pull_mode='after_init')
    model.train()
    prime(model.sar)
    reference_reg = copy.deepcopy(model.sar)
    reference = no_dropout(model.model)
    images, labels = batch()
    classifier, _ = find_layout(model.model)
    ref_classifier, _ = find_layout(reference)

    torch.manual_seed(3)
    output, sar = model(images, labels)
    torch.manual_seed(3)
    ref_output, feats = classifier_input(reference, images, ref_classifier)
    expected = reference_reg(feats, labels, tap_loop_classifier(classifier))

    assert sar['loss_sar_pull'].item() > 0  # the pull really ran
    assert torch.allclose(sar['loss_sar_pull'], expected['pull'], rtol=1e-6)
    assert torch.allclose(sar['loss_sar_anchor_ce'], expected['anchor_ce'],
                          rtol=1e-6)
    assert torch.allclose(sar['loss'], expected['pull'] +
                          expected['anchor_ce'], rtol=1e-6)
    for key in ('anchor_acc', 'gate_open', 'iters_since_init'):
        assert sar[f'sar.{key}'].item() == expected[key].item()
    assert torch.equal(model.sar.iters_since_init,
                       reference_reg.iters_since_init)
    assert output.shape == (2, C, 64, 64)


@pytest.mark.parametrize('name', ['FPN', 'PSPNet', 'DPT'])
def test_the_feature_is_taken_before_dropout(name):
    # Dropout at 0.9 in training: a feature read after it would be mostly
    # zeros and give another pull.
    model = SARModel(tiny(name), ignore_index=IGNORE, pull_mode='after_init')
    dropout = find_layout(model.model)[1]
    assert isinstance(dropout, (nn.Dropout, nn.Dropout2d))
    dropout.p = 0.9
    model.train()
    prime(model.sar)
    reference_reg = copy.deepcopy(model.sar)
    reference = no_dropout(model.model)
    images, labels = batch()
    torch.manual_seed(3)
    _, sar = model(images, labels)
    _, feats = classifier_input(reference, images,
                                find_layout(reference)[0])
    expected = reference_reg(
        feats, labels, tap_loop_classifier(find_layout(model.model)[0]))
    assert torch.allclose(sar['loss_sar_pull'], expected['pull'], rtol=1e-6)


@pytest.mark.parametrize('name', ['FPN', 'Unet'])
def test_every_gradient_in_float64_equals_the_reference(name):
    model = SARModel(tiny(name), ignore_index=IGNORE,
                     pull_mode='after_init').double()
    model.train()
    for m in model.modules():  # no random masks: both sides see the same
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.eval()
    prime(model.sar)
    reference_reg = copy.deepcopy(model.sar)
    reference = copy.deepcopy(model.model)
    images, labels = batch(dtype=torch.float64)

    output, sar = model(images, labels)
    loss = F.cross_entropy(output, labels, ignore_index=IGNORE) + sar['loss']
    grads = torch.autograd.grad(loss, list(model.parameters()))

    ref_classifier, _ = find_layout(reference)
    ref_output, feats = classifier_input(reference, images, ref_classifier)
    expected = reference_reg(feats, labels,
                             tap_loop_classifier(ref_classifier))
    ref_loss = (F.cross_entropy(ref_output, labels, ignore_index=IGNORE)
                + expected['pull'] + expected['anchor_ce'])
    ref_params = list(reference.parameters()) + list(
        reference_reg.parameters())
    ref_grads = torch.autograd.grad(ref_loss, ref_params)

    assert len(grads) == len(ref_grads)
    names = [n for n, _ in model.named_parameters()]
    for n, g, r in zip(names, grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-9, atol=1e-12), n
    # The SAR gradients really reach the projector and every classifier tap.
    proj = dict(zip(names, grads))['sar.projector.fc1.weight']
    assert proj.abs().sum() > 0


def test_ignore_index_is_the_users():
    model = SARModel(tiny('FPN'), ignore_index=IGNORE,
                     pull_mode='after_init')
    model.train()
    prime(model.sar)
    reference = no_dropout(model.model)
    images, labels = batch()
    S = model.sar.semantic_anchors.clone()
    _, sar = model(images, labels)
    _, feats = classifier_input(reference, images, find_layout(reference)[0])
    # The pull by hand: valid pixels only, mean over channels and pixels.
    small = F.interpolate(labels[:, None].float(), size=feats.shape[2:],
                          mode='nearest')[:, 0].long()
    valid = small != IGNORE
    assert 0 < valid.sum() < valid.numel()
    target = S[small.clamp(max=C - 1)].permute(0, 3, 1, 2)
    by_hand = ((feats - target) ** 2).sum(1)[valid].sum() / (
        feats.shape[1] * valid.sum()) * model.sar.pull_weight
    assert torch.allclose(sar['loss_sar_pull'], by_hand, rtol=1e-5)
    # The ignored value is no class: another ignore index refuses it.
    other = SARModel(tiny('FPN'), ignore_index=255)
    with pytest.raises(ValueError, match='neither a class'):
        other.train()(images, labels)


def test_refusals_name_the_reason():
    with pytest.raises(ValueError, match='activation'):
        SARModel(tiny('FPN', activation='sigmoid'))
    with pytest.raises(ValueError, match='classes >= 2'):
        SARModel(tiny('FPN', classes=1))
    with pytest.raises(TypeError, match='smp segmentation model'):
        SARModel(nn.Conv2d(3, C, 1))
    with pytest.raises(ValueError, match='num_classes is the model'):
        SARModel(tiny('FPN'), num_classes=5)
    strided = tiny('Unet')
    strided.segmentation_head[0].stride = (2, 2)
    with pytest.raises(ValueError, match='stride 1'):
        SARModel(strided)


def test_inference_is_the_plain_models_bit_for_bit():
    plain = tiny('FPN')
    model = SARModel(copy.deepcopy(plain), ignore_index=IGNORE)
    images, labels = batch()
    plain.eval()
    model.eval()
    assert torch.equal(model(images), plain(images))
    # In training too (dropout masks drawn alike), with or without labels.
    plain.train()
    model.train()
    torch.manual_seed(5)
    expected = plain(images)
    torch.manual_seed(5)
    output, _ = model(images, labels)
    assert torch.equal(output, expected)


def test_step_is_what_a_training_step_returns():
    model = SARModel(tiny('FPN'), ignore_index=IGNORE).train()
    images, labels = batch()

    def criterion(output, labels):
        return F.cross_entropy(output, labels, ignore_index=IGNORE)

    torch.manual_seed(0)
    out = model.step(images, labels, criterion)
    assert torch.allclose(out['loss'], out['loss_seg'] + out['loss_sar_pull']
                          + out['loss_sar_anchor_ce'])
    assert out['loss'].requires_grad
    assert [k for k in out if 'loss' in k] == [
        'loss', 'loss_seg', 'loss_sar_pull', 'loss_sar_anchor_ce']


def test_state_dict_round_trips_and_plain_checkpoints_load():
    model = SARModel(tiny('Unet'), ignore_index=IGNORE)
    prime(model.sar, seed=4)
    model.sar.iters_since_init.fill_(7)
    state = model.state_dict()
    assert {k.split('.')[0] for k in state} == {'model', 'sar'}
    restored = SARModel(tiny('Unet'), ignore_index=IGNORE)
    restored.load_state_dict(state)
    for key, value in restored.state_dict().items():
        assert torch.equal(value, state[key]), key
    # The plain model's checkpoint loads into it, and it is one.
    plain_state = model.model.state_dict()
    assert not any('sar' in k for k in plain_state)
    plain = tiny('Unet')
    plain.load_state_dict(plain_state)
    restored.model.load_state_dict(plain.state_dict())


def test_bf16_autocast_keeps_the_anchor_math_in_float32():
    model = SARModel(tiny('FPN'), ignore_index=IGNORE).train()
    images, labels = batch()
    _, full = model(images, labels)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        output, sar = model(images, labels)
    assert output.dtype == torch.bfloat16  # the model does run in bf16
    assert sar['loss_sar_anchor_ce'].dtype == torch.float32
    # The anchor CE depends on the weights only: in bf16 it would be off
    # by ~1e-3; in float32 it is the float32 value.
    assert torch.allclose(sar['loss_sar_anchor_ce'],
                          full['loss_sar_anchor_ce'], rtol=1e-6)
    assert model.sar.semantic_anchors.dtype == torch.float32


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _two_rank_main(rank, world, port, out_file):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}',
                            rank=rank, world_size=world)
    try:
        plain = tiny('FPN')  # the same weights on both ranks
        torch.manual_seed(100 + rank)  # but each rank its own anchors A0
        model = SARModel(plain, ignore_index=IGNORE).train()
        if rank == 0:
            # A classifier that classifies rank 0's embedded anchors
            # confidently, so the gate opens; DDP gives it to rank 1.
            with torch.no_grad():  # on a copy: its norms' statistics move
                emb = copy.deepcopy(model.sar).embed_anchors()
                conv = find_layout(plain)[0]
                unit = F.normalize(emb, dim=1)
                conv.weight.copy_(50 * unit[:, :, None, None])
                conv.bias.zero_()
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-3)
        for step in range(3):
            images, labels = batch(seed=10 * step + rank)  # per-rank data
            output, sar = ddp(images, labels)
            loss = F.cross_entropy(output, labels,
                                   ignore_index=IGNORE) + sar['loss']
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        torch.save(model.sar.state_dict(), f'{out_file}.{rank}')
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_keep_sar_state_bit_identical(tmp_path):
    out_file = str(tmp_path / 'sar_state')
    mp.spawn(_two_rank_main, args=(2, free_port(), out_file), nprocs=2)
    states = [torch.load(f'{out_file}.{r}') for r in range(2)]
    assert states[0]['initialised']  # the gate opened: the EMA ran
    assert states[0]['iters_since_init'] >= 1
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_demo_loop_trains_and_predicts():
    from sar.smp.demo import train_fpn
    rng = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 32, 32, 3), generator=rng,
                           dtype=torch.uint8).numpy()
    labels = torch.randint(0, C, (4, 32, 32), generator=rng,
                           dtype=torch.uint8).numpy()
    for optimizer in ('sgd', 'adam'):
        pred, log = train_fpn((images, labels), images[:2], C, use_sar=True,
                              steps=3, batch_size=2, optimizer=optimizer,
                              log_every=2)
        assert pred.shape == (2, 32, 32) and pred.max() < C
        # One entry per two steps and one for the last: means of SAR's
        # entries over the steps since the one before.
        assert [e['iter'] for e in log] == [2, 3]
        assert {'loss', 'loss_sar_pull', 'sar.gate_open'} <= set(log[0])
    with pytest.raises(ValueError, match='sgd'):
        train_fpn((images, labels), images[:2], C, use_sar=False, steps=1,
                  optimizer='lamb')
