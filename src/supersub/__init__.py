"""supersub: hierarchical open-set image classification (superclass, subclass, "novel") by transfer learning."""

__version__ = "0.1.0"
