"""dist-ae: the notebook's MNIST autoencoder, trained by one loop on one device, several devices, several hosts or
Horovod ranks."""

__version__ = "0.1.0"
