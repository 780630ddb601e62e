"""ptychopinn: physics-informed neural-network ptychography on PyTorch Lightning.

Heavy optional libraries (matplotlib, mlflow, tensorboard, ptychodus) are imported inside the
functions that need them, so ``import ptychopinn`` stays fast.
"""

__version__ = "0.1.0"

from ptychopinn.errors import PtychoPINNError  # noqa: E402

__all__ = ["__version__", "PtychoPINNError"]
