"""An experiment's config, checked and resolved once.

* :mod:`cgh_jax.spec.fields` -- :class:`ConfigError` and the checks field rules are written
  with;
* :mod:`cgh_jax.spec.data`, :mod:`cgh_jax.spec.model`, :mod:`cgh_jax.spec.optimizer` -- each
  config section's rules and its frozen spec;
* :mod:`cgh_jax.spec.experiment` -- the trainer's fields, the rules that span sections, and
  the resolved :class:`~cgh_jax.spec.experiment.Experiment` of one run.

Layers look down only: the specs import the standard library, :mod:`cgh_jax.choices` and
:mod:`cgh_jax.configlib` (JAX, optax and the optimizers only inside the methods that build
them), and nothing above them (the trainer, the studies) imports back.
"""

from cgh_jax.spec.fields import ConfigError

__all__ = ["ConfigError"]
