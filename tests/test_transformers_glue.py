"""sar.transformers: SAR over SegFormer, UperNet and DPT, against the core.

Tiny randomly initialised models from small configs, CPU only, nothing
downloaded. Skipped where transformers is not installed (the mmseg
environments). The reference side reads the decode feature its own way (a
forward hook on the module that produces it, before dropout) and
classifies the anchors with an explicit ``W a + b``.
"""
import copy
import socket

import pytest

transformers = pytest.importorskip('transformers')

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSemanticSegmentation, ConvNextConfig, DPTConfig,
    DPTForSemanticSegmentation, SegformerConfig,
    SegformerForSemanticSegmentation, SegformerModel, Trainer,
    TrainerCallback, TrainingArguments, UperNetConfig,
    UperNetForSemanticSegmentation)

from sar.core import SemanticAnchorRegularizer  # noqa: E402
from sar.transformers import (  # noqa: E402
    SARLogCallback, SARSegformerForSemanticSegmentation,
    SARUperNetForSemanticSegmentation, add_sar,
    pop_diagnostics, remove_sar)

C = 4
IGNORE = 200


@pytest.fixture(autouse=True)
def _keep_torchs_allow_list():
    """Trainer's resume loads inside a torch.serialization.safe_globals
    context whose exit removes numpy's entries from the process-wide
    allow-list that ``import sar`` filled; the files that run after this
    one on the same worker read checkpoints with it."""
    yield
    from sar.checkpoints.safe_load import allow_numpy_in_checkpoints
    allow_numpy_in_checkpoints()


def segformer_config(**kwargs):
    args = dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                hidden_sizes=[8, 16], patch_sizes=[7, 3], strides=[4, 2],
                num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                decoder_hidden_size=16, num_labels=C,
                classifier_dropout_prob=0.5,
                semantic_loss_ignore_index=IGNORE)
    args.update(kwargs)
    return SegformerConfig(**args)


def upernet_config(**kwargs):
    backbone = ConvNextConfig(hidden_sizes=[8, 16, 24, 32],
                              depths=[1, 1, 1, 1],
                              out_features=['stage1', 'stage2', 'stage3',
                                            'stage4'])
    args = dict(backbone_config=backbone, hidden_size=16, pool_scales=[1, 2],
                auxiliary_in_channels=24, auxiliary_channels=8,
                num_labels=C, loss_ignore_index=IGNORE)
    args.update(kwargs)
    return UperNetConfig(**args)


def dpt_config(**kwargs):
    # transformers 5.24's DPT loss needs its auxiliary head.
    args = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                intermediate_size=32, image_size=32, patch_size=8,
                backbone_out_indices=[0, 1, 2, 3],
                neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16,
                reassemble_factors=[4, 2, 1, 0.5], num_labels=C,
                use_auxiliary_head=True, semantic_classifier_dropout=0.5,
                semantic_loss_ignore_index=IGNORE)
    args.update(kwargs)
    return DPTConfig(**args)


# model class, config, the module whose OUTPUT is the feature before
# dropout (read by the tests' own hook), the classifier's path.
KINDS = {
    'segformer': (SegformerForSemanticSegmentation, segformer_config,
                  'decode_head.activation', 'decode_head.classifier'),
    'upernet': (UperNetForSemanticSegmentation, upernet_config,
                'decode_head.fpn_bottleneck', 'decode_head.classifier'),
    'dpt': (DPTForSemanticSegmentation, dpt_config, 'head.head.2',
            'head.head.4'),
}


def plain_model(kind, **config):
    model_class, make_config = KINDS[kind][:2]
    torch.manual_seed(0)
    return model_class(make_config(**config))


def batch(B=2, size=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, size, size, generator=g, dtype=dtype)
    labels = torch.randint(0, C, (B, size, size), generator=g)
    labels[:, :6] = IGNORE
    return images, labels


