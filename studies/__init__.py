"""The studies: ``python -m studies <study> --out DIR``; each module's runs and comparisons
are data (:class:`cgh_jax.study_cli.RunRecipe` lists, pairs, verdict rules) read back from
the trainer's runs by :mod:`cgh_jax.analysis`; what several share is :mod:`studies.common`.
Importing the package imports nothing else, so that ``python -m studies`` sets up logging
before JAX loads."""

STUDIES = ("label_noise", "suppression", "easy_hard", "coherence", "median", "imagenet", "summary")
