"""nnU-Net v2 trained-model folders as tilewise bundles: run as they are, or imported once.

:mod:`~models.bundle.nnunet.folder` reads and checks the folder, :mod:`~models.bundle.nnunet.checkpoint`
reads checkpoints without running arbitrary code, :mod:`~models.bundle.nnunet.convert` turns plans and
dataset.json into a :class:`~models.bundle.load.Bundle`. The networks are
:class:`models.nets.nnunet.NnUNetNet`. See docs/models.md.
"""

from models.bundle.nnunet.convert import OPTIONS, load_nnunet

__all__ = ["OPTIONS", "load_nnunet"]