def prime(reg, seed=1):
    """Semantic anchors set, so the pull runs in every call."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        reg.semantic_anchors.copy_(torch.rand(reg.semantic_anchors.shape,
                                              generator=g))
        reg.initialised.fill_(True)
        reg.iters_since_init.fill_(0)


def reference_regularizer(model, **settings):
    """A regularizer built here with the model's ignore index, holding the
    same state as ``model.sar``."""
    reg = SemanticAnchorRegularizer(C, model.sar.channels,
                                    ignore_index=IGNORE, **settings)
    reg.load_state_dict(model.sar.state_dict())
    return reg.to(model.sar.semantic_anchors.dtype).train()


def run_reading_feature(model, kind, images, labels):
    """The plain model's output and its feature before dropout."""
    modules = dict(model.named_modules())
    seen = []
    handle = modules[KINDS[kind][2]].register_forward_hook(
        lambda m, i, o: seen.append(o))
    try:
        out = model(pixel_values=images, labels=labels)
    finally:
        handle.remove()
    return out, seen[-1], modules[KINDS[kind][3]]


def linear_classifier(conv):
    return lambda e: e.to(conv.weight.dtype) @ conv.weight[:, :, 0, 0].t() \
        + conv.bias


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_loss_is_the_models_plus_the_cores_on_the_same_features(kind):
    plain = plain_model(kind).train()
    model = add_sar(copy.deepcopy(plain), pull_mode='after_init')
    prime(model.sar)
    reference = reference_regularizer(model, pull_mode='after_init')
    images, labels = batch()

    torch.manual_seed(3)  # the same dropout and drop-path draws
    out = model(pixel_values=images, labels=labels)
    torch.manual_seed(3)
    plain_out, feats, conv = run_reading_feature(plain, kind, images, labels)
    expected = reference(feats, labels, linear_classifier(conv))

    assert torch.equal(out.logits, plain_out.logits)
    assert expected['pull'].item() > 0  # the pull really ran
    assert torch.allclose(out.loss, plain_out.loss + expected['pull']
                          + expected['anchor_ce'], rtol=1e-6)
    logged = pop_diagnostics(model)
    assert logged['loss_sar_pull'] == pytest.approx(expected['pull'].item(),
                                                    rel=1e-5)
    assert logged['loss_sar_anchor_ce'] == pytest.approx(
        expected['anchor_ce'].item(), rel=1e-5)
    assert logged['sar.gate_open'] == expected['gate_open'].item()
    assert pop_diagnostics(model) == {}  # read once
    for key, value in reference.state_dict().items():
        assert torch.allclose(model.sar.state_dict()[key].to(value.dtype),
                              value), key


def test_the_feature_is_the_one_before_dropout():
    # At dropout 0.9 a feature read after it is mostly zeros: another pull.
    plain = plain_model('segformer', classifier_dropout_prob=0.9).train()
    model = add_sar(copy.deepcopy(plain), pull_mode='after_init')
    prime(model.sar)
    reference = reference_regularizer(model, pull_mode='after_init')
    images, labels = batch()
    torch.manual_seed(3)
    model(pixel_values=images, labels=labels)
    torch.manual_seed(3)
    _, feats, conv = run_reading_feature(plain, 'segformer', images, labels)
    before = reference(feats, labels, linear_classifier(conv))['pull']
    dropped = torch.nn.functional.dropout(feats, 0.9)
    after = reference_regularizer(model, pull_mode='after_init')(
        dropped, labels, linear_classifier(conv))['pull']
    assert pop_diagnostics(model)['loss_sar_pull'] == pytest.approx(
        before.item(), rel=1e-5)
    assert abs(after.item() - before.item()) > 1e-3 * before.item()


@pytest.mark.parametrize('kind', ['segformer', 'upernet'])
def test_every_gradient_in_float64_equals_the_reference(kind):
    plain = plain_model(kind).double().train()
    model = add_sar(copy.deepcopy(plain), pull_mode='after_init').double()
    prime(model.sar)
    reference = reference_regularizer(model, pull_mode='after_init')
    images, labels = batch(dtype=torch.float64)

    torch.manual_seed(3)
    out = model(pixel_values=images, labels=labels)
    names = [n for n, _ in model.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(out.loss,
                                                list(model.parameters()))))
    torch.manual_seed(3)
    plain_out, feats, conv = run_reading_feature(plain, kind, images, labels)
    expected = reference(feats, labels, linear_classifier(conv))
    ref_loss = plain_out.loss + expected['pull'] + expected['anchor_ce']
    ref_named = list(plain.named_parameters()) + [
        (f'sar.{n}', p) for n, p in reference.named_parameters()]
    ref_grads = torch.autograd.grad(ref_loss, [p for _, p in ref_named])
    assert sorted(grads) == sorted(n for n, _ in ref_named)
    for (name, _), ref in zip(ref_named, ref_grads):
        assert torch.allclose(grads[name], ref, rtol=1e-9, atol=1e-12), name
    assert grads['sar.projector.fc1.weight'].abs().sum() > 0


