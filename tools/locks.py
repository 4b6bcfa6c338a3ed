"""The project's environments against their locks (requirements/lock/).

A lock is what `uv pip compile` wrote: ``name==version`` lines, each with
its hashes. An environment made from it holds exactly those distributions,
plus the entries that no lock can pin by version (the mmcv wheel built
here, the editable sar), named with ``--extra``.

    python tools/locks.py check LOCK [--extra NAME ...]
        run by the environment's own python: exit 1, listing every
        difference, unless it holds exactly LOCK plus the extras
    python tools/locks.py digest LOCK|-  [--extra NAME ...]
        sha256 of the sorted, normalised ``name==version`` lines of LOCK,
        or of `pip freeze --all` on standard input (the extras left out):
        an environment equals its lock when the two digests are equal
    python tools/locks.py pins LOCK
        the ``name==version`` lines, normalised and sorted
    python tools/locks.py subset LOCK --minus OTHER [--keep NAME ...]
                                   [--drop NAME ...]
        the requirements of LOCK (with their hashes) whose names OTHER
        does not pin, those named by --keep whatever OTHER pins, and none
        named by --drop: the wheels carried to the GPU machine are
        device.txt's minus device-twin.txt's

Standard library only: the set-up scripts run it before anything is
installed, and with any Python 3.
"""
import argparse
import hashlib
import re
import sys


def normalise(name):
    """A distribution name as PEP 503 compares it: ``PyYAML`` -> ``pyyaml``."""
    return re.sub(r'[-_.]+', '-', name).lower()


def parse_pins(lines):
    """``{name: version}`` of the ``name==version`` lines in ``lines``.

    Continuation lines (hashes), comments, markers and other requirement
    forms (``name @ url``, editables) are skipped; the caller leaves those
    out with ``--extra`` anyway.
    """
    pins = {}
    for line in lines:
        line = line.split('#', 1)[0].split(';', 1)[0].strip().rstrip('\\')
        match = re.fullmatch(r'([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(\S+)',
                             line.strip())
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def read_pins(path):
    if path == '-':
        return parse_pins(sys.stdin)
    with open(path) as f:
        return parse_pins(f)


def blocks(lines):
    """``(name, text)`` of each requirement of a lock: its ``name==version``
    line with the hash lines that continue it."""
    name, text = None, []
    for line in lines:
        pins = parse_pins([line])
        if pins:
            if name:
                yield name, ''.join(text)
            name, text = next(iter(pins)), [line]
        elif name and line.startswith((' ', '\t')) and '--hash' in line:
            text.append(line)
    if name:
        yield name, ''.join(text)


def installed():
    """``{name: version}`` of every distribution this Python can import."""
    from importlib import metadata
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata['Name']
        if name:
            found.setdefault(normalise(name), dist.version)
    return found


def differences(locked, present, extras=()):
    """Lines saying how ``present`` differs from ``locked``; [] if equal."""
    extras = {normalise(e) for e in extras}
    lines = []
    for name in sorted(set(locked) | set(present)):
        if name in extras:
            continue
        want, have = locked.get(name), present.get(name)
        if want is None:
            lines.append(f'  {name}=={have} is installed, not in the lock')
        elif have is None:
            lines.append(f'  {name}=={want} is locked, not installed')
        elif want != have:
            lines.append(f'  {name}: locked {want}, installed {have}')
    return lines


def digest(pins, extras=()):
    extras = {normalise(e) for e in extras}
    text = ''.join(f'{n}=={v}\n' for n, v in sorted(pins.items())
                   if n not in extras)
    return hashlib.sha256(text.encode()).hexdigest()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('command',
                        choices=('check', 'digest', 'pins', 'subset'))
    parser.add_argument('lock', help="a lock file, or '-' (digest only)")
    parser.add_argument('--extra', action='append', default=[],
                        help='a distribution not pinned by the lock')
    parser.add_argument('--minus', help='subset: the lock to leave out')
    parser.add_argument('--keep', action='append', default=[],
                        help='subset: a name to keep though OTHER pins it')
    parser.add_argument('--drop', action='append', default=[],
                        help='subset: a name to leave out')
    args = parser.parse_args(argv)
    if args.lock == '-' and args.command != 'digest':
        parser.error("'-' (standard input) is for digest only")
    pins = read_pins(args.lock)
    if not pins:
        sys.exit(f'{args.lock}: no name==version lines')
    if args.command == 'digest':
        print(digest(pins, args.extra))
    elif args.command == 'subset':
        if not args.minus:
            parser.error('subset needs --minus OTHER')
        keep = {normalise(n) for n in args.keep}
        out = set(read_pins(args.minus)) - keep
        out |= {normalise(n) for n in args.drop}
        missing = (keep | {normalise(n) for n in args.drop}) - set(pins)
        if missing:
            sys.exit(f'{args.lock} pins no {", ".join(sorted(missing))}')
        with open(args.lock) as f:
            print(''.join(text for name, text in blocks(f)
                          if name not in out), end='')
    elif args.command == 'pins':
        print(''.join(f'{n}=={v}\n' for n, v in sorted(pins.items())),
              end='')
    else:
        diff = differences(pins, installed(), args.extra)
        if diff:
            print(f'{sys.prefix} differs from {args.lock}:', *diff, sep='\n')
            return 1
        print(f'{sys.prefix} holds exactly {args.lock} '
              f'({len(pins)} pins) and {", ".join(args.extra) or "nothing else"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
