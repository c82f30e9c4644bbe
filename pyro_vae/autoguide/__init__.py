"""An amortized guide built from the model alone: :class:`AutoAmortizedNormal`.

=========  ========================================================================================
module     contents
=========  ========================================================================================
``sites``  reading the model: its latent sites, shapes, supports and scales, or why one cannot be
           served (:func:`~pyro_vae.autoguide.sites.latent_sites`)
``guide``  :class:`AutoAmortizedNormal`, the encoder with one head per site (the math is there)
=========  ========================================================================================
"""

from .guide import AutoAmortizedNormal
from .sites import LatentSite, latent_sites, trace_model

__all__ = ["AutoAmortizedNormal", "LatentSite", "latent_sites", "trace_model"]
