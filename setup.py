from setuptools import find_packages, setup

setup(
    name='sar',
    version='0.1.0',
    packages=find_packages(include=['sar', 'sar.*']),
)
