"""The ways of distributing the one training loop. Each backend answers the loop's four questions: where variables
live (`scope`), how a batch reaches each replica (`distribute`, `run`), how gradients are combined
(`combine_gradients`), and who the chief is (`is_chief`).
"""

from dist_ae.backends.base import Backend, create_backend

__all__ = ["Backend", "create_backend"]
