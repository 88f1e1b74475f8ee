"""lungclam: unsupervised subtyping of lung disease in chest CT with cluster activation maps."""

__version__ = "0.1.0"
