"""A convolutional VAE for images (28 x 28 MNIST-like, 28 x 20 Frey Face)."""

from __future__ import annotations

from ..nets import ConvDecoder, ConvEncoder
from .single import SingleLatentVAE

__all__ = ["ConvVAE"]


class ConvVAE(SingleLatentVAE):
    """The :class:`~pyro_vae.models.VAE` pair with convolutional nets (model and guide from
    :class:`~pyro_vae.models.SingleLatentVAE`).

    Encoder: 4x4 stride-2 convolutions with 32 and 64 channels (ReLU), a tanh hidden layer,
    a diagonal Normal head. Decoder: the mirror image with transposed convolutions, one output
    channel per likelihood parameter. Sites, plates and module names are those of ``VAE``.

    Args:
        data_dim: ``H * W``.
        image_shape: ``(H, W)``, both divisible by 4.
        latent_dim, hidden_dim, likelihood, beta: as for :class:`~pyro_vae.models.VAE`.
    """

    description = "convolutional encoder/decoder (2 stride-2 conv layers each way) for images"

    def __init__(self, data_dim: int, image_shape: tuple[int, int] = (28, 28), latent_dim: int = 20,
                 hidden_dim: int = 500, likelihood: str = "bernoulli", beta: float = 1.0):
        super().__init__(data_dim, latent_dim, likelihood, beta)
        if image_shape is None or image_shape[0] * image_shape[1] != data_dim:
            raise ValueError(f"image_shape {image_shape} does not match data_dim {data_dim}")
        self.image_shape = tuple(image_shape)
        self.encoder = ConvEncoder(self.image_shape, hidden_dim, latent_dim)
        self.decoder = ConvDecoder(latent_dim, hidden_dim, self.image_shape, self.likelihood.params_per_pixel)
