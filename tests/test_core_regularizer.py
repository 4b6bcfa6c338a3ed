"""SemanticAnchorRegularizer: state, gradient flow, DDP agreement (plain
torch)."""
import os
import re
import tempfile
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from sar.core import SemanticAnchorRegularizer

C, D = 3, 8


def make(**kwargs):
    torch.manual_seed(0)
    return SemanticAnchorRegularizer(C, D, **kwargs)


def batch(seed=0, B=2, h=4, w=4):
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(B, D, h, w, generator=g).requires_grad_()
    labels = torch.randint(0, C, (B, 1, h * 2, w * 2), generator=g)
    labels[:, :, :2] = 255
    return feats, labels


def run_two_ranks(rank_main):
    """Run ``rank_main(rank, world, init_file, out_file)`` in two gloo
    processes; returns what each saved to ``out_file.<rank>``."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, 'init')
        out_file = os.path.join(tmp, 'out')
        mp.spawn(rank_main, args=(2, init_file, out_file), nprocs=2)
        return [torch.load(f'{out_file}.{r}') for r in range(2)]


def optimizer_step(reg):
    """What an optimizer step does to what the regularizer sees: the
    projector's weights move, so E does. The regularizer advances its gate,
    EMA and counter once per such step (spec section 3)."""
    with torch.no_grad():
        reg.projector.norm3.bias.add_(0.01)


def open_gate(reg):
    """A classifier that classifies every embedded anchor right and
    confidently."""
    class Oracle(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(1.0))

        def forward(self, embedded):
            return self.scale * 50.0 * torch.eye(C) + 0 * embedded[:, :C]

    return Oracle()


def test_keys_are_stable_and_pull_is_zero_while_gate_closed():
    reg = make()
    feats, labels = batch()
    classifier = nn.Linear(D, C)
    with torch.no_grad():
        classifier.weight.zero_()  # every anchor at p = 1/C: gate closed
        classifier.bias.zero_()
    out = reg(feats, labels, classifier)
    assert set(out) == {'pull', 'anchor_ce', 'anchor_acc', 'gate_open',
                        'iters_since_init', 'anchor_max_cos', 'nonfinite'}
    assert out['gate_open'].item() == 0 and out['pull'].item() == 0
    # Not computed at all while the gate is closed: a constant zero; the
    # total loss still has its graph through the auxiliary CE.
    assert not out['pull'].requires_grad and out['anchor_ce'].requires_grad
    assert out['anchor_ce'].item() == pytest.approx(-torch.log(
        torch.tensor(1 / C)).item())
    assert out['iters_since_init'].item() == -1
    assert not reg.initialised


def test_gate_open_initialises_then_pulls():
    reg = make()
    feats, labels = batch()
    oracle = open_gate(reg)
    out = reg(feats, labels, oracle)
    assert out['gate_open'].item() == 1 and reg.initialised
    # First open gate copies E; in train mode the projector's norm layers
    # use the anchors' batch statistics, so E recomputes identically.
    assert torch.allclose(reg.semantic_anchors, reg.embed_anchors().detach())
    assert out['pull'].item() > 0 and out['iters_since_init'].item() == 0
    optimizer_step(reg)
    out = reg(feats, labels, oracle)
    assert out['iters_since_init'].item() == 1


@pytest.mark.parametrize('mode,expect_pull', [('gate', False),
                                              ('after_init', True)])
def test_pull_mode_after_gate_closes(mode, expect_pull):
    reg = make(pull_mode=mode)
    feats, labels = batch()
    reg(feats, labels, open_gate(reg))  # initialise S
    closed = nn.Linear(D, C)
    nn.init.zeros_(closed.weight)
    nn.init.zeros_(closed.bias)
    out = reg(feats, labels, closed)
    assert out['gate_open'].item() == 0
    assert (out['pull'].item() > 0) is expect_pull


def test_gradient_flow():
    """Pull reaches features only; the auxiliary CE reaches projector and
    classifier only; nothing reaches the pre-defined or semantic anchors."""
    reg = make(pull_mode='after_init')
    feats, labels = batch()
    reg(feats.detach(), labels, open_gate(reg))  # initialise S
    classifier = nn.Linear(D, C)
    out = reg(feats, labels, classifier)

    params = list(reg.projector.parameters()) + list(classifier.parameters())
    pull_grads = torch.autograd.grad(out['pull'], [feats] + params,
                                     retain_graph=True, allow_unused=True)
    assert pull_grads[0].abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for g in pull_grads[1:])

    ce_grads = torch.autograd.grad(out['anchor_ce'], [feats] + params,
                                   allow_unused=True)
    assert ce_grads[0] is None
    assert all(g is not None and g.abs().sum() > 0
               for g in ce_grads[1:-1])  # the last is the classifier bias
    assert not reg.init_anchors.requires_grad
    assert not reg.semantic_anchors.requires_grad


def test_state_survives_state_dict_round_trip():
    reg = make()
    feats, labels = batch()
    for _ in range(3):
        reg(feats, labels, open_gate(reg))
        optimizer_step(reg)
    state = reg.state_dict()
    for key in ('init_anchors', 'semantic_anchors', 'initialised',
                'iters_since_init'):
        assert key in state
    fresh = SemanticAnchorRegularizer(C, D)  # other anchors: different seed
    assert not torch.equal(fresh.init_anchors, reg.init_anchors)
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert fresh.initialised and fresh.iters_since_init.item() == 2


def test_bad_hyperparameters_name_the_key():
    with pytest.raises(ValueError, match='pull_mode'):
        make(pull_mode='always')
    with pytest.raises(ValueError, match='distance'):
        make(distance='l1')
    with pytest.raises(ValueError, match='ema_momentum'):
        make(ema_momentum=1.5)


def _rank_main(rank, world, init_file, out_file):
    dist.init_process_group('gloo', init_method=f'file://{init_file}',
                            rank=rank, world_size=world)
    torch.manual_seed(0)  # same model on every rank
    reg = SemanticAnchorRegularizer(C, D, ema_momentum=0.5)
    classifier = nn.Linear(D, C)
    # Rank-dependent data and a rank-dependent classifier nudge: the
    # embedded anchors and gate decisions would differ without the sync.
    for step in range(4):
        feats, labels = batch(seed=rank * 10 + step)
        logits_scale = 50.0 if (rank == 0 or step % 2) else 0.0

        def cls(e, s=logits_scale):
            return s * torch.eye(C) + classifier(e) * (1 + rank)

        reg(feats, labels, cls)
        optimizer_step(reg)  # the same on every rank, as DDP's
    gathered = [torch.zeros_like(reg.semantic_anchors) for _ in range(world)]
    dist.all_gather(gathered, reg.semantic_anchors)
    torch.save({'anchors': [g.clone() for g in gathered],
                'initialised': bool(reg.initialised),
                'iters': int(reg.iters_since_init)}, f'{out_file}.{rank}')
    dist.destroy_process_group()


def test_two_gloo_processes_hold_identical_anchors():
    results = run_two_ranks(_rank_main)
    for res in results:
        a0, a1 = res['anchors']
        assert torch.equal(a0, a1)  # bit-identical across ranks
        assert a0.abs().sum() > 0  # and actually initialised
    # Rank 1's gate is closed in steps 0 and 2, so the common gate opens in
    # steps 1 and 3 only: initialised at step 1, aged by steps 2 and 3.
    assert [r['iters'] for r in results] == [2, 2]


def _sync_rank_main(rank, world, init_file, out_file):
    """Each rank trains its own copy on its own data (no DDP), so the
    embedded anchors drift apart; one regularizer syncs, one does not."""
    import sar.core.dist as sar_dist
    dist.init_process_group('gloo', init_method=f'file://{init_file}',
                            rank=rank, world_size=world)
    runs = {}
    for synced in (True, False):
        torch.manual_seed(0)  # identical start on every rank
        reg = SemanticAnchorRegularizer(C, D, filter_conf=1.0,
                                        ema_momentum=0.7).double()
        linear = nn.Linear(D, C).double()
        opt = torch.optim.SGD([*reg.parameters(), *linear.parameters()],
                              lr=0.5)
        captured = []
        reg.projector.register_forward_hook(
            lambda mod, args, out: captured.append(out.detach().clone()))
        original = sar_dist.mean_across_ranks
        if not synced:
            sar_dist.mean_across_ranks = lambda tensor: tensor
        embedded, semantic = [], []
        try:
            for step in range(4):
                feats, labels = batch(seed=100 * rank + step)
                feats = feats.detach().double()
                out = reg(feats, labels, lambda e: linear(e) + 8.0 * torch.eye(
                    C, dtype=torch.float64))
                pixel_logits = linear(feats.permute(0, 2, 3, 1))
                small = labels[:, 0, ::2, ::2]
                pixel_ce = nn.functional.cross_entropy(
                    pixel_logits.permute(0, 3, 1, 2), small,
                    ignore_index=255)
                opt.zero_grad()
                (out['anchor_ce'] + pixel_ce).backward()
                opt.step()
                every = [torch.zeros(C, D, dtype=torch.float64)
                         for _ in range(world)]
                dist.all_gather(every, captured[-1])
                embedded.append(torch.stack(every))
                gathered = [torch.zeros(C, D, dtype=torch.float64)
                            for _ in range(world)]
                dist.all_gather(gathered, reg.semantic_anchors)
                semantic.append(torch.stack(gathered))
                assert bool(out['gate_open'])
        finally:
            sar_dist.mean_across_ranks = original
        runs[synced] = dict(embedded=embedded, semantic=semantic)
    torch.save(runs, f'{out_file}.{rank}')
    dist.destroy_process_group()


def test_ema_anchors_are_the_mean_of_every_ranks_embedding():
    runs = run_two_ranks(_sync_rank_main)[0]
    m = 0.7
    synced, unsynced = runs[True], runs[False]
    # Precondition: the ranks' embedded anchors differ after the first
    # optimizer step, so agreement cannot come for free.
    assert not torch.allclose(synced['embedded'][-1][0],
                              synced['embedded'][-1][1])
    expected = None
    for step, (e, s) in enumerate(zip(synced['embedded'],
                                      synced['semantic'])):
        mean = e.mean(dim=0)
        expected = mean if expected is None else m * expected + (1 - m) * mean
        assert torch.equal(s[0], s[1]), step  # bit-identical across ranks
        torch.testing.assert_close(s[0], expected, rtol=1e-12, atol=1e-12)
    # Without the sync every rank follows its own embeddings, and the ranks'
    # semantic anchors part.
    for rank in range(2):
        own = None
        for e, s in zip(unsynced['embedded'], unsynced['semantic']):
            own = e[rank] if own is None else m * own + (1 - m) * e[rank]
            torch.testing.assert_close(s[rank], own, rtol=1e-12, atol=1e-12)
    last = unsynced['semantic'][-1]
    assert (last[0] - last[1]).abs().max() > 1e-6


def test_eval_mode_leaves_the_sar_state_alone():
    """mmcv's val workflow calls forward_train in eval mode under no_grad:
    the gate may be reported, but S, the flag and the counter stay."""
    reg = make()
    feats, labels = batch()
    oracle = open_gate(reg)
    reg(feats, labels, oracle)  # initialised in training mode
    with torch.no_grad():
        reg.projector.norm3.bias.add_(1.0)  # E now differs from S
    before = {k: v.clone() for k, v in reg.state_dict().items()
              if 'projector' not in k}
    reg.eval()
    with torch.no_grad():
        out = reg(feats.detach(), labels, oracle)
    assert out['gate_open'].item() == 1  # reported ...
    for key, value in reg.state_dict().items():  # ... but nothing updated
        if key in before:
            assert torch.equal(value, before[key]), key
    reg.train()
    reg(feats, labels, oracle)
    assert not torch.equal(reg.semantic_anchors,
                           before['semantic_anchors'])  # training moves it
    assert reg.iters_since_init.item() == 1


def test_one_class_is_refused_with_the_fix():
    with pytest.raises(ValueError, match='num_classes >= 2.*num_classes=2'):
        SemanticAnchorRegularizer(1, D)


def _seed_rank_main(rank, world, init_file, out_file):
    dist.init_process_group('gloo', init_method=f'file://{init_file}',
                            rank=rank, world_size=world)
    torch.manual_seed(1000 + rank)  # --diff_seed: every rank its own draw
    reg = SemanticAnchorRegularizer(C, D)
    drawn = reg.init_anchors.clone()
    feats, labels = batch(seed=rank)
    reg(feats, labels, nn.Linear(D, C))
    torch.save({'drawn': drawn, 'after': reg.init_anchors.clone()},
               f'{out_file}.{rank}')
    dist.destroy_process_group()


def test_init_anchors_agree_across_ranks_whatever_the_seeds():
    r0, r1 = run_two_ranks(_seed_rank_main)
    assert not torch.equal(r0['drawn'], r1['drawn'])  # seeds did differ
    assert torch.equal(r0['after'], r0['drawn'])  # rank 0's draw wins
    assert torch.equal(r1['after'], r0['drawn'])


# --- gradient accumulation: one advance per optimizer step -------------------

def accumulate(steps, micro, **kwargs):
    """Train a regularizer and a linear classifier with SGD, ``micro``
    micro-batches of backward per optimizer step, as mmengine's
    ``accumulative_counts`` and mmcv's ``GradientCumulativeOptimizerHook``
    do. Returns one record per call (micro-batch)."""
    torch.manual_seed(0)
    # filter_conf=1: no anchor is filtered, so the anchor CE always has a
    # gradient; the classifier's boost keeps the gate open.
    reg = SemanticAnchorRegularizer(C, D, filter_conf=1.0,
                                    **kwargs).double()
    linear = nn.Linear(D, C).double()
    opt = torch.optim.SGD([*reg.parameters(), *linear.parameters()],
                          lr=0.5)
    embedded = []
    reg.projector.register_forward_hook(
        lambda mod, args, out: embedded.append(out.detach().clone()))
    records = []
    for step in range(steps):
        for k in range(micro):
            feats, labels = batch(seed=10 * step + k)
            feats = feats.detach().double().requires_grad_()
            out = reg(feats, labels, lambda e: linear(e) + 8.0 * torch.eye(
                C, dtype=torch.float64))
            before = reg.projector.fc1.weight.grad
            before = 0 if before is None else before.clone()
            ((out['pull'] + out['anchor_ce']) / micro).backward()
            records.append(dict(
                step=step, E=embedded[-1], S=reg.semantic_anchors.clone(),
                iters=int(reg.iters_since_init),
                gate=bool(out['gate_open']), pull=out['pull'].item(),
                # the pull is the only loss the features enter here
                feats_grad=float(feats.grad.abs().sum()),
                projector_grad=float(
                    (reg.projector.fc1.weight.grad - before).abs().sum()),
                feats=feats.detach(), labels=labels))
        opt.step()
        opt.zero_grad()
    return reg, records


def moved_fraction(before, after, target):
    """How far S moved toward E in one step: (1 - m) for an EMA step."""
    return float((after - before).norm() / (target - before).norm())


@pytest.mark.parametrize('micro', [1, 4])
def test_the_ema_advances_once_per_optimizer_step(micro):
    """Spec section 3: with 4 micro-batches per step, S moves by (1 - m)
    toward the step's E once per step, as without accumulation (not by
    1 - m^4), and the counter counts steps."""
    m = 0.999
    reg, rec = accumulate(steps=3, micro=micro, ema_momentum=m)
    assert all(r['gate'] for r in rec)  # precondition: the gate is open
    firsts = rec[::micro]
    # The premise: within a step every micro-batch sees the same E, and
    # the optimizer step moves it.
    for r in rec:
        assert torch.equal(r['E'], firsts[r['step']]['E'])
    assert not torch.equal(firsts[0]['E'], firsts[1]['E'])
    assert [r['iters'] for r in rec] == [r['step'] for r in rec]
    torch.testing.assert_close(firsts[0]['S'], firsts[0]['E'], rtol=0,
                               atol=0)  # the first open gate copies E
    for step in (1, 2):
        before = rec[step * micro - 1]['S']
        first = firsts[step]
        want = m * before + (1 - m) * first['E']
        torch.testing.assert_close(first['S'], want, rtol=1e-12, atol=1e-15)
        assert moved_fraction(before, first['S'], first['E']) == \
            pytest.approx(1 - m, rel=1e-6)
        # ... and the step's other micro-batches leave S where the first
        # put it, and pull toward that S.
        for r in rec[step * micro:(step + 1) * micro]:
            assert torch.equal(r['S'], first['S'])
    # Every micro-batch got its pull and anchor-CE gradients.
    assert all(r['pull'] > 0 and r['feats_grad'] > 0 for r in rec)
    assert all(r['projector_grad'] > 0 for r in rec)


def test_the_micro_batches_of_a_step_pull_toward_the_steps_anchors():
    from sar.core import downsample_labels, pull_loss
    reg, rec = accumulate(steps=2, micro=4)
    step_anchors = rec[4]['S']  # set by the second step's first call
    for r in rec[4:]:
        small = downsample_labels(r['labels'], r['feats'].shape[2:])
        want = 0.1 * pull_loss(r['feats'], small, step_anchors, 255)
        assert r['pull'] == pytest.approx(want.item(), rel=1e-12)


def test_a_step_whose_first_micro_batch_has_no_label_updates_on_the_next():
    reg = make()
    oracle = open_gate(reg)
    feats, labels = batch()
    reg(feats, labels, oracle)  # S set at the first step
    optimizer_step(reg)
    before = reg.semantic_anchors.clone()
    out = reg(feats, torch.full_like(labels, 255), oracle)
    assert out['gate_open'].item() == 0
    assert torch.equal(reg.semantic_anchors, before)
    assert reg.iters_since_init.item() == 1  # the step has started
    out = reg(feats, labels, oracle)  # same step, a labelled micro-batch
    assert out['gate_open'].item() == 1
    want = 0.999 * before + 0.001 * reg.embed_anchors().detach()
    torch.testing.assert_close(reg.semantic_anchors, want)
    after = reg.semantic_anchors.clone()
    reg(feats, labels, oracle)  # the update was made: not again
    assert torch.equal(reg.semantic_anchors, after)
    assert reg.iters_since_init.item() == 1


def test_a_step_that_changes_no_weight_is_no_step():
    # An AMP step skipped for overflow leaves every weight as it was: the
    # retried step is the same step.
    reg = make()
    oracle = open_gate(reg)
    feats, labels = batch()
    reg(feats, labels, oracle)
    optimizer_step(reg)
    reg(feats, labels, oracle)
    state = {k: v.clone() for k, v in reg.state_dict().items()}
    reg(feats, labels, oracle)
    assert reg.iters_since_init.item() == 1
    for key, value in reg.state_dict().items():
        if 'projector' not in key:  # BN running stats move every call
            assert torch.equal(value, state[key]), key


@pytest.mark.parametrize('how', ['lr 0', 'frozen head'])
def test_an_optimizer_step_that_moves_no_sar_weight_is_a_step(how):
    # lr 0 (a warm-up's start, a poly schedule's end) or a decode head
    # that does not train while the backbone does: E stays bitwise the
    # same, yet each optimizer step is a step of the schedule.
    m = 0.999
    reg = make(ema_momentum=m)
    oracle = open_gate(reg)
    backbone = nn.Conv2d(D, D, 1)
    params = list(backbone.parameters())
    if how == 'lr 0':
        params += [*reg.parameters(), *oracle.parameters()]
    opt = torch.optim.SGD(params, lr=0.0 if how == 'lr 0' else 0.1)
    feats, labels = batch()
    trace = []
    for step in range(4):
        out = reg(backbone(feats).relu(), labels, oracle)
        (out['pull'] + out['anchor_ce']).backward()
        trace.append((int(reg.iters_since_init),
                      reg.semantic_anchors.clone()))
        opt.step()
        opt.zero_grad()
    E = reg.embed_anchors().detach()
    assert [t[0] for t in trace] == [0, 1, 2, 3]
    torch.testing.assert_close(trace[0][1], E, rtol=0, atol=0)
    # ... and S keeps its EMA pace toward E (set apart from it first),
    # once per step.
    reg(backbone(feats).relu(), labels, oracle)  # step 4 starts
    with torch.no_grad():
        reg.semantic_anchors.mul_(0.5)
    before = reg.semantic_anchors.clone()
    reg(backbone(feats).relu(), labels, oracle)  # the same step: no move
    assert torch.equal(reg.semantic_anchors, before)
    opt.step()
    reg(backbone(feats).relu(), labels, oracle)
    torch.testing.assert_close(reg.semantic_anchors,
                               m * before + (1 - m) * E)
    assert int(reg.iters_since_init) == 5


@pytest.mark.parametrize('fused', [False, True], ids=['plain', 'fused'])
def test_an_amp_step_skipped_for_overflow_is_no_step(fused):
    # GradScaler does not call a plain optimizer on an overflow; a fused
    # one (Trainer's default adamw_torch_fused) it calls with found_inf set.
    reg = make()
    oracle = open_gate(reg)
    params = [*reg.parameters(), *oracle.parameters()]
    opt = torch.optim.SGD(params, lr=0.1, fused=fused)
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 8)
    feats, labels = batch()
    out = reg(feats, labels, oracle)
    scaler.scale(out['pull'] + out['anchor_ce']).backward()
    oracle.scale.grad.fill_(float('inf'))  # an overflow
    scaler.step(opt)  # skipped: the optimizer is not called
    scaler.update()
    opt.zero_grad()
    assert scaler.get_scale() == 2.0 ** 7  # precondition: it was skipped
    reg(feats, labels, oracle)
    assert reg.iters_since_init.item() == 0
    out = reg(feats, labels, oracle)
    scaler.scale(out['pull'] + out['anchor_ce']).backward()
    scaler.step(opt)  # a real step
    scaler.update()
    reg(feats, labels, oracle)
    assert reg.iters_since_init.item() == 1


# --- checkpoints: SAR's state is one unit ------------------------------------

def trained(num_classes=C, channels=D, **kwargs):
    """A regularizer whose state is far from fresh: S set, counter at 2."""
    torch.manual_seed(5)
    reg = SemanticAnchorRegularizer(num_classes, channels, **kwargs)
    g = torch.Generator().manual_seed(1)
    feats = torch.rand(2, channels, 4, 4, generator=g)
    labels = torch.randint(0, num_classes, (2, 8, 8), generator=g)

    def oracle(e):
        return 50.0 * torch.eye(num_classes) + 0 * e[:, :num_classes]

    for _ in range(3):
        reg(feats, labels, oracle)
        optimizer_step(reg)
    assert reg.initialised and reg.iters_since_init.item() == 2
    return reg


class Model(nn.Module):
    """A parent module, as a segmentor is: SAR's keys under ``sar.``."""

    def __init__(self, num_classes=C, channels=D, seed=0, **kwargs):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(2, 2, 1)  # fits whatever SAR's shapes
        self.sar = SemanticAnchorRegularizer(num_classes, channels, **kwargs)


