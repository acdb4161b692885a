"""Contrast transfer function, with RELION's definition and sign.

For a spatial frequency ``k = (kx, ky)`` in 1/Å, ``s = |k|`` and ``alpha = atan2(ky, kx)``:

* ``deltaf = -(dfU + dfV) / 2 - (dfU - dfV) / 2 * cos(2 (alpha - defocus_angle))`` (Å; defocus
  positive for underfocus, so the defocus along ``defocus_angle`` is ``dfU`` and at right angles
  ``dfV``),
* ``chi = pi lambda deltaf s^2 + (pi / 2) Cs lambda^3 s^4 - phase_shift - asin(amplitude_contrast)``
  with ``Cs`` in Å (mm * 1e7) and ``lambda`` the relativistic electron wavelength,
* ``CTF = -sin(chi) * exp(-bfactor s^2 / 4)``.

The CTF is positive near zero frequency, equal to the amplitude contrast at DC (without phase
shift): particles extracted by RELION with contrast inversion (protein white) equal this CTF
applied to the projection of the density. cryoDRGN's ``compute_ctf`` is the same function with
the opposite overall sign (it returns ``sin(chi)``).

The astigmatic term is evaluated as ``deltaf * s^2 = -(dfU + dfV)/2 s^2 - (dfU - dfV)/2 *
((kx^2 - ky^2) cos(2 angle) + 2 kx ky sin(2 angle))``, the same value without ``atan2``, so it is
smooth at ``k = 0``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class CTFParameters(NamedTuple):
    """CTF parameters, each a tensor of the same shape ``(...,)`` (e.g. ``(B,)``, one per image).

    Attributes:
        defocus_u_A: defocus U in Å (positive = underfocus).
        defocus_v_A: defocus V in Å.
        defocus_angle_rad: astigmatism angle in radians, from the x axis towards y.
        voltage_kv: acceleration voltage in kV.
        spherical_aberration_mm: Cs in mm.
        amplitude_contrast: fraction in [0, 1).
        phase_shift_rad: phase-plate shift in radians.
        bfactor_A2: envelope B-factor in Å^2 (0 for none).
    """

    defocus_u_A: Tensor
    defocus_v_A: Tensor
    defocus_angle_rad: Tensor
    voltage_kv: Tensor
    spherical_aberration_mm: Tensor
    amplitude_contrast: Tensor
    phase_shift_rad: Tensor
    bfactor_A2: Tensor

    def to(self, device=None, dtype=None) -> "CTFParameters":
        """Copy every field to ``device`` and/or ``dtype``."""
        return CTFParameters(*(field.to(device=device, dtype=dtype) for field in self))


def electron_wavelength_A(voltage_kv: Tensor) -> Tensor:
    """Relativistic electron wavelength.

    Args:
        voltage_kv: ``(...,)`` acceleration voltage in kV.

    Returns:
        ``(...,)`` wavelength in Å (0.019687 Å at 300 kV).
    """
    volts = voltage_kv * 1e3
    return 12.2643247 / torch.sqrt(volts * (1.0 + 0.978466e-6 * volts))


def compute_ctf(freqs: Tensor, params: CTFParameters) -> Tensor:
    """Evaluate the CTF (RELION sign, see the module docstring) on a set of frequencies.

    Args:
        freqs: ``(*F, 2)`` frequencies (kx, ky) in 1/Å, e.g. ``(N, N, 2)`` from
            :func:`cryodomain.physics.fourier.frequency_grid` or ``(M, 2)``.
        params: fields of shape ``(*P,)``, e.g. ``(B,)``.

    Returns:
        ``(*P, *F)`` real CTF values, e.g. ``(B, N, N)``.
    """
    kx, ky = freqs[..., 0], freqs[..., 1]
    s2 = kx * kx + ky * ky
    astig_x = kx * kx - ky * ky
    astig_xy = 2.0 * kx * ky

    # Give every parameter one trailing singleton per frequency dimension so they broadcast.
    grid_dims = freqs.dim() - 1

    def expand(value: Tensor) -> Tensor:
        value = torch.as_tensor(value, device=freqs.device, dtype=freqs.dtype)
        return value.reshape(*value.shape, *([1] * grid_dims))

    df_u, df_v = expand(params.defocus_u_A), expand(params.defocus_v_A)
    angle = expand(params.defocus_angle_rad)
    wavelength = electron_wavelength_A(expand(params.voltage_kv))
    cs_A = expand(params.spherical_aberration_mm) * 1e7
    amplitude = expand(params.amplitude_contrast)
    phase_shift = expand(params.phase_shift_rad)
    bfactor = expand(params.bfactor_A2)

    # deltaf * s^2, written with kx, ky instead of atan2 (identical, smooth at DC).
    defocus_s2 = -0.5 * (df_u + df_v) * s2 - 0.5 * (df_u - df_v) * (astig_x * torch.cos(2.0 * angle) + astig_xy * torch.sin(2.0 * angle))
    chi = math.pi * wavelength * defocus_s2 + 0.5 * math.pi * cs_A * wavelength**3 * s2 * s2 - phase_shift - torch.asin(amplitude)
    return -torch.sin(chi) * torch.exp(-0.25 * bfactor * s2)
