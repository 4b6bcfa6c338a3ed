"""The config a SAR checkpoint carries, rewritten as its baseline twin's.

mmseg checkpoints keep their run's config as Python text in ``meta``
(mmengine: ``meta['cfg']``, which its inferencers build the model from when
given weights only; mmcv 1.x / mmseg 0.x: ``meta['config']``). A SAR run's
text names ``SARHead`` and imports ``sar``; an exported plain checkpoint
must not, or stock mmseg without this plugin fails on it ("Failed to import
custom modules"). The rewrite works on the text with :mod:`ast` (standard
library only, no config is executed) and edits only what SAR added: each
``SARHead`` of ``model.decode_head`` is replaced by its ``head``, ``'sar'``
leaves ``custom_imports`` (the whole line goes when nothing else is
imported), and the ``sar_loss`` helper of the paper configs goes. Every
other line is kept as written.
"""
import ast

SAR_TYPES = ('SARHead', 'SemanticAnchorLoss')


def _entries(node):
    """The ``key -> value node`` of ``dict(k=v, ...)`` or ``{'k': v}``;
    None for any other expression."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id == 'dict' and not node.args and \
            all(k.arg is not None for k in node.keywords):
        return {k.arg: k.value for k in node.keywords}
    if isinstance(node, ast.Dict) and all(
            isinstance(k, ast.Constant) and isinstance(k.value, str)
            for k in node.keys):
        return {k.value: v for k, v in zip(node.keys, node.values)}
    return None


def _type_of(node):
    kind = (_entries(node) or {}).get('type')
    return kind.value if isinstance(kind, ast.Constant) else None


def _is_sar_import(node):
    return isinstance(node, ast.Constant) and isinstance(node.value, str) \
        and (node.value == 'sar' or node.value.startswith('sar.'))


class _Text:
    """Source text with edits by ast positions, applied last to first."""

    def __init__(self, text):
        self.text = text
        self.starts = [0]
        for line in text.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))
        self.lines = text.splitlines(keepends=True)
        self.edits = []

    def offset(self, lineno, col):
        # ast columns count UTF-8 bytes.
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(
            line.encode()[:col].decode(errors='ignore'))

    def span(self, node):
        return (self.offset(node.lineno, node.col_offset),
                self.offset(node.end_lineno, node.end_col_offset))

    def segment(self, node):
        start, end = self.span(node)
        return self.text[start:end]

    def replace(self, node, new):
        self.edits.append((*self.span(node), new))

    def delete_statement(self, stmt):
        start, end = self.span(stmt)
        if self.text[end:end + 1] == '\n':
            end += 1
        self.edits.append((start, end, ''))

    def result(self):
        text = self.text
        for start, end, new in sorted(self.edits, reverse=True):
            text = text[:start] + new + text[end:]
        return text


def _assignments(tree):
    """``name -> Assign`` of the module's top-level ``name = ...``."""
    found = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and \
                isinstance(stmt.targets[0], ast.Name):
            found[stmt.targets[0].id] = stmt
    return found


def _unwrap_heads(text, model):
    """Replace each SARHead of ``model.decode_head`` by its ``head``;
    returns how many."""
    head = (_entries(model.value) or {}).get('decode_head')
    heads = head.elts if isinstance(head, (ast.List, ast.Tuple)) else [head]
    unwrapped = 0
    for node in heads:
        if node is not None and _type_of(node) == 'SARHead':
            inner = _entries(node).get('head')
            if inner is None:
                raise ValueError('its SARHead has no head')
            text.replace(node, text.segment(inner))
            unwrapped += 1
    return unwrapped


def _drop_sar_import(text, stmt):
    imports = (_entries(stmt.value) or {}).get('imports')
    if _is_sar_import(imports):
        text.delete_statement(stmt)
    elif isinstance(imports, (ast.List, ast.Tuple)) and any(
            _is_sar_import(n) for n in imports.elts):
        kept = [text.segment(n) for n in imports.elts
                if not _is_sar_import(n)]
        if kept:
            text.replace(imports, '[' + ', '.join(kept) + ']')
        else:
            text.delete_statement(stmt)


def sar_to_plain_config_text(config_text):
    """The baseline twin's config text from a SAR run's.

    Args:
        config_text (str): a config as mmengine's or mmcv's
            ``Config.pretty_text`` writes it (a checkpoint's ``meta``).

    Returns:
        str: the same text without SAR: its ``SARHead`` unwrapped, ``sar``
        out of ``custom_imports``, no ``sar_loss`` helper.

    Raises:
        ValueError: the text is not Python, has no ``model`` with a
            ``SARHead`` decode head, or still names SAR's types after the
            rewrite (a SAR module elsewhere than ``model.decode_head``).
    """
    try:
        tree = ast.parse(config_text)
    except SyntaxError as err:
        raise ValueError(f'the config text is not Python: {err}') from err
    text = _Text(config_text)
    assigned = _assignments(tree)
    if 'model' not in assigned or not _unwrap_heads(text, assigned['model']):
        raise ValueError('the config text has no model.decode_head of type '
                         'SARHead')
    if 'custom_imports' in assigned:
        _drop_sar_import(text, assigned['custom_imports'])
    if 'sar_loss' in assigned and \
            _type_of(assigned['sar_loss'].value) == 'SemanticAnchorLoss':
        text.delete_statement(assigned['sar_loss'])
    plain = text.result()
    left = sorted({node.value for node in ast.walk(ast.parse(plain))
                   if isinstance(node, ast.Constant)
                   and node.value in SAR_TYPES})
    if left:
        raise ValueError(f'the config still names {left} outside '
                         'model.decode_head after unwrapping its SARHead')
    return plain