@pytest.mark.parametrize('source', [dict(num_classes=C + 2),
                                    dict(channels=2 * D)],
                         ids=['other_classes', 'other_width'])
def test_a_checkpoint_that_does_not_fit_leaves_all_sar_state_fresh(source):
    src = Model(**source)
    src.sar = trained(**source, pull_mode='after_init')
    checkpoint = src.state_dict()
    model = Model(seed=1, pull_mode='after_init')
    fresh = {k: v.clone() for k, v in Model(seed=1).state_dict().items()}
    shape = tuple(checkpoint['sar.init_anchors'].shape)
    with pytest.warns(UserWarning, match=rf'\(sar\.\*\) does not fit this '
                      rf'model: init_anchors {re.escape(str(shape))} in the '
                      rf'checkpoint, \({C}, {D}\) here; semantic_anchors'):
        result = model.load_state_dict(checkpoint, strict=False)
    sar_keys = [k for k in fresh if k.startswith('sar.')]
    assert sorted(result.missing_keys) == sorted(sar_keys)
    assert not result.unexpected_keys
    for key in sar_keys:
        assert torch.equal(model.state_dict()[key], fresh[key]), key
    assert not model.sar.initialised
    assert model.sar.iters_since_init.item() == -1
    assert torch.equal(model.conv.weight, checkpoint['conv.weight'])
    # after_init pulls nothing before S is set (not toward zeros) ...
    feats, labels = batch()
    closed = nn.Linear(D, C)
    nn.init.zeros_(closed.weight)
    out = model.sar(feats, labels, closed)
    assert out['pull'].item() == 0
    # ... and the first open gate copies E.
    out = model.sar(feats, labels, open_gate(model.sar))
    embedded = model.sar.embed_anchors().detach()
    torch.testing.assert_close(model.sar.semantic_anchors, embedded)
    assert out['iters_since_init'].item() == 0
    from sar.core import downsample_labels, pull_loss
    want = 0.1 * pull_loss(feats, downsample_labels(labels, (4, 4)),
                           embedded, 255)
    assert out['pull'].item() == pytest.approx(want.item(), rel=1e-5)


