"""Training: one loop for every method (``loop``), the methods and their losses, log-probs, the
reference pass, checkpoints and the distributed launcher.

Called, this package is the Python API's train (:func:`thumbs.train.api.train`): ``from thumbs
import train`` gives this package once it is loaded, so the name works either way.
"""

import sys
from types import ModuleType

from thumbs.train.api import train

__all__ = ["train"]


class _Package(ModuleType):
    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
