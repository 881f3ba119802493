"""The studies: ``python -m studies <study> --out DIR``; each module's runs and comparisons
are data (``studies.runs.Run`` lists, pairs, verdict rules) read back from the trainer's runs."""

STUDIES = ("label_noise", "suppression", "easy_hard", "coherence", "median", "imagenet", "summary")
