"""SAR: Semantic Anchor Regularization as an mmsegmentation plugin, for
mmseg 0.30 (mmcv-full 1.x) and mmseg 1.2-1.4 (mmengine, mmcv 2.x).

mmcv is deliberately not a requirement: it must be built against the
torch at hand (tools/setup_env.sh does that), and listing it would make pip
try to build or replace it in a working environment. ``import sar`` checks
its version and says how to install a supported one.
"""
from setuptools import find_packages, setup


def version():
    scope = {}
    with open('sar/version.py') as f:
        exec(f.read(), scope)
    return scope['__version__']


with open('README.md', encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='sar',
    version=version(),
    description='Semantic Anchor Regularization (AAAI 2024) for '
    'mmsegmentation 0.30 and 1.x',
    long_description=long_description,
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['sar', 'sar.*']),
    python_requires='>=3.8',
    # mmseg is not required: the core, sar.transformers and sar.smp run
    # without it, and OneDL's fork installs the module mmseg under another
    # distribution name (requiring 'mmsegmentation' there would install a
    # second mmseg over it). `import sar` checks the installed generation's
    # versions (sar/version.py).
    install_requires=['numpy', 'prettytable'],
    extras_require={
        # Either generation: 0.30 (the last 0.x) or 1.2-1.4; 1.0 and 1.1
        # are not supported.
        'mmseg': ['mmsegmentation>=0.30.0,!=1.0.*,!=1.1.*,<1.5'],
        'onedl': ['onedl-mmsegmentation>=1.4,<1.5'],
        'tests': ['pytest', 'pytest-xdist>=3.8'],
        # sar.transformers and sar.smp (requirements/frameworks.txt)
        'transformers': ['transformers>=5.24,<6', 'accelerate>=1.16'],
        'smp': ['segmentation-models-pytorch>=0.6,<0.7', 'timm>=1.0.31'],
    },
    classifiers=[
        'License :: OSI Approved :: Apache Software License',
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