@pytest.mark.parametrize('kind,key', [('segformer',
                                       'semantic_loss_ignore_index'),
                                      ('upernet', 'loss_ignore_index'),
                                      ('dpt', 'semantic_loss_ignore_index')])
def test_ignore_index_is_the_models(kind, key):
    model = add_sar(plain_model(kind)).train()
    assert model.sar.ignore_index == IGNORE == getattr(model.config, key)
    images, labels = batch()
    model(pixel_values=images, labels=labels)  # 200 is no class: ignored
    # A model ignoring another value: SAR refuses 200, as a class it is not.
    other = add_sar(plain_model(kind, **{key: 255})).train()
    with pytest.raises(ValueError, match='neither a class'):
        other(pixel_values=images, labels=labels)


def test_refusals_name_the_reason():
    with pytest.raises(TypeError, match='once'):
        add_sar(add_sar(plain_model('segformer')))
    with pytest.raises(ValueError, match='num_labels >= 2'):
        add_sar(plain_model('segformer', num_labels=1))
    with pytest.raises(ValueError, match='model\'s'):
        add_sar(plain_model('segformer'), ignore_index=3)
    plain = plain_model('segformer')
    with pytest.raises(ValueError):
        add_sar(plain, pull_weight=-1.0)
    assert type(plain) is SegformerForSemanticSegmentation  # left plain
    assert not hasattr(plain.config, 'sar')
    torch.manual_seed(0)
    with pytest.raises(TypeError, match='does not know'):
        add_sar(SegformerModel(segformer_config()))


def test_query_classifier_models_are_refused():
    from transformers import (MaskFormerConfig,
                              MaskFormerForInstanceSegmentation)
    try:
        config = MaskFormerConfig(
            backbone_config=transformers.SwinConfig(
                embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                image_size=32, out_features=['stage1', 'stage2', 'stage3',
                                             'stage4']),
            decoder_config=transformers.DetrConfig(
                d_model=16, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=1, decoder_attention_heads=1,
                encoder_ffn_dim=16, decoder_ffn_dim=16),
            fpn_feature_size=32, mask_feature_size=32, num_labels=C)
        model = MaskFormerForInstanceSegmentation(config)
    except Exception as error:  # a config this version does not take
        pytest.skip(f'tiny MaskFormer not buildable here: {error}')
    with pytest.raises(TypeError, match='mask queries'):
        add_sar(model)


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_inference_is_the_plain_models_bit_for_bit(kind):
    plain = plain_model(kind).eval()
    model = add_sar(copy.deepcopy(plain)).eval()
    images, labels = batch()
    with torch.no_grad():
        assert torch.equal(model(pixel_values=images).logits,
                           plain(pixel_values=images).logits)
        out = model(pixel_values=images, labels=labels)
        plain_out = plain(pixel_values=images, labels=labels)
    assert torch.equal(out.logits, plain_out.logits)
    assert torch.equal(out.loss, plain_out.loss)  # no SAR at evaluation
    assert not model.sar.initialised and pop_diagnostics(model) == {}


