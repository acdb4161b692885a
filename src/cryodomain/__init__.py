"""cryodomain: cryoSPHERE heterogeneous reconstruction of protein motions from cryo-EM images.

Ducrocq, Grunewald, Westenhoff, Lindsten. "cryoSPHERE: Single-particle heterogeneous
reconstruction from cryo EM." ICLR 2025.
"""

__version__ = "0.1.0"