def test_a_load_report_is_only_the_last_loads():
    from sar.core.regularizer import pop_load_reports
    model = Model(pull_mode='after_init')
    other = Model(num_classes=C + 2)
    with pytest.warns(UserWarning, match='does not fit this model'):
        model.load_state_dict(other.state_dict(), strict=False)
    # a load that fits, by a loader no glue wraps, then one that reports
    model.load_state_dict(Model(seed=3).state_dict())
    assert pop_load_reports(model) == []
    with pytest.warns(UserWarning, match='does not fit this model'):
        model.load_state_dict(other.state_dict(), strict=False)
    (report, ) = pop_load_reports(model)
    assert report.startswith("SAR: the checkpoint's SAR state (sar.*)")
    assert pop_load_reports(model) == []


def test_steps_are_counted_for_a_regularizer_that_arrives_pickled(
        tmp_path):
    # A process that only unpickles a model (torch.load of a whole model,
    # a spawn argument) runs no __init__: the step count must not depend on
    # one. Here a frozen head, so only the count can tell the steps.
    import subprocess
    import sys
    reg = make()
    path = tmp_path / 'reg.pt'
    torch.save(reg, path)
    script = f"""
import torch
reg = torch.load({str(path)!r}, weights_only=False)
eye = lambda e: 50.0 * torch.eye({C}) + 0 * e[:, :{C}]
backbone = torch.nn.Conv2d({D}, {D}, 1)
opt = torch.optim.SGD(backbone.parameters(), lr=0.1)
g = torch.Generator().manual_seed(0)
feats = torch.rand(2, {D}, 4, 4, generator=g)
labels = torch.randint(0, {C}, (2, 8, 8), generator=g)
counts = []
for _ in range(3):
    out = reg(backbone(feats).relu(), labels, eye)
    out['pull'].backward()
    opt.step()
    counts.append(int(reg.iters_since_init))
print(counts)
"""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', script], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split('\n')[-2] == '[0, 1, 2]'


