"""Side-by-side tables of mmseg evaluation results (the demo's report).

Reads the dict that mmseg's ``CustomDataset.evaluate`` returns (and
``tools/test.py`` saves as ``eval_*.json``): ``mIoU`` and ``IoU.<class>``
as fractions in [0, 1]. Nothing here computes a metric from predictions;
the head and tail means are plain means of mmseg's per-class IoU.
"""
from prettytable import PrettyTable


def class_iou(metric, classes):
    """Per-class IoU in percent, from an mmseg evaluation dict.

    Args:
        metric (dict): mmseg's evaluation dict.
        classes (Sequence[str]): class names, as the dataset's CLASSES.

    Returns:
        dict: class name -> IoU in percent (rounded to 0.01, as mmseg does).
    """
    return {c: round(100 * float(metric[f'IoU.{c}']), 2) for c in classes}


def _mean(values):
    return round(sum(values) / len(values), 2)


def summary_line(baseline_miou, sar_miou):
    """The demo's last line, one fixed format for scripts.

    Args:
        baseline_miou, sar_miou (float): mIoU in percent.

    Returns:
        str: e.g. ``mIoU baseline 41.20 SAR 47.85 (gain +6.65)``; the gain
        is the difference of the printed (rounded) values.
    """
    base, sar = round(baseline_miou, 2), round(sar_miou, 2)
    return f'mIoU baseline {base:.2f} SAR {sar:.2f} (gain {sar - base:+.2f})'


def comparison_table(metrics, classes, head, tail):
    """Per-class IoU, head and tail means and mIoU of two methods.

    Args:
        metrics (dict): method name -> mmseg evaluation dict; exactly two
            methods, the baseline first (the gain is second minus first).
        classes (Sequence[str]): every class name.
        head, tail (Sequence[str]): class names averaged as "head" and
            "tail" rows.

    Returns:
        tuple: (table as a string, dict method -> dict of the rows' values
        in percent: every class, 'head', 'tail', 'mIoU').
    """
    if len(metrics) != 2:
        raise ValueError(f'comparison_table compares two methods, got '
                         f'{list(metrics)}')
    rows = {}
    for method, metric in metrics.items():
        iou = class_iou(metric, classes)
        iou['head'] = _mean([iou[c] for c in head])
        iou['tail'] = _mean([iou[c] for c in tail])
        iou['mIoU'] = round(100 * float(metric['mIoU']), 2)
        rows[method] = iou
    (first, a), (second, b) = rows.items()
    table = PrettyTable(['class', f'{first} IoU', f'{second} IoU', 'gain'])
    table.align['class'] = 'l'
    labels = [(c, c) for c in classes] + [
        ('head', f'head mean ({", ".join(head)})'),
        ('tail', f'tail mean ({", ".join(tail)})'), ('mIoU', 'mIoU')]
    for key, label in labels:
        table.add_row([label, f'{a[key]:.2f}', f'{b[key]:.2f}',
                       f'{b[key] - a[key]:+.2f}'])
    return table.get_string(), rows


def read_train_log(path):
    """The training entries of an mmseg ``*.log.json`` (one dict a line).

    Returns:
        list: dicts with ``mode == 'train'``, in file order.
    """
    import json
    entries = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                entry = json.loads(line)
                if entry.get('mode') == 'train':
                    entries.append(entry)
    return entries


def merge_train_logs(logs):
    """One run's training entries from the logs of its sessions, oldest
    first (a resumed run starts a new log): a later session's entries
    replace the earlier ones from its first iteration on.

    Args:
        logs (list[list[dict]]): each session's entries, with ``iter``.
    """
    merged = []
    for entries in logs:
        if entries:
            merged = [e for e in merged if e['iter'] < entries[0]['iter']]
            merged += entries
    return merged


def gate_summary(entries, prefix='decode.'):
    """What SAR's diagnostics did during training, from the log entries.

    mmseg logs averages over each logging interval, so the iteration is the
    end of the first interval in which the gate opened at least once.

    Args:
        entries (list): from :func:`read_train_log`.
        prefix (str): the head's key prefix ('decode.' for a decode head).

    Returns:
        dict: ``first_open_iter`` (int or None), ``open_fraction`` (mean of
        the logged gate averages), ``last_anchor_acc``, ``last_pull`` (the
        last logged ``loss_sar_pull``); None where the keys are absent.
    """
    gate_key = f'{prefix}sar.gate_open'
    logged = [e for e in entries if gate_key in e]
    if not logged:
        return dict(first_open_iter=None, open_fraction=None,
                    last_anchor_acc=None, last_pull=None)
    opened = [e['iter'] for e in logged if e[gate_key] > 0]
    return dict(
        first_open_iter=opened[0] if opened else None,
        open_fraction=sum(e[gate_key] for e in logged) / len(logged),
        last_anchor_acc=logged[-1].get(f'{prefix}sar.anchor_acc'),
        last_pull=logged[-1].get(f'{prefix}loss_sar_pull'))
