"""fastcifar: fast, profiled CIFAR-100 training of attention CNNs.

Sub-packages: ``data`` (archives, betons, loaders), ``augment`` (batched per-sample GPU
augmentation), ``models`` (the study's architectures, one registry). Entry points:
``python -m fastcifar.data``, ``python -m fastcifar.models``, ``python -m fastcifar.train``,
``python -m fastcifar.profile``, ``python -m fastcifar.analyze``.
"""

__version__ = "0.1.0"