def test_a_fitting_checkpoint_loads_whole_strictly_and_silently():
    checkpoint = trained().state_dict()
    reg = make()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        reg.load_state_dict(checkpoint, strict=True)
    for key, value in checkpoint.items():
        assert torch.equal(reg.state_dict()[key], value), key


def test_a_checkpoint_without_sar_state_changes_nothing_silently():
    model = Model(seed=1)
    plain = {k: v for k, v in Model(seed=2).state_dict().items()
             if not k.startswith('sar.')}
    before = {k: v.clone() for k, v in model.sar.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model.load_state_dict(plain, strict=False)
    assert torch.equal(model.conv.weight, plain['conv.weight'])
    for key, value in model.sar.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_checkpoint_missing_part_of_the_unit_loads_none_of_it():
    checkpoint = trained().state_dict()
    del checkpoint['semantic_anchors']
    reg = make()
    before = {k: v.clone() for k, v in reg.state_dict().items()}
    with pytest.warns(UserWarning, match='semantic_anchors missing'):
        reg.load_state_dict(checkpoint, strict=False)
    assert not reg.initialised
    for key, value in reg.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(RuntimeError, match='Missing key'):  # strict: said
        with pytest.warns(UserWarning):
            make().load_state_dict(checkpoint, strict=True)