def test_save_pretrained_round_trip_keeps_state_and_settings(tmp_path):
    model = add_sar(plain_model('segformer'), pull_weight=0.3)
    prime(model.sar, seed=4)
    model.sar.iters_since_init.fill_(7)
    model.save_pretrained(tmp_path)
    loaded, info = SARSegformerForSemanticSegmentation.from_pretrained(
        tmp_path, output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys']
    assert loaded.sar.pull_weight == 0.3 and loaded.config.sar == dict(
        pull_weight=0.3)
    state = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_fine_tuning_to_other_classes_makes_sar_state_fresh_as_a_unit(
        tmp_path):
    model = add_sar(plain_model('segformer'))
    prime(model.sar)
    model.sar.iters_since_init.fill_(7)
    model.save_pretrained(tmp_path)
    tuned = SARSegformerForSemanticSegmentation.from_pretrained(
        tmp_path, num_labels=C + 1, ignore_mismatched_sizes=True)
    sar = tuned.sar
    assert sar.init_anchors.shape == (C + 1, 16)
    assert not sar.initialised and sar.iters_since_init.item() == -1
    assert sar.semantic_anchors.abs().sum() == 0
    # The projector fits in shape but belongs to the old anchors: fresh too.
    assert not torch.equal(sar.projector.fc1.weight,
                           model.sar.projector.fc1.weight)
    assert all(torch.isfinite(t).all() for t in sar.state_dict().values())


def test_loading_in_bf16_keeps_sar_in_float32_and_its_flags(tmp_path):
    model = add_sar(plain_model('segformer'))
    prime(model.sar, seed=4)
    model.sar.iters_since_init.fill_(7)
    model.save_pretrained(tmp_path)
    loaded = SARSegformerForSemanticSegmentation.from_pretrained(
        tmp_path, dtype=torch.bfloat16)
    assert loaded.decode_head.classifier.weight.dtype == torch.bfloat16
    for key, value in model.sar.state_dict().items():
        got = loaded.sar.state_dict()[key]
        assert got.dtype == value.dtype and torch.equal(got, value), key
    images, labels = batch()
    out = loaded.train()(pixel_values=images.bfloat16(), labels=labels)
    assert torch.isfinite(out.loss)


def test_plain_checkpoints_load_fresh_sar_and_remove_sar_is_plain(tmp_path):
    plain = plain_model('segformer')
    plain.save_pretrained(tmp_path / 'plain')
    torch.manual_seed(11)
    model, info = SARSegformerForSemanticSegmentation.from_pretrained(
        tmp_path / 'plain', output_loading_info=True)
    assert not info['unexpected_keys']  # old key names converted too
    assert all(k.startswith('sar.') for k in info['missing_keys'])
    plain_state = plain.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith('sar.'):
            assert torch.equal(value, plain_state[key]), key
    # SAR's state fresh as one unit, not transformers' empty tensors.
    sar = model.sar
    assert not sar.initialised and sar.iters_since_init.item() == -1
    assert torch.equal(sar.semantic_anchors,
                       torch.zeros_like(sar.semantic_anchors))
    assert torch.isfinite(sar.init_anchors).all()
    assert sar.init_anchors.std() > 0.5  # N(0, 1) anchors
    assert torch.equal(sar.projector.norm1.running_var,
                       torch.ones_like(sar.projector.norm1.running_var))
    assert all(torch.isfinite(p).all() for p in sar.parameters())
    # A SAR model made plain saves a checkpoint with nothing of SAR.
    remove_sar(model)
    assert type(model) is SegformerForSemanticSegmentation
    model.save_pretrained(tmp_path / 'again')
    for loader in (SegformerForSemanticSegmentation,
                   AutoModelForSemanticSegmentation):
        again, info = loader.from_pretrained(tmp_path / 'again',
                                             output_loading_info=True)
        assert not info['missing_keys'] and not info['unexpected_keys']
        assert not any('sar' in k for k in again.state_dict())
        assert not hasattr(again.config, 'sar')


class _Images(torch.utils.data.Dataset):
    def __init__(self, n=4):
        self.images, self.labels = batch(B=n, seed=5)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return dict(pixel_values=self.images[i], labels=self.labels[i])


class _Recorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def _trainer(model, out_dir, callbacks=()):
    args = TrainingArguments(
        output_dir=str(out_dir), max_steps=2, per_device_train_batch_size=2,
        learning_rate=1e-2, logging_steps=1, save_steps=1, report_to=[],
        use_cpu=True, dataloader_num_workers=0, seed=0,
        disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=_Images(),
                   callbacks=list(callbacks))


def test_trainer_trains_logs_checkpoints_and_resumes_sar(tmp_path):
    # UperNet: transformers 5.24's Trainer resumes with a plain
    # load_state_dict, which misses SegFormer's renamed checkpoint keys
    # (its encoder, with or without SAR); UperNet's keep their names.
    recorder = _Recorder()
    model = add_sar(plain_model('upernet'), update_conf=0.3)
    trainer = _trainer(model, tmp_path, [SARLogCallback(), recorder])
    trainer.train()
    train_logs = [log for log in recorder.logs if 'loss' in log]
    assert len(train_logs) == 2
    assert all('loss_sar_anchor_ce' in log and 'sar.gate_open' in log
               for log in train_logs)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    # The last checkpoint holds SAR's state and settings.
    saved = SARUperNetForSemanticSegmentation.from_pretrained(
        tmp_path / 'checkpoint-2')
    assert saved.config.sar == dict(update_conf=0.3)
    for key, value in saved.state_dict().items():
        if key.startswith('sar.'):
            assert torch.equal(value, final[key]), key
    # Resuming from the first checkpoint ends where the run ended.
    resumed = add_sar(plain_model('upernet'), update_conf=0.3)
    _trainer(resumed, tmp_path / 'resumed').train(
        resume_from_checkpoint=str(tmp_path / 'checkpoint-1'))
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, final[key]), key


def test_bf16_autocast_keeps_the_anchor_math_in_float32():
    model = add_sar(plain_model('segformer')).train()
    images, labels = batch()
    model(pixel_values=images, labels=labels)
    full = pop_diagnostics(model)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(pixel_values=images, labels=labels)
    assert out.logits.dtype == torch.bfloat16  # the model runs in bf16
    assert torch.isfinite(out.loss)
    half = pop_diagnostics(model)
    # Depends on the weights only: in bf16 it would be off by ~1e-3.
    assert half['loss_sar_anchor_ce'] == pytest.approx(
        full['loss_sar_anchor_ce'], rel=1e-6)
    assert model.sar.semantic_anchors.dtype == torch.float32


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _two_rank_main(rank, world, port, out_dir):
    """One rank of a Trainer run under DDP, as torchrun would start it."""
    import os
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    plain = plain_model('segformer')  # the same weights on both ranks
    torch.manual_seed(100 + rank)  # but each rank its own anchors A0
    model = add_sar(plain)
    if rank == 0:
        # A classifier that classifies rank 0's embedded anchors
        # confidently, so the gate opens; DDP gives it to rank 1.
        with torch.no_grad():  # on a copy: its norms' statistics move
            emb = copy.deepcopy(model.sar).embed_anchors()
            conv = model.decode_head.classifier
            conv.weight.copy_(50 * torch.nn.functional.normalize(
                emb, dim=1)[:, :, None, None])
            conv.bias.zero_()
    # Buffers not broadcast by DDP (mmseg's choice too): SAR must agree by
    # itself. Each rank trains on its own half of the data.
    args = TrainingArguments(
        output_dir=f'{out_dir}/rank{rank}', max_steps=3,
        per_device_train_batch_size=2, learning_rate=1e-3, save_strategy='no',
        report_to=[], use_cpu=True, ddp_backend='gloo',
        ddp_broadcast_buffers=False, dataloader_num_workers=0,
        disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=_Images(8))
    assert trainer.args.world_size == world
    trainer.train()
    torch.save(model.sar.state_dict(), f'{out_dir}/sar_state.{rank}')


def test_two_gloo_ranks_under_trainer_keep_sar_state_bit_identical(
        tmp_path):
    mp.spawn(_two_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f'sar_state.{r}') for r in range(2)]
    assert states[0]['initialised']  # the gate opened: the EMA ran
    assert states[0]['iters_since_init'] >= 1
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_demo_trainer_trains_and_predicts(tmp_path):
    from sar.transformers.demo import train_segformer
    rng = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 32, 32, 3), generator=rng,
                           dtype=torch.uint8).numpy()
    labels = torch.randint(0, C, (4, 32, 32), generator=rng,
                           dtype=torch.uint8).numpy()
    pred, log = train_segformer((images, labels), images[:2], C,
                                use_sar=True, steps=2, out_dir=str(tmp_path),
                                batch_size=2, log_every=1)
    assert pred.shape == (2, 32, 32) and pred.max() < C
    # Trainer's logs as the callbacks see them: with SAR's entries.
    assert [e['iter'] for e in log] == [1, 2]
    assert {'loss', 'loss_sar_pull', 'sar.gate_open'} <= set(log[0])
